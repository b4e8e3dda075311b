"""fxswap: model surgery for PyTorch CNNs and vision transformers with torch.fx.

trace → blocks → surgery → metrics / search / distillation → io. The package
tree shows that flow; ``docs/design.md`` has one line per module.

>>> import fxswap
>>> student = fxswap.cheapen(fxswap.models.wrn(40, 2), "G(N/4)")
>>> fxswap.count(student, (3, 32, 32)).params_bn     # Moonshine Table 3, G(N/4)
373626
"""
from . import data, deprecated, losses, models
from .blocks import Block, find_blocks
from .distillation import (Distiller, HintStage, LITDistiller, distill, fit, fitnets_two_stage, train,
                           warm_start)
from .errors import BudgetError, DistillError, FxswapError, NoBlocksError, SpecError, TraceError
from .io import ExportResult, export, load_student, read_record, save_student
from .metrics import BlockLatency, LatencyReport, Timing, compare, count, latency
from .probes import probe
from .search import (PAPER_CANDIDATES, REFERENCE_CANDIDATES, BlockSwapResult, blockswap, candidate_specs,
                     fisher_potential, sensitivity)
from .sections import split_sections
from .surgery import BlockSpec, applied_plan, cheapen, cheapen_part, parse_spec, register_substitute, resolve_plan
from .tracing import trace
from .version import __version__

deprecated.install()

__all__ = [
    "trace", "find_blocks", "Block",
    "cheapen", "cheapen_part", "applied_plan", "resolve_plan", "parse_spec", "BlockSpec", "register_substitute",
    "probe", "split_sections",
    "count", "compare", "latency", "LatencyReport", "Timing", "BlockLatency",
    "blockswap", "BlockSwapResult", "PAPER_CANDIDATES", "REFERENCE_CANDIDATES", "candidate_specs",
    "fisher_potential", "sensitivity",
    "Distiller", "LITDistiller", "HintStage", "distill", "fit", "train", "fitnets_two_stage", "warm_start",
    "save_student", "load_student", "read_record", "export", "ExportResult",
    "FxswapError", "SpecError", "TraceError", "NoBlocksError", "BudgetError", "DistillError",
    "data", "losses", "models", "__version__",
]


def __getattr__(name: str):
    return deprecated.old_name(name)
