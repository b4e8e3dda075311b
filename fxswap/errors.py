"""Errors fxswap raises. Each says what was wrong and what is accepted."""
from __future__ import annotations


class FxswapError(Exception):
    """Base class of every error fxswap raises on bad input."""


class SpecError(FxswapError, ValueError):
    """A block spec string (or plan) that fxswap cannot parse or apply.

    ``reason`` says why, without naming the block or the spec: what
    ``cheapen`` records for a block that a whole-model spec keeps as it is
    (``fxswap.applied_plan(student).kept``). Where the raiser gives none, it
    is the message.

    >>> err = SpecError("G(3) on block 'layer1.0': 16 channels", reason="16 channels")
    >>> str(err), err.reason, SpecError("no such spec").reason
    ("G(3) on block 'layer1.0': 16 channels", '16 channels', 'no such spec')
    """

    def __init__(self, *args, reason: str | None = None):
        super().__init__(*args)
        self.reason = reason if reason is not None else (str(args[0]) if args else "")


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
