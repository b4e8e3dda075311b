"""Evaluation, and the small pieces the loop shares with it: device, batches, logits, autocast dtype.

>>> resolve_device("cpu")
device(type='cpu')
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from ..tracing.modes import kept_modes

__all__ = ["evaluate", "evaluation_sums", "resolve_device", "to_device", "logits_of", "autocast_dtype"]


def resolve_device(device) -> torch.device:
    """``device`` as a ``torch.device`` (default: CUDA when available); CUDA without a GPU is an error.

    >>> resolve_device("cuda:0" if False else None).type in ("cpu", "cuda")
    True
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DistillError(f"device {device!r} is not a device; accepted: 'cpu', 'cuda', 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device {device} was asked for but CUDA is not available; use device='cpu'")
    return device


def to_device(batch, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a loader's batch, moved with ``non_blocking=True``.

    >>> to_device((torch.zeros(1), torch.ones(1)), torch.device("cpu"))
    (tensor([0.]), tensor([1.]))
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DistillError(f"the loader must yield (inputs, targets) batches, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def logits_of(out) -> Tensor:
    """The logits in a model's output: the tensor itself, ``out["logits"]`` or ``out[0]``.

    >>> logits_of((torch.ones(1, 2), {})).shape
    torch.Size([1, 2])
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise DistillError(f"the student returned {type(out).__name__}; evaluation needs logits (a tensor)")


def autocast_dtype(device: torch.device, amp_dtype) -> torch.dtype:
    """``amp_dtype``, or the default: fp16 on CUDA, bf16 elsewhere.

    >>> autocast_dtype(torch.device("cpu"), None)
    torch.bfloat16
    """
    if amp_dtype is not None:
        return amp_dtype
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _first_bad(flags: list[Tensor]) -> int | None:
    if not flags:
        return None
    bad = torch.stack(flags).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def evaluation_sums(model: nn.Module, loader, device=None, *, amp: bool | None = None,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> tuple[float, int, int]:
    """``(summed cross-entropy, correct, samples)`` of ``model`` on ``loader``: :func:`evaluate` before the
    division, so that several processes can add up their shares of a validation set. An empty loader
    gives ``(0.0, 0, 0)``.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> m = torch.nn.Linear(2, 2)
    >>> evaluation_sums(m, DataLoader(TensorDataset(torch.zeros(3, 2), torch.zeros(3).long())), "cpu")[1:]
    (3, 3)
    """
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    dtype = autocast_dtype(device, amp_dtype)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    bad_inputs: list[Tensor] = []
    bad_losses: list[Tensor] = []
    n = 0
    # every module gets its own flag back (a frozen BatchNorm inside a training model stays frozen)
    with kept_modes(model), torch.no_grad():
        model.eval()
        for batch in loader:
            x, y = to_device(batch, device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                out = logits_of(model(x))
            loss = F.cross_entropy(out.float(), y, reduction="sum").double()
            bad_inputs.append(~torch.isfinite(x).all() if x.is_floating_point() else torch.zeros((), dtype=torch.bool, device=device))
            bad_losses.append(~torch.isfinite(loss))
            loss_sum += loss
            correct += (out.argmax(1) == y).sum()
            n += y.shape[0]
    for flags, what in ((bad_inputs, "non-finite input values"), (bad_losses, "a non-finite loss")):
        index = _first_bad(flags)
        if index is not None:
            raise DistillError(f"validation batch {index + 1} of {len(flags)} has {what}"
                               + ("; check the data" if flags is bad_inputs else
                                  "; the model's weights or statistics are broken"))
    return float(loss_sum), int(correct), n


def evaluate(model: nn.Module, loader, device=None, *, amp: bool | None = None,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "acc": top-1 accuracy}`` of ``model`` on ``loader``.

    Runs in eval mode under ``torch.no_grad`` (and ``torch.autocast`` when
    ``amp``; default: on CUDA; inputs in ``channels_last`` when asked), then
    restores the model's mode. A batch with
    non-finite inputs or a non-finite loss is a :class:`~fxswap.errors.DistillError`
    naming it (checked once, at the end: no host sync per batch).

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> m = torch.nn.Linear(2, 2)
    >>> with torch.no_grad(): _ = m.weight.copy_(torch.eye(2)), m.bias.zero_()
    >>> data = TensorDataset(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    >>> r = evaluate(m, DataLoader(data, batch_size=2), "cpu")
    >>> round(r["acc"], 4)
    0.6667
    """
    loss_sum, correct, n = evaluation_sums(model, loader, device, amp=amp, amp_dtype=amp_dtype,
                                           channels_last=channels_last)
    if n == 0:
        raise DistillError("the validation loader yielded no samples")
    return {"loss": loss_sum / n, "acc": correct / n}
