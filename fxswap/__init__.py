"""fxswap: model surgery for PyTorch CNNs with torch.fx."""
from .blocks import Block, find_blocks
from .errors import BudgetError, DistillError, FxswapError, NoBlocksError, SpecError, TraceError
from .spec import BlockSpec, parse_spec
from .trace import trace

__version__ = "0.1.0"
from . import models
from .rewrite import cheapen, resolve_plan
from .substitutes import register_substitute
from .accounting import compare, count
from .probes import probe
