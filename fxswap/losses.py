"""Distillation losses, as pure functions on tensors.

Every function here takes tensors (and, for the trainable connectors, small
``nn.Module`` objects) and returns a scalar loss tensor. Nothing here runs a
model: the caller computes logits and feature maps and hands them in.

The teacher side is always treated as a constant target: teacher tensors are
``detach()``-ed inside each loss, and the SRRL teacher classifier is called with
detached parameters, so no gradient ever reaches the teacher.

Where a paper and its reference code disagree on a constant, the *reference
code* is what is implemented (that is what produced the papers' numbers), and the
docstring says so:

==========  =================================================================
``kd``      Moonshine eq. 1 (seed 000); reference ``funcs.distillation`` of
            BayesWatch/pytorch-moonshine (from Zagoruyko's attention-transfer
            ``utils.distillation``): elementwise-mean KL × 2T²α + CE × (1−α).
``at``      Moonshine eq. 2; reference ``main.train_student``: β·3/N_L ·
            Σ mean((at(s)−at(t))²).
``mimic``   Urban et al. eq. 1 (seed 002): L2 regression on logits.
``hint``    FitNets hint (Romero et al.): 1×1-conv regressor + MSE.
``srrl``    SRRL eqs. 3, 7, 8 (seed 004); reference jingyang2017/KD_SRRL.
``lit``     LIT eqs. 1 and 3 (seed 001); reference stanford-futuredata/lit-code
            ``cifar10/main.py``.
==========  =================================================================

Users can add their own losses to :data:`LOSSES` with :func:`register_loss`;
:class:`fxswap.Distiller` then uses one by name as a logits term,
``weight · fn(student_logits, teacher_logits, targets, **options)`` (see
:mod:`fxswap.distillation.terms`, which also says where each built-in reads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .errors import FxswapError

__all__ = [
    "LOSSES",
    "register_loss",
    "get_loss",
    "attention_map",
    "attention_transfer",
    "kd_loss",
    "mimic_loss",
    "HintConnector",
    "hint_loss",
    "SRRLConnector",
    "srrl_losses",
    "srrl_loss",
    "lit_ir_loss",
    "lit_kd_loss",
    "lit_loss",
]

Points = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]

# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

#: Name → loss callable. The built-ins are ``"kd"``, ``"at"``, ``"mimic"``,
#: ``"hint"``, ``"srrl"`` and ``"lit"``; add your own with :func:`register_loss`.
LOSSES: dict[str, Callable[..., Any]] = {}


def register_loss(name: str, fn: Callable[..., Any] | None = None, *, overwrite: bool = False):
    """Register a loss callable under ``name`` in :data:`LOSSES`.

    Use as a decorator (``@register_loss("mine")``) or call directly
    (``register_loss("mine", fn)``). Registering a name that is already taken
    raises :class:`~fxswap.errors.FxswapError` unless ``overwrite=True``.

    >>> @register_loss("l1_logits_example")
    ... def l1_logits(s, t):
    ...     return (s - t).abs().mean()
    >>> LOSSES["l1_logits_example"] is l1_logits
    True
    >>> del LOSSES["l1_logits_example"]
    """
    if not isinstance(name, str) or not name.strip():
        raise FxswapError(f"a loss name must be a non-empty string, got {name!r}")

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise FxswapError(f"register_loss({name!r}) needs a callable, got {type(f).__name__}")
        if name in LOSSES and not overwrite and LOSSES[name] is not f:
            raise FxswapError(
                f"a loss named {name!r} is already registered ({LOSSES[name]!r}); "
                "pass overwrite=True to replace it or pick another name"
            )
        LOSSES[name] = f
        return f

    if fn is not None:
        return decorator(fn)
    return decorator


def get_loss(name: str) -> Callable[..., Any]:
    """The loss registered under ``name``; a clear error lists the known names.

    >>> get_loss("kd") is kd_loss
    True
    """
    try:
        return LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(LOSSES)) or "(none)"
        raise FxswapError(f"unknown loss {name!r}; registered losses: {known}") from None


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _pair_points(student: Points, teacher: Points, what: str) -> list[tuple[str, Tensor, Tensor]]:
    """Match student and teacher points: dicts by key, sequences by position."""
    if isinstance(student, Tensor) and isinstance(teacher, Tensor):
        return [("0", student, teacher)]
    if isinstance(student, Mapping) and isinstance(teacher, Mapping):
        missing_s = [k for k in teacher if k not in student]
        missing_t = [k for k in student if k not in teacher]
        if missing_s or missing_t:
            parts = []
            if missing_s:
                parts.append(f"missing from the student features: {', '.join(map(repr, missing_s))}")
            if missing_t:
                parts.append(f"missing from the teacher features: {', '.join(map(repr, missing_t))}")
            raise FxswapError(
                f"{what}: student and teacher dicts must have the same keys; " + "; ".join(parts)
            )
        pairs = [(str(k), student[k], teacher[k]) for k in teacher]
    elif (
        isinstance(student, Sequence)
        and isinstance(teacher, Sequence)
        and not isinstance(student, (str, bytes, Mapping))
        and not isinstance(teacher, (str, bytes, Mapping))
    ):
        if len(student) != len(teacher):
            raise FxswapError(
                f"{what}: got {len(student)} student features and {len(teacher)} teacher "
                "features; they are matched by position, so the counts must agree"
            )
        pairs = [(str(i), s, t) for i, (s, t) in enumerate(zip(student, teacher))]
    else:
        raise FxswapError(
            f"{what}: pass both student and teacher features as lists/tuples of tensors "
            f"or both as dicts {{name: tensor}}; got {type(student).__name__} and "
            f"{type(teacher).__name__}"
        )
    if not pairs:
        raise FxswapError(f"{what}: no feature points given (need at least one)")
    for name, s, t in pairs:
        if not isinstance(s, Tensor) or not isinstance(t, Tensor):
            raise FxswapError(
                f"{what}: point {name!r} is not a pair of tensors "
                f"({type(s).__name__}, {type(t).__name__})"
            )
    return pairs


def _check_logits(student_logits: Tensor, teacher_logits: Tensor | None, what: str) -> None:
    if not isinstance(student_logits, Tensor) or student_logits.ndim != 2:
        raise FxswapError(
            f"{what}: student logits must be a (batch, classes) tensor, got "
            f"{tuple(student_logits.shape) if isinstance(student_logits, Tensor) else type(student_logits).__name__}"
        )
    if teacher_logits is not None and tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise FxswapError(
            f"{what}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )


def _label_targets(targets: Tensor | None, logits: Tensor, what: str) -> Tensor:
    """The targets as ``F.cross_entropy`` takes them: class indices (as long), or class probabilities of
    shape (N, C) as they are (mixup/cutmix's soft targets, :mod:`fxswap.distillation.augment`)."""
    if targets is None:
        raise FxswapError(f"{what}: targets (class indices) are needed when the hard-label weight is > 0")
    if targets.dtype.is_floating_point and targets.shape == logits.shape:
        return targets
    integer = not (targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool)
    if targets.shape != logits.shape[:1] or not integer:
        raise FxswapError(
            f"{what}: targets must be integer class indices of shape ({logits.shape[0]},) or class "
            f"probabilities of shape {tuple(logits.shape)} (mixup's soft targets), got "
            f"shape {tuple(targets.shape)} dtype {targets.dtype}"
        )
    return targets.long()


def _check_temperature(T: float, what: str) -> None:
    if not T > 0:
        raise FxswapError(f"{what}: the temperature T must be > 0, got {T}")


def _check_unit(x: float, name: str, what: str) -> None:
    if not 0.0 <= x <= 1.0:
        raise FxswapError(f"{what}: {name} must be in [0, 1], got {x}")


# ---------------------------------------------------------------------------
# attention transfer (Moonshine eq. 2)
# ---------------------------------------------------------------------------


def attention_map(x: Tensor) -> Tensor:
    """Spatial attention map of a feature tensor (Zagoruyko & Komodakis 2017).

    ``F.normalize(x.pow(2).mean(1).flatten(1))``: the channel mean of squared
    activations, flattened per sample and L2-normalised, i.e. Moonshine eq. 2's
    f(A)/||f(A)||₂ with f(A) = (1/N_A) Σ_j a_j².

    ``x`` is (batch, channels, *spatial); the result is (batch, prod(spatial)).

    >>> x = torch.zeros(1, 2, 1, 2)
    >>> x[0, :, 0, 0] = 3.0      # all the energy in the first position
    >>> attention_map(x)
    tensor([[1., 0.]])
    """
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise FxswapError(
            "attention_map needs a (batch, channels, H, W) tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    return F.normalize(x.pow(2).mean(1).flatten(1))


def attention_transfer(student_feats: Points, teacher_feats: Points, beta: float = 1000.0) -> Tensor:
    """Attention-transfer loss, the second term of Moonshine eq. 2 (seed 000).

    Each argument is a list/tuple of feature tensors (matched by position) or a
    dict ``{name: tensor}`` (matched by key; a key missing on either side raises
    :class:`~fxswap.errors.FxswapError` naming it). A single tensor is one point.

    What is computed is what the reference code computes, not the literal
    equation: in BayesWatch/pytorch-moonshine, ``funcs.at_loss(x, y)`` is
    ``(at(x) - at(y)).pow(2).mean()`` — the *squared* difference *averaged* over
    batch × spatial positions (eq. 2 prints an un-squared, summed L2 norm) — and
    ``main.train_student`` adds ``adjusted_beta * at_loss(s_i, t_i)`` for every
    point with ``adjusted_beta = (args.beta * 3) / len(ints_student)``
    (``--beta`` defaults to 1e3; the paper's §4 also uses β = 1000). So::

        L_AT = β · 3 / N_L · Σ_i mean_{b,p} (at(s_i) − at(t_i))²_{b,p}

    which for the paper's N_L = 3 WRN group outputs is β · Σ_i. (The same
    β · Σ_i form is in szagoruyko/attention-transfer ``cifar.py``.) The
    cross-entropy term of eq. 2 is not included: add it (or :func:`kd_loss`).

    Channel counts may differ between student and teacher (the map averages over
    channels), but batch and spatial sizes must match. Spatial sizes are *not*
    interpolated automatically: a mismatch raises, pick matching points or resize
    the features yourself (e.g. ``F.adaptive_avg_pool2d``).

    >>> s = [torch.ones(2, 3, 4, 4)]
    >>> attention_transfer(s, [2.0 * s[0]])          # proportional → zero
    tensor(0.)
    >>> t = torch.zeros(1, 1, 1, 2); t[..., 0] = 1.0
    >>> u = torch.zeros(1, 1, 1, 2); u[..., 1] = 1.0
    >>> attention_transfer({"g1": t}, {"g1": u}, beta=1.0)   # 3/1 · mean([1, 1])
    tensor(3.)
    """
    pairs = _pair_points(student_feats, teacher_feats, "attention_transfer")
    total = None
    for name, s, t in pairs:
        if s.ndim < 3 or t.ndim < 3:
            raise FxswapError(
                f"attention_transfer: point {name!r} needs (batch, channels, H, W) tensors, got "
                f"student {tuple(s.shape)} and teacher {tuple(t.shape)}"
            )
        if s.shape[0] != t.shape[0]:
            raise FxswapError(
                f"attention_transfer: point {name!r} has batch {s.shape[0]} (student) vs "
                f"{t.shape[0]} (teacher)"
            )
        if s.shape[2:] != t.shape[2:]:
            raise FxswapError(
                f"attention_transfer: spatial sizes differ at point {name!r}: student "
                f"{tuple(s.shape[2:])} vs teacher {tuple(t.shape[2:])}. fxswap does not "
                "interpolate attention maps automatically; choose points with the same "
                "resolution or resize one side yourself (e.g. F.adaptive_avg_pool2d)"
            )
        term = (attention_map(s) - attention_map(t.detach())).pow(2).mean()
        total = term if total is None else total + term
    return total * (beta * 3.0 / len(pairs))


# ---------------------------------------------------------------------------
# knowledge distillation (Moonshine eq. 1)
# ---------------------------------------------------------------------------


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None,
    alpha: float = 0.9,
    T: float = 4.0,
    reduction: str = "reference",
) -> Tensor:
    """Knowledge-distillation loss, Moonshine eq. 1 (seed 000)::

        L_KD = (1 − α) · CE(y, σ(s)) + 2T²α · KL(σ(t/T) ‖ σ(s/T))

    (eq. 1 writes the cross-entropy H(σ(t/T), σ(s/T)); it differs from the KL by
    the teacher's entropy, a constant for the student, so the gradients agree.)

    ``reduction="reference"`` (default) reproduces the reference code exactly:
    ``funcs.distillation`` in BayesWatch/pytorch-moonshine (copied from
    Zagoruyko's attention-transfer ``utils.distillation``) is
    ``F.kl_div(F.log_softmax(s/T, 1), F.softmax(t/T, 1)) * (T*T * 2. * alpha)
    + F.cross_entropy(s, y) * (1. - alpha)``. The old ``F.kl_div`` default
    (``size_average=True``, today ``reduction="mean"``) averages over **all
    batch × class elements**, not over the batch.

    ``reduction="batchmean"`` is the usual Hinton et al. form: KL summed over
    classes, averaged over the batch, scaled by T² (no factor 2)::

        α · T² · (1/B) Σ_b KL_b + (1 − α) · CE

    How they relate: elementwise mean = batchmean / C (C = number of classes), so
    the reference soft term equals ``2 / C`` times the batchmean soft term — 0.2×
    for CIFAR-10, 0.02× for CIFAR-100. The CE term is the same in both.

    Moonshine uses α = 0.9, T = 4 (§4, "Implementation Details"). With
    ``alpha=1`` the CE term is dropped and ``targets`` may be ``None``.

    >>> s = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
    >>> ce = torch.nn.functional.cross_entropy(s, y)
    >>> torch.allclose(kd_loss(s, s, y), 0.1 * ce, atol=1e-6)   # s == t: KL is 0
    True
    >>> s4, t4 = torch.tensor([[1.0, 0.0, 2.0, 0.5]]), torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    >>> ref = kd_loss(s4, t4, None, alpha=1.0, T=1.0)
    >>> bm = kd_loss(s4, t4, None, alpha=1.0, T=1.0, reduction="batchmean")
    >>> torch.allclose(ref, bm * 2 / 4)              # 2 / C with C = 4 classes
    True
    """
    what = "kd_loss"
    _check_logits(student_logits, teacher_logits, what)
    _check_temperature(T, what)
    _check_unit(alpha, "alpha", what)
    if reduction not in ("reference", "batchmean"):
        raise FxswapError(f"{what}: reduction must be 'reference' or 'batchmean', got {reduction!r}")
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="none")  # p_t · (log p_t − log p_s), elementwise
    if reduction == "reference":
        soft = kl.mean() * (2.0 * T * T * alpha)
    else:
        soft = kl.sum() / student_logits.shape[0] * (T * T * alpha)
    if alpha == 1.0:
        return soft
    return soft + F.cross_entropy(student_logits, _label_targets(targets, student_logits, what)) * (1.0 - alpha)


# ---------------------------------------------------------------------------
# mimic learning (Urban et al. eq. 1)
# ---------------------------------------------------------------------------


def mimic_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """L2 regression on the teacher's logits, Urban et al. 2017 eq. 1 (seed 002)::

        L(W) = (1/B) Σ_t ‖ g(x⁽ᵗ⁾; W) − z⁽ᵗ⁾ ‖²₂

    i.e. the squared Euclidean distance between student and teacher logit
    vectors, summed over classes and averaged over the batch. (The extracted
    text of eq. 1 is garbled; the normalisation read here is 1/T over the T
    training samples, applied per minibatch. Ba & Caruana 2014, which Urban et
    al. follow, write 1/(2T): that is this loss halved — a constant factor that
    only rescales the learning rate.) The student is trained on logits, not on
    softmax probabilities, and no labels are used.

    >>> s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    >>> t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    >>> mimic_loss(s, t)           # ((0 + 4) + (9 + 16)) / 2
    tensor(14.5000)
    """
    _check_logits(student_logits, teacher_logits, "mimic_loss")
    return (student_logits - teacher_logits.detach()).pow(2).sum(1).mean()


# ---------------------------------------------------------------------------
# FitNets hints
# ---------------------------------------------------------------------------


def _channel_counts(who: str, student_channels: int, teacher_channels: int) -> tuple[int, int]:
    if student_channels < 1 or teacher_channels < 1:
        raise FxswapError(f"{who} needs positive channel counts, got {student_channels} → {teacher_channels}")
    return int(student_channels), int(teacher_channels)


def _check_feature_map(x: Tensor, who: str, student_channels: int, teacher_channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != student_channels:
        raise FxswapError(f"{who}({student_channels}→{teacher_channels}) got a tensor of shape {tuple(x.shape)}; "
                          f"expected (batch, {student_channels}, H, W)")


class HintConnector(nn.Module):
    """FitNets regressor: a trainable 1×1 conv from the student's width to the teacher's.

    When the widths are equal it is the identity (no parameters). Train it
    together with the student (put its parameters in the optimizer).
    ``channels_last=True`` is the same map for transformer features, whose
    channels are the *last* axis (ViT tokens ``(B, N, C)``, Swin's
    ``(B, H, W, C)``): a ``Linear(C_s, C_t)`` over that axis, which is what a
    1×1 conv is on a ``(B, C, H, W)`` map.

    >>> HintConnector(8, 16)(torch.zeros(2, 8, 4, 4)).shape
    torch.Size([2, 16, 4, 4])
    >>> HintConnector(8, 16, channels_last=True)(torch.zeros(2, 197, 8)).shape
    torch.Size([2, 197, 16])
    >>> sum(p.numel() for p in HintConnector(16, 16).parameters())
    0
    """

    def __init__(self, student_channels: int, teacher_channels: int, channels_last: bool = False):
        super().__init__()
        self.student_channels, self.teacher_channels = _channel_counts("HintConnector", student_channels, teacher_channels)
        self.channels_last = bool(channels_last)
        if student_channels == teacher_channels:
            self.proj: nn.Module = nn.Identity()
        elif self.channels_last:
            self.proj = nn.Linear(student_channels, teacher_channels)
        else:
            self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            if x.ndim < 3 or x.shape[-1] != self.student_channels:
                raise FxswapError(f"HintConnector({self.student_channels}→{self.teacher_channels}, channels_last) "
                                  f"got a tensor of shape {tuple(x.shape)}; expected (batch, ..., "
                                  f"{self.student_channels}), e.g. tokens (batch, N, {self.student_channels})")
        else:
            _check_feature_map(x, "HintConnector", self.student_channels, self.teacher_channels)
        return self.proj(x)

    def extra_repr(self) -> str:
        return "channels_last=True" if self.channels_last else ""


def hint_loss(student_feat: Tensor, teacher_feat: Tensor, connector: nn.Module | None = None) -> Tensor:
    """FitNets hint loss (Romero et al. 2015): MSE between r(student) and the teacher.

    ``r`` is ``connector`` (typically a :class:`HintConnector`); with
    ``connector=None`` the student feature is compared as is, so its shape must
    already equal the teacher's. The mean is elementwise (``F.mse_loss``);
    FitNets writes ½‖·‖², a constant factor away.

    >>> s = torch.zeros(1, 2, 2, 2); t = torch.ones(1, 2, 2, 2)
    >>> hint_loss(s, t)
    tensor(1.)
    >>> hint_loss(s, torch.ones(1, 4, 2, 2), HintConnector(2, 4)).shape
    torch.Size([])
    """
    if connector is not None:
        student_feat = connector(student_feat)
    if student_feat.shape != teacher_feat.shape:
        hint = ""
        if (
            student_feat.ndim == 4
            and teacher_feat.ndim == 4
            and student_feat.shape[1] != teacher_feat.shape[1]
            and student_feat.shape[2:] == teacher_feat.shape[2:]
        ):
            hint = (
                f"; the channel counts differ: pass connector=HintConnector("
                f"{student_feat.shape[1]}, {teacher_feat.shape[1]})"
            )
        elif student_feat.ndim == teacher_feat.ndim and student_feat.shape[2:] != teacher_feat.shape[2:]:
            hint = "; the spatial sizes differ and are not interpolated automatically"
        raise FxswapError(
            f"hint_loss: student feature {tuple(student_feat.shape)} (after the connector) and "
            f"teacher feature {tuple(teacher_feat.shape)} must have the same shape{hint}"
        )
    return F.mse_loss(student_feat, teacher_feat.detach())


# ---------------------------------------------------------------------------
# SRRL (Yang et al., ICLR 2021, seed 004)
# ---------------------------------------------------------------------------


class SRRLConnector(nn.Module):
    """SRRL's r(·): Conv1×1(C_s→C_t, bias=False) → BatchNorm → ReLU.

    Applied to the student's last feature map to bring it to the teacher's
    width (jingyang2017/KD_SRRL ``distiller_zoo/AIN.py``, ``transfer_conv``;
    the conv is initialised N(0, 2/(k²·C_t)), i.e. Kaiming fan-out).

    >>> SRRLConnector(8, 16)(torch.zeros(2, 8, 4, 4)).shape
    torch.Size([2, 16, 4, 4])
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.student_channels, self.teacher_channels = _channel_counts("SRRLConnector", student_channels, teacher_channels)
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)
        self.relu = nn.ReLU()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, "SRRLConnector", self.student_channels, self.teacher_channels)
        return self.relu(self.bn(self.conv(x)))


def _frozen_call(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Call ``fn`` on ``x`` with its parameters detached: gradients reach ``x``, never ``fn``."""
    if isinstance(fn, nn.Module):
        params = {name: p.detach() for name, p in fn.named_parameters()}
        return torch.func.functional_call(fn, params, (x,))
    return fn(x)


def _pool(x: Tensor, what: str, side: str) -> Tensor:
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 2:
        return x
    raise FxswapError(
        f"{what}: the {side} feature must be a (batch, C, H, W) map or a pooled (batch, C) "
        f"vector, got {tuple(x.shape)}"
    )


def srrl_losses(
    student_feat_map: Tensor,
    teacher_feat_map: Tensor,
    teacher_classifier: Callable[[Tensor], Tensor],
    teacher_logits: Tensor,
    connector: nn.Module | None,
) -> tuple[Tensor, Tensor]:
    """SRRL's two feature losses (L_FM, L_SR), seed 004 eqs. 3 and 7.

    With h_S = GAP(connector(student_feat_map)) and h_T = GAP(teacher_feat_map)
    (GAP = global average pooling over H, W)::

        L_FM = mean_{b,c} (h_S − h_T)²                        (eq. 3)
        L_SR = mean_{b,k} (W_T(h_S) − teacher_logits)²         (eq. 7, L2 form)

    ``teacher_classifier`` maps a pooled (batch, C_t) feature to logits (for a
    torchvision-style ResNet: ``teacher.fc``). It is used *frozen*: it is called
    with detached parameters, so no gradient reaches it, while gradients do flow
    *through* it into the connector and the student. ``teacher_logits`` are the
    teacher's own logits on the same batch (the targets p of eq. 4).

    Both means are elementwise, as in the reference (jingyang2017/KD_SRRL
    ``train_imagenet_distillation.py``: ``statm_loss`` — channel-wise spatial
    means, squared difference, mean over channels and batch — and
    ``F.mse_loss(pred_sc, pred_t)`` with ``pred_sc = net_t(feat_s=...)`` =
    avgpool → fc of the teacher). The paper's eq. 7 L2 form is the one used in
    all its experiments (appendix, Table 9).

    Because both sides are pooled, student and teacher spatial sizes may differ.
    ``connector=None`` means the identity (the widths must then match already).
    The teacher feature may also be passed already pooled, as (batch, C_t).

    >>> torch.manual_seed(0) and None
    >>> fc = torch.nn.Linear(4, 3)
    >>> conn = SRRLConnector(2, 4)
    >>> fs, ft = torch.randn(5, 2, 3, 3), torch.rand(5, 4, 3, 3)
    >>> l_fm, l_sr = srrl_losses(fs, ft, fc, fc(ft.mean((2, 3))).detach(), conn)
    >>> l_fm.shape, l_sr.shape, bool(l_fm > 0), bool(l_sr > 0)
    (torch.Size([]), torch.Size([]), True, True)
    """
    what = "srrl_losses"
    if connector is not None:
        student_feat_map = connector(student_feat_map)
    h_s = _pool(student_feat_map, what, "student")
    h_t = _pool(teacher_feat_map, what, "teacher").detach()
    if h_s.shape != h_t.shape:
        raise FxswapError(
            f"{what}: pooled student feature {tuple(h_s.shape)} (after the connector) and pooled "
            f"teacher feature {tuple(h_t.shape)} must have the same shape; use "
            "SRRLConnector(C_student, C_teacher) to match the widths"
        )
    l_fm = F.mse_loss(h_s, h_t)
    q = _frozen_call(teacher_classifier, h_s)
    if q.shape != teacher_logits.shape:
        raise FxswapError(
            f"{what}: teacher_classifier(h_S) has shape {tuple(q.shape)} but teacher_logits has "
            f"shape {tuple(teacher_logits.shape)}; teacher_classifier must map a pooled "
            "(batch, C_teacher) feature to the teacher's logits"
        )
    l_sr = F.mse_loss(q, teacher_logits.detach())
    return l_fm, l_sr


def srrl_loss(
    student_logits: Tensor,
    targets: Tensor,
    student_feat_map: Tensor,
    teacher_feat_map: Tensor,
    teacher_classifier: Callable[[Tensor], Tensor],
    teacher_logits: Tensor,
    connector: nn.Module | None,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """The full SRRL objective, seed 004 eq. 8: ``CE + α·L_FM + β·L_SR``.

    Defaults α = β = 1: the paper leaves α, β unstated. The reference's
    current code (jingyang2017/KD_SRRL ``train_imagenet_distillation.py``,
    since commit 1f4009f) computes ``loss_kd = loss_stat +
    F.mse_loss(pred_sc, pred_t) * args.weight`` and ``loss = loss_ce +
    loss_kd``, i.e. α = 1 and β = ``--weight`` (default 1); its earlier
    version scaled both terms by ``--weight``. α = 0 is L_SR alone and β = 0
    L_FM alone (the paper's Table 1 ablation).

    >>> torch.manual_seed(0) and None
    >>> fc, conn = torch.nn.Linear(4, 3), SRRLConnector(2, 4)
    >>> fs, ft = torch.randn(5, 2, 3, 3), torch.rand(5, 4, 3, 3)
    >>> s_logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    >>> t_logits = fc(ft.mean((2, 3))).detach()
    >>> l_fm, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    >>> ce = torch.nn.functional.cross_entropy(s_logits, y)
    >>> total = srrl_loss(s_logits, y, fs, ft, fc, t_logits, conn)
    >>> torch.allclose(total, ce + l_fm + l_sr)
    True
    """
    _check_logits(student_logits, None, "srrl_loss")
    labels = _label_targets(targets, student_logits, "srrl_loss")
    l_fm, l_sr = srrl_losses(student_feat_map, teacher_feat_map, teacher_classifier, teacher_logits, connector)
    return F.cross_entropy(student_logits, labels) + alpha * l_fm + beta * l_sr


# ---------------------------------------------------------------------------
# LIT (Koratana et al., seed 001)
# ---------------------------------------------------------------------------


def lit_ir_loss(student_irs: Points, teacher_irs: Points) -> Tensor:
    """LIT's intermediate-representation loss, seed 001 eq. 3 with l = MSE::

        L_I = Σ_i MSE(S_i(T_{i−1}), T_i)

    The inputs are the *already computed* section outputs: ``student_irs[i]`` is
    student section i run on the teacher's IR i−1 (for the first section, on the
    shared stem output — in the reference the student's stem is copied from the
    teacher), and ``teacher_irs[i]`` is the teacher's IR i. Lists are matched by
    position, dicts by key. Each term is ``nn.MSELoss()`` (elementwise mean), as
    in stanford-futuredata/lit-code ``cifar10/main.py`` (``ir_loss =
    torch.nn.MSELoss()``, summed over the ``NB_SECTIONS`` sections).

    >>> lit_ir_loss([torch.zeros(2, 3), torch.ones(4)], [torch.ones(2, 3), torch.ones(4)])
    tensor(1.)
    """
    pairs = _pair_points(student_irs, teacher_irs, "lit_ir_loss")
    total = None
    for name, s, t in pairs:
        if s.shape != t.shape:
            raise FxswapError(
                f"lit_ir_loss: section {name!r} output {tuple(s.shape)} (student) and IR "
                f"{tuple(t.shape)} (teacher) must have the same shape; LIT needs student and "
                "teacher sections with matching output sizes"
            )
        term = F.mse_loss(s, t.detach())
        total = term if total is None else total + term
    return total


def lit_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None,
    alpha: float = 0.95,
    T: float = 6.0,
) -> Tensor:
    """The KD loss LIT uses, seed 001 eq. 2, in the reference code's form::

        (1/B) Σ_b [ α · CE(s_b, y_b) + (1 − α) · T² · H(σ(t_b/T), σ(s_b/T)) ]

    Note α weights the **hard-label** term here (eq. 2: α·H(y,p) + (1−α)·H(p,q)),
    the opposite of Moonshine's α. The soft term is the cross-entropy with the
    teacher's softened distribution (not the KL: they differ by the teacher's
    entropy, constant for the student), summed over classes, averaged over the
    batch, scaled by T². This is ``AlphaDistillationLoss`` in
    stanford-futuredata/lit-code (``vdcnn/distillation_loss.py``; ``cifar10/
    main.py`` imports it), used with ``temp = 6.0`` and ``alpha = 0.95``
    (also the paper's appendix A: τ = 6, α = 0.95 for ResNet on CIFAR-10).

    >>> s = torch.tensor([[0.0, 0.0]])
    >>> lit_kd_loss(s, s, None, alpha=0.0, T=1.0)     # H(½,½) = log 2
    tensor(0.6931)
    """
    what = "lit_kd_loss"
    _check_logits(student_logits, teacher_logits, what)
    _check_temperature(T, what)
    _check_unit(alpha, "alpha", what)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    soft = -(p_t * log_p_s).sum(1).mean() * (T * T)
    loss = (1.0 - alpha) * soft
    if alpha == 0.0:
        return loss
    return loss + alpha * F.cross_entropy(student_logits, _label_targets(targets, student_logits, what))


def lit_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None,
    student_irs: Points,
    teacher_irs: Points,
    beta: float = 0.75,
    T: float = 6.0,
    alpha: float = 0.95,
) -> Tensor:
    """The LIT training loss, seed 001 eq. 1, as the reference computes it::

        (β · L_KD,α + (1 − β) · L_I) / 2

    with L_KD,α = :func:`lit_kd_loss` (τ = T = 6, α = 0.95) on the full student's
    logits and L_I = :func:`lit_ir_loss` over the sections. stanford-futuredata/
    lit-code ``cifar10/main.py`` (``lit_epoch``): ``full_loss = kd_loss(...) *
    beta``, then ``full_loss += section_loss * (1.0 - beta)`` per section, then
    ``full_loss /= 2`` before ``backward()``; ``beta = 0.75``, ``temp = 6.0``,
    ``alpha = 0.95`` (the ResNet/CIFAR-10 setting of the paper's appendix A;
    it uses β = 0.5 for ResNeXt and 0.25 for cardinality-16 students). β = 0
    is IR only (the paper's GAN setting), β = 1 is KD only.

    >>> s = torch.tensor([[0.0, 0.0]])
    >>> irs = [torch.zeros(1, 2)]
    >>> lit_loss(s, s, None, irs, [torch.ones(1, 2)], beta=0.0)   # (0 + 1) / 2
    tensor(0.5000)
    """
    _check_unit(beta, "beta", "lit_loss")
    ir = lit_ir_loss(student_irs, teacher_irs)
    if beta == 0.0:
        return ir / 2
    kd = lit_kd_loss(student_logits, teacher_logits, targets, alpha=alpha, T=T)
    return (beta * kd + (1.0 - beta) * ir) / 2


for _name, _fn in (
    ("kd", kd_loss),
    ("at", attention_transfer),
    ("mimic", mimic_loss),
    ("hint", hint_loss),
    ("srrl", srrl_loss),
    ("lit", lit_loss),
):
    register_loss(_name, _fn)
del _name, _fn
