"""An exponential moving average of the student in :func:`~fxswap.distillation.loop.fit`: timm's ``ModelEmaV3``.

``fit(ema=0.999)`` keeps ``ModelEmaV3(student, decay=0.999)`` (no warm-up:
after every optimiser step each floating-point parameter and buffer ``e``
becomes ``d·e + (1 − d)·p``; integer buffers are copied), validates it every
epoch (``val_loss_ema``, ``val_acc_ema`` in the history), stores it in the
checkpoint (``"ema"``: a resumed run ends with the same EMA as an
uninterrupted one) and writes it to ``out_dir/student_ema_state_dict.pt`` at
the end. The distiller's student is left as trained. ``fit(ema=ModelEmaV3(...))``
uses that one (its own decay and warm-up), so the caller holds the averaged
model at ``.module`` afterwards.

>>> import torch
>>> student = torch.nn.Linear(2, 1)
>>> ema = resolve_ema(0.5, student)
>>> with torch.no_grad(): _ = student.weight.add_(2.0)
>>> ema.update(student)
>>> torch.allclose(ema.module.weight, student.weight - 1.0)
True
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..errors import DistillError

__all__ = ["resolve_ema"]


def resolve_ema(ema: Any, student: nn.Module):
    """``fit``'s ``ema=`` as a ``timm.utils.ModelEmaV3`` (or None): a decay in (0, 1) builds one over
    ``student`` (on the student's device), a ModelEmaV3 is used as given.

    >>> resolve_ema(None, nn.Linear(1, 1)) is None, resolve_ema(0.9, nn.Linear(1, 1)).decay
    (True, 0.9)
    """
    from timm.utils import ModelEmaV3

    if ema is None or isinstance(ema, ModelEmaV3):
        return ema
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not math.isfinite(ema) or not 0 < ema < 1:
        raise DistillError(f"ema must be a decay in (0, 1) (e.g. 0.999) or a timm.utils.ModelEmaV3, got {ema!r}")
    return ModelEmaV3(student, decay=float(ema))
