"""Block analysis (no mutation): residual-add patterns (:mod:`.patterns`), the :class:`Block` record and
:func:`find_blocks` (:mod:`.block`), and the match a rewrite consumes (:mod:`.match`)."""
from ..tracing.graph import common_path, is_add
from .block import Block, find_blocks, propagate_shapes
from .match import BlockMatch, LocatedAdd, LocatedBranch, locate
from .patterns import KINDS, branch_operand

__all__ = ["Block", "find_blocks", "propagate_shapes", "KINDS", "branch_operand", "BlockMatch", "LocatedAdd",
           "LocatedBranch", "locate", "is_add", "common_path"]
