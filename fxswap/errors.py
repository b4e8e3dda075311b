"""Errors fxswap raises. Each says what was wrong and what is accepted."""


class FxswapError(Exception):
    """Base class of every error fxswap raises on bad input."""


class SpecError(FxswapError, ValueError):
    """A block spec string (or plan) that fxswap cannot parse or apply."""


class TraceError(FxswapError, RuntimeError):
    """torch.fx could not trace the model; the message names the module and the fix."""


class NoBlocksError(FxswapError, ValueError):
    """The model has no residual block with a convolution on its branch."""


class BudgetError(FxswapError, ValueError):
    """No candidate configuration can meet the requested budget."""


class DistillError(FxswapError, RuntimeError):
    """Distillation could not go on (e.g. a loss term became NaN or inf)."""


class DataError(FxswapError, ValueError):
    """A data file or array fxswap cannot use; the message names the file, the array and what is accepted."""


class MatchError(SpecError):
    """A block matched by ``find_blocks`` does not map onto the module trace its rewrite edits."""
