"""fxswap: model surgery for PyTorch CNNs with torch.fx.

>>> import fxswap
>>> student = fxswap.cheapen(fxswap.models.wrn(40, 2), "G(N/4)")
>>> fxswap.count(student, (3, 32, 32)).params_bn     # Moonshine Table 3, G(N/4)
373626
"""
from . import data, losses, models
from .accounting import compare, count
from .blocks import Block, find_blocks
from .blockswap import PAPER_CANDIDATES, REFERENCE_CANDIDATES, BlockSwapResult, blockswap, candidate_specs
from .distillation import Distiller, HintStage, LITDistiller
from .distillation import distill, fit, fitnets_two_stage, train
from .errors import BudgetError, DistillError, FxswapError, NoBlocksError, SpecError, TraceError
from .fisher import fisher_potential, sensitivity
from .probes import probe
from .rewrite import cheapen, resolve_plan
from .sections import split_sections
from .spec import BlockSpec, parse_spec
from .substitutes import register_substitute
from .trace import trace

# --- shipping: latency, self-describing students, export, partial surgery ---
from .exporting import ExportResult, export
from .partial import cheapen_part
from .student_io import load_student, read_record, save_student
from .timing import BlockLatency, LatencyReport, Timing, latency
# --- end shipping ---

# --- extras: logging callbacks on fit, figures (fxswap.plotting needs the [plot] extra) ---
from . import plotting
from .distillation.callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger
# --- end extras ---

__version__ = "0.1.0"

__all__ = [
    "data", "losses", "models", "compare", "count", "Block", "find_blocks", "BlockSwapResult",
    "blockswap", "Distiller", "LITDistiller", "distill", "fit", "train", "BudgetError", "DistillError",
    "FxswapError", "NoBlocksError", "SpecError", "TraceError", "fisher_potential", "sensitivity", "probe",
    "cheapen", "resolve_plan", "split_sections", "BlockSpec", "parse_spec", "register_substitute", "trace",
]
# shipping
__all__ += ["latency", "LatencyReport", "Timing", "BlockLatency", "cheapen_part", "save_student", "load_student",
            "read_record", "export", "ExportResult"]
# the papers' procedures: BlockSwap's candidate sets, FitNets' two stages
__all__ += ["PAPER_CANDIDATES", "REFERENCE_CANDIDATES", "candidate_specs", "HintStage", "fitnets_two_stage"]
# extras
__all__ += ["plotting", "Callback", "CSVLogger", "TensorBoardLogger", "WandbLogger"]
