"""Mixup / CutMix in :func:`~fxswap.distillation.loop.fit`: timm's ``Mixup`` on each training batch.

``fit(mixup=...)`` takes a ``timm.data.Mixup`` or the keyword arguments of
one (``dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)``;
``num_classes`` defaults to the student's: its ``num_classes`` attribute
(timm models), else the width of its last ``nn.Linear``). Each training batch
``(x, y)`` becomes ``(x_mixed, y_soft)`` with ``y_soft`` class
probabilities of shape (N, C) (label smoothing included) before the
distiller sees it. Every label term takes them: ``ce`` and the hard-label
part of ``kd``, ``lit_kd`` and ``srrl`` are ``F.cross_entropy`` with
probability targets, i.e. timm's ``SoftTargetCrossEntropy``; the feature and
logit terms (AT, hints, KD's soft part) read only the mixed inputs. Both
alphas 0 leaves the images alone and smooths the labels only.

timm's ``Mixup`` draws from NumPy's global generator, which ``fit`` reseeds
every epoch, so a resumed run mixes exactly as an uninterrupted one. It mixes
the batch in place (a clone is mixed here: a device-resident dataset's batch
may be a view of the data) and needs an even batch: an odd batch's last
sample is kept unmixed, with smoothed one-hot targets.

>>> import torch
>>> mixer = resolve_mixup({"mixup_alpha": 0.0, "label_smoothing": 0.1}, torch.nn.Linear(4, 5))
>>> x, y = mix_batch(mixer, torch.randn(3, 4), torch.tensor([0, 1, 4]))
>>> y.shape, round(float(y[0, 0]), 2), hard_labels(y).tolist()
(torch.Size([3, 5]), 0.92, [0, 1, 4])
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DistillError

__all__ = ["resolve_mixup", "mix_batch", "hard_labels", "student_classes"]


def student_classes(student: nn.Module) -> int | None:
    """The number of classes ``student`` predicts: its ``num_classes`` attribute, else its last
    ``nn.Linear``'s ``out_features``; None when neither says.

    >>> student_classes(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 3)))
    3
    """
    n = getattr(student, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_numbers(options: Mapping[str, Any]) -> None:
    for key in ("mixup_alpha", "cutmix_alpha"):
        v = options.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise DistillError(f"mixup: {key} must be a number >= 0 (0 = off), got {v!r}")
    e = options.get("label_smoothing", 0.0)
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < 1:
        raise DistillError(f"mixup: label_smoothing must be a number in [0, 1), got {e!r}")


def resolve_mixup(mixup: Any, student: nn.Module):
    """``fit``'s ``mixup=`` as a ``timm.data.Mixup`` (or None): a Mixup is used as given, a dict builds one
    (``mixup_alpha`` and ``cutmix_alpha`` default to 0, ``label_smoothing`` to 0, ``num_classes`` to the
    student's: :func:`student_classes`).

    >>> resolve_mixup(None, torch.nn.Linear(2, 2)) is None
    True
    >>> resolve_mixup({"cutmix_alpha": 1.0}, torch.nn.Linear(2, 7)).num_classes
    7
    """
    from timm.data import Mixup

    if mixup is None or isinstance(mixup, Mixup):
        return mixup
    if not isinstance(mixup, Mapping):
        raise DistillError(f"mixup must be a timm.data.Mixup or a dict of its arguments (mixup_alpha=, "
                           f"cutmix_alpha=, label_smoothing=, ...), got {type(mixup).__name__}")
    options = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0, **mixup}
    _check_numbers(options)
    if "num_classes" not in options:
        options["num_classes"] = student_classes(student)
        if options["num_classes"] is None:
            raise DistillError("mixup: cannot tell the student's number of classes (no num_classes attribute, "
                               "no nn.Linear); pass mixup=dict(..., num_classes=N)")
    try:
        mixer = Mixup(**options)
    except (TypeError, AssertionError) as e:
        raise DistillError(f"mixup: {e}; accepted: the arguments of timm.data.Mixup (mixup_alpha, "
                           "cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, label_smoothing, "
                           "num_classes)") from None
    # no alpha and no minmax: timm would assert at the first batch; smoothing alone is meant
    mixer.mixup_enabled = bool(mixer.mixup_alpha > 0 or mixer.cutmix_alpha > 0 or mixer.cutmix_minmax)
    return mixer


def mix_batch(mixer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_mixed, y_soft)``: ``mixer`` applied to a clone of ``x`` (an odd batch's last sample unmixed,
    its targets the smoothed one-hot); ``y_soft`` in float32, shape (N, num_classes).

    >>> from timm.data import Mixup
    >>> x, y = mix_batch(Mixup(mixup_alpha=1.0, num_classes=3), torch.ones(2, 2), torch.tensor([0, 2]))
    >>> torch.allclose(y.sum(1), torch.ones(2)), tuple(x.shape)
    (True, (2, 2))
    """
    from timm.data.mixup import mixup_target

    if y.ndim != 1 or y.dtype.is_floating_point:
        raise DistillError(f"mixup needs integer class labels of shape (N,), got shape {tuple(y.shape)} "
                           f"dtype {y.dtype}")
    n = int(x.shape[0])
    even = n - n % 2
    parts_x, parts_y = [], []
    if even:
        mixed_x, mixed_y = mixer(x[:even].clone(), y[:even])
        parts_x.append(mixed_x)
        parts_y.append(mixed_y.float())
    if even < n:
        parts_x.append(x[even:])
        parts_y.append(mixup_target(y[even:], mixer.num_classes, 1.0, mixer.label_smoothing).float())
    return torch.cat(parts_x), torch.cat(parts_y)


def hard_labels(y: Tensor) -> Tensor:
    """The class each target names: ``y`` itself for class indices, the argmax of soft targets (what the
    training accuracy is measured against under mixup).

    >>> hard_labels(torch.tensor([[0.2, 0.8], [0.6, 0.4]])).tolist()
    [1, 0]
    """
    return y.argmax(1) if y.ndim == 2 and y.dtype.is_floating_point else y
