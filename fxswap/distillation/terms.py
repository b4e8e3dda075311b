"""Distillation terms: each loss registered once with what it reads and what it trains.

A :class:`Term` says where the term reads features (``points``: a probe
selector, resolved separately on teacher and student), whether it needs a
trainable connector (``connector``: a factory called once with example
features), and how the loss is computed (``call``). :class:`~fxswap.Distiller`
composes terms; each keeps its own points, so adding a term never changes
another's value.

=========  =========================================================  =============
term       loss (see :mod:`fxswap.losses`)                            reads
=========  =========================================================  =============
``ce``     w · cross-entropy on the labels                            logits
``kd``     Moonshine eq. 1, :func:`~fxswap.losses.kd_loss`            logits
``lit_kd`` LIT eq. 2, :func:`~fxswap.losses.lit_kd_loss`              logits
``mimic``  w · Urban et al. eq. 1, :func:`~fxswap.losses.mimic_loss`  logits
``at``     Moonshine eq. 2, :func:`~fxswap.losses.attention_transfer` ``"stages"``
``hint``   w · FitNets, :func:`~fxswap.losses.hint_loss` + 1×1 conn.  ``"stages"``
``srrl``   fm·L_FM + sr·L_SR (SRRL eq. 8), teacher head + connector  ``"features"``
``lit``    LIT eq. 1, :func:`~fxswap.losses.lit_loss` (sections)      ``"stages"``
=========  =========================================================  =============

Transformers: features with their channels on the last axis (ViT tokens
``(B, N, C)``, Swin's ``(B, H, W, C)``; see :func:`channels_last`) get a
``Linear`` hint connector over C and AT over tokens; ``srrl`` refuses them
(:data:`TOKEN_LOSSES` lists the terms that apply).

A loss added with :func:`fxswap.losses.register_loss` is a logits term under
its name: ``weight · fn(student_logits, teacher_logits, targets, **options)``,
as is any callable given directly in ``losses``.

>>> get_term("at").points, get_term("kd").main
('stages', 'alpha')
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses as L
from ..errors import DistillError
from .hidden import Hidden, HidingModule

__all__ = ["Term", "TermInputs", "TermSetup", "TERMS", "TOKEN_LOSSES", "register_term", "get_term", "term_options",
           "channels_last"]


@dataclass(frozen=True)
class TermInputs:
    """What a term's ``call`` sees for one batch; the point lists are paired (student i ↔ teacher i).

    ``*_channels_last[i]``: point i has its channels on the last axis (transformer tokens ``(B, N, C)``,
    Swin's ``(B, H, W, C)``), not on axis 1 (``(B, C, H, W)`` maps). See :func:`channels_last`.
    """

    student_logits: Tensor
    teacher_logits: Tensor | None
    targets: Tensor
    student_points: list[Tensor] = field(default_factory=list)
    teacher_points: list[Tensor] = field(default_factory=list)
    student_channels_last: list[bool] = field(default_factory=list)
    teacher_channels_last: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class TermSetup:
    """What a connector factory sees, once: the models, the paired point names, example features and their
    layouts (as in :class:`TermInputs`)."""

    student: nn.Module
    teacher: nn.Module | None
    student_names: list[str]
    teacher_names: list[str]
    student_points: list[Tensor]
    teacher_points: list[Tensor]
    options: dict[str, Any]
    leaf_modules: tuple = ()
    student_channels_last: list[bool] = field(default_factory=list)
    teacher_channels_last: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Term:
    """One distillation term.

    ``call(inputs, options, connector) -> Tensor``; ``points``: the probe
    selector it reads (None: logits only); ``connector(setup) -> nn.Module``
    builds its trainable part (``example=True``: it needs example features);
    ``main``: the option a plain number sets (``{"kd": 0.9}`` means
    ``alpha=0.9``); ``options``: the accepted option names (``"*"``: any);
    ``replaces_ce``: no ``ce`` term is implied beside it (it has its own label
    loss, or, for mimic, Urban et al. train on it alone); ``teacher``: it reads
    the teacher; ``fn``: the user's loss function a logits term wraps.

    >>> t = Term("l2", lambda inp, o, c: o["weight"] * (inp.student_logits - inp.teacher_logits).pow(2).mean())
    >>> t.main, t.options
    ('weight', ('weight',))
    """

    name: str
    call: Callable[[TermInputs, dict, nn.Module | None], Tensor]
    points: str | Sequence[str] | None = None
    connector: Callable[[TermSetup], nn.Module] | None = None
    example: bool = True
    main: str = "weight"
    options: tuple[str, ...] = ("weight",)
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"weight": 1.0})
    replaces_ce: bool = False
    teacher: bool = True
    fn: Callable | None = None


#: The built-in terms that work on transformer features (tokens ``(B, N, C)``, Swin's ``(B, H, W, C)``) as well
#: as on CNN maps; ``srrl`` needs a CNN's (B, C, H, W) feature map and refuses tokens.
TOKEN_LOSSES = ("ce", "kd", "lit_kd", "mimic", "at", "hint")

#: Name → :class:`Term`. Add your own with :func:`register_term`.
TERMS: dict[str, Term] = {}


def register_term(term: Term, *, overwrite: bool = False) -> Term:
    """Make ``term`` usable by name in ``Distiller(..., losses={name: ...})``.

    >>> t = register_term(Term("zero_example", lambda inp, o, c: 0 * inp.student_logits.sum(), teacher=False))
    >>> get_term("zero_example") is t
    True
    >>> del TERMS["zero_example"]
    """
    if term.name in TERMS and not overwrite and TERMS[term.name] is not term:
        raise DistillError(f"a distillation term named {term.name!r} is already registered; "
                           "pass overwrite=True to replace it")
    TERMS[term.name] = term
    return term


def _logits_term(name: str, fn: Callable) -> Term:
    def call(inputs: TermInputs, options: dict, connector) -> Tensor:
        kwargs = {k: v for k, v in options.items() if k != "weight"}
        return options["weight"] * fn(inputs.student_logits, inputs.teacher_logits, inputs.targets, **kwargs)

    return Term(name, call, options=("weight", "*"), fn=fn)


def get_term(name: str, value: Any = None) -> Term:
    """The term for ``losses[name] = value``: a callable value, a registered term, or a registered loss.

    >>> get_term("hint").connector is not None
    True
    >>> get_term("no_such_loss")
    Traceback (most recent call last):
    ...
    fxswap.errors.DistillError: unknown loss 'no_such_loss'; accepted: ...
    """
    if callable(value):
        return _logits_term(name, value)
    if name in TERMS:
        return TERMS[name]
    if name in L.LOSSES:
        return _logits_term(name, L.LOSSES[name])
    users = sorted(set(L.LOSSES) - set(TERMS))
    raise DistillError(f"unknown loss {name!r}; accepted: {', '.join(TERMS)}"
                       + (f", registered losses {', '.join(users)}" if users else "")
                       + ", or a callable fn(student_logits, teacher_logits, targets) under any name")


def term_options(term: Term, value: Any) -> dict[str, Any]:
    """``losses[name]`` as the term's keyword options: a number sets ``term.main``; a dict names them.

    >>> term_options(get_term("kd"), 0.5)
    {'alpha': 0.5}
    >>> term_options(get_term("at"), {"betta": 1.0})
    Traceback (most recent call last):
    ...
    fxswap.errors.DistillError: loss 'at': unknown option(s) ['betta']; accepted: beta
    """
    if callable(value):
        return {"weight": 1.0}
    if isinstance(value, bool) or not isinstance(value, (int, float, Mapping)):
        raise DistillError(f"loss {term.name!r}: give a number or a dict of its options "
                           f"({', '.join(term.options)}), got {type(value).__name__}")
    options = {term.main: float(value)} if isinstance(value, (int, float)) else dict(value)
    if "*" not in term.options:
        unknown = sorted(str(k) for k in options if k not in term.options)
        if unknown:
            raise DistillError(f"loss {term.name!r}: unknown option(s) {unknown}; accepted: {', '.join(term.options)}")
    return {**{k: v for k, v in term.defaults.items() if k not in options}, **options}


def check_call(term: Term, fn: Callable, options: dict) -> None:
    """Fail at construction, not at the first step, when a user loss cannot take ``options``."""
    kwargs = {k: v for k, v in options.items() if k != "weight"}
    try:
        inspect.signature(fn).bind(None, None, None, **kwargs)
    except TypeError as e:
        raise DistillError(f"loss {term.name!r} cannot be called as fn(student_logits, teacher_logits, targets"
                           f"{''.join(', ' + k + '=' for k in kwargs)}): {e}") from None
    except ValueError:  # builtins without a signature: find out at the first call
        pass


# ---------------------------------------------------------------------------
# the built-in terms
# ---------------------------------------------------------------------------


def _ce(inputs: TermInputs, options: dict, connector) -> Tensor:
    return options["weight"] * F.cross_entropy(inputs.student_logits, inputs.targets)


def _kd(inputs: TermInputs, options: dict, connector) -> Tensor:
    return L.kd_loss(inputs.student_logits, inputs.teacher_logits, inputs.targets, **options)


def _lit_kd(inputs: TermInputs, options: dict, connector) -> Tensor:
    return L.lit_kd_loss(inputs.student_logits, inputs.teacher_logits, inputs.targets, **options)


def _mimic(inputs: TermInputs, options: dict, connector) -> Tensor:
    return options["weight"] * L.mimic_loss(inputs.student_logits, inputs.teacher_logits)


def channels_last(tensor: Tensor, block_channels_last: bool | None) -> bool:
    """Whether a point's channels are its last axis: a transformer block's output (``Block.channels_last``:
    its branch is Linear layers on ``(B, N, C)`` tokens or Swin's ``(B, H, W, C)``), or, for a point that is
    not a block, a 3-d tensor (tokens).

    >>> import torch
    >>> channels_last(torch.zeros(2, 197, 192), None), channels_last(torch.zeros(2, 7, 7, 96), True)
    (True, True)
    >>> channels_last(torch.zeros(2, 64, 8, 8), False)
    False
    """
    return bool(block_channels_last) if block_channels_last is not None else tensor.ndim == 3


def _channels_first(points: Sequence[Tensor], last: Sequence[bool]) -> list[Tensor]:
    return [p.movedim(-1, 1) if cl else p for p, cl in zip(points, last)]


def _at(inputs: TermInputs, options: dict, connector) -> Tensor:
    """AT on transformer tokens is the same map with tokens as the positions (Zagoruyko & Komodakis 2017's
    f(A) = mean over channels of A², flattened and L2-normalised): channels-last points are moved to axis 1
    first, so a ViT's map is over its N tokens (class token included) and Swin's over its H×W windows."""
    return L.attention_transfer(_channels_first(inputs.student_points, inputs.student_channels_last),
                                _channels_first(inputs.teacher_points, inputs.teacher_channels_last), **options)


def _hint_connectors(setup: TermSetup) -> nn.Module:
    """One connector per point pair, on the channel axis of each: a 1×1 conv on maps, a Linear on tokens."""
    out = nn.ModuleList()
    pairs = zip(setup.student_points, setup.teacher_points, setup.student_channels_last or [False] * len(
        setup.student_points), setup.teacher_channels_last or [False] * len(setup.teacher_points), setup.student_names)
    for s, t, s_last, t_last, name in pairs:
        if s_last != t_last:
            raise DistillError(f"loss 'hint': point {name!r} has its channels on the last axis in one network and "
                               f"on axis 1 in the other ({tuple(s.shape)} vs {tuple(t.shape)}); pass points="
                               "{'hint': [...]} naming points of the same layout")
        axis = -1 if s_last else 1
        out.append(L.HintConnector(s.shape[axis], t.shape[axis], channels_last=s_last))
    return out


def _hint(inputs: TermInputs, options: dict, connector) -> Tensor:
    return options["weight"] * sum(L.hint_loss(s, t, c) for s, t, c in
                                   zip(inputs.student_points, inputs.teacher_points, connector))


class SRRLHead(HidingModule):
    """SRRL's trainable connector, with the teacher's frozen head (pool + classifier) hidden beside it.

    >>> import torch
    >>> head = SRRLHead(torch.nn.Identity(), torch.nn.Linear(4, 3))
    >>> [n for n, _ in head.named_parameters()]        # the teacher's head is not trained
    []
    """

    def __init__(self, connector: nn.Module, teacher_head: nn.Module):
        super().__init__()
        self.connector = connector
        self.teacher_head = Hidden(teacher_head)


def _srrl_head(setup: TermSetup) -> nn.Module:
    from ..sections import split_sections

    s, t = setup.student_points[0], setup.teacher_points[0]
    if s.ndim != 4 or t.ndim != 4 or any(setup.student_channels_last) or any(setup.teacher_channels_last):
        raise DistillError(f"loss 'srrl' reads a (batch, C, H, W) feature map before global pooling; this "
                           f"network's 'features' point is {tuple(s.shape)} (student) / {tuple(t.shape)} (teacher), "
                           f"transformer tokens. Losses that apply to transformers: {', '.join(TOKEN_LOSSES)}")
    head = split_sections(setup.teacher, ["penultimate"], setup.leaf_modules)[-1].eval()
    return SRRLHead(L.SRRLConnector(s.shape[1], t.shape[1]), head)


def _srrl(inputs: TermInputs, options: dict, connector: SRRLHead) -> Tensor:
    """``fm · L_FM + sr · L_SR`` (seed 004 eq. 8 without its CE, which the implied ``ce`` term adds).

    The reference's current code (jingyang2017/KD_SRRL
    ``train_imagenet_distillation.py``) is ``CE + L_FM + w · L_SR``: a plain
    number ``{"srrl": w}`` sets ``sr`` and leaves ``fm`` at 1. ``{"fm": 1,
    "sr": 0}`` is L_FM alone, ``{"fm": 0, "sr": 1}`` L_SR alone (Table 1).
    """
    fm, sr = L.srrl_losses(inputs.student_points[0], inputs.teacher_points[0], connector.teacher_head.module,
                           inputs.teacher_logits, connector.connector)
    return options["fm"] * fm + options["sr"] * sr


class LITSections(HidingModule):
    """Student sections S_2..S_k (seed 001 eq. 3), run on the teacher's IRs; shares the student's weights.

    ``section_inputs`` holds, after each call, the teacher IRs the sections were fed.

    >>> from fxswap.models import wrn
    >>> len(LITSections(wrn(10, 1), ["layer1.0", "layer2.0", "layer3.0"]).sections)
    2
    """

    def __init__(self, student: nn.Module, names: Sequence[str], leaf_modules=()):
        super().__init__()
        from ..sections import split_sections

        self.sections = tuple(Hidden(s) for s in split_sections(student, list(names), leaf_modules)[1:len(names)])
        self.section_inputs: list[Tensor] = []

    def forward(self, student_first: Tensor, teacher_irs: Sequence[Tensor]) -> list[Tensor]:
        self.section_inputs = list(teacher_irs[:-1])
        outs = [student_first]
        for hidden, ir in zip(self.sections, teacher_irs[:-1]):
            if hidden.module.training != self.training:
                hidden.module.train(self.training)
            outs.append(hidden.module(ir))
        return outs


def _lit_sections(setup: TermSetup) -> nn.Module:
    return LITSections(setup.student, setup.student_names, setup.leaf_modules)


def _lit(inputs: TermInputs, options: dict, connector: LITSections) -> Tensor:
    student_irs = connector(inputs.student_points[0], inputs.teacher_points)
    return L.lit_loss(inputs.student_logits, inputs.teacher_logits, inputs.targets, student_irs,
                      inputs.teacher_points, **options)


for _term in (
    Term("ce", _ce, replaces_ce=True, teacher=False),
    Term("kd", _kd, main="alpha", options=("alpha", "T", "reduction"), defaults={}, replaces_ce=True),
    Term("lit_kd", _lit_kd, main="alpha", options=("alpha", "T"), defaults={}, replaces_ce=True),
    Term("at", _at, points="stages", main="beta", options=("beta",), defaults={}),
    Term("mimic", _mimic, replaces_ce=True),
    Term("hint", _hint, points="stages", connector=_hint_connectors),
    Term("srrl", _srrl, points="features", connector=_srrl_head, main="sr", options=("fm", "sr"),
         defaults={"fm": 1.0, "sr": 1.0}),
    Term("lit", _lit, points="stages", connector=_lit_sections, example=False, main="beta",
         options=("beta", "T", "alpha"), defaults={}, replaces_ce=True),
):
    register_term(_term)
del _term
