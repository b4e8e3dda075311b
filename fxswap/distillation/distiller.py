"""``Distiller``: teacher, student and losses in one module whose forward is the loss.

In a training loop three lines change::

    distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)   # student + connectors
    for x, y in loader:
        loss, logs = distiller(x, y)          # logs: each term as a float
        opt.zero_grad(); loss.backward(); opt.step()

Loss terms (``losses={name: weight or {kwargs}}``; see :mod:`fxswap.losses`):

=========  =====================================================================
``ce``     w · cross-entropy on the labels. Implied with w = 1 unless ``kd``,
           ``lit_kd`` or ``mimic`` is given (those carry their own label term
           or, for mimic, none: Urban et al. train on the L2 loss alone)
``kd``     Moonshine eq. 1, value α (or ``{"alpha":, "T":, "reduction":}``):
           (1−α)·CE + 2T²α·KL, reference reduction
``lit_kd`` LIT's KD (eq. 2, α on the hard term, T = 6)
``at``     Moonshine eq. 2, value β: attention transfer at the ``"stages"`` points
``mimic``  w · Urban et al. eq. 1 (L2 on logits)
``hint``   w · FitNets hint at the ``"stages"`` points, a 1×1 connector per point
``srrl``   w · (L_FM + L_SR), seed 004 eq. 8, on the ``"features"`` map with the
           teacher's frozen head (pool + classifier) and a Conv-BN-ReLU connector
=========  =====================================================================

Points are paired by name when teacher and student share them (a cheapened
student keeps its block names), else by position (WRN-16-2 from WRN-40-2).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses as L
from ..errors import DistillError
from ..probes import probe
from ..sections import split_sections

__all__ = ["Distiller"]

_POINTS = {"at": "stages", "hint": "stages", "srrl": "features"}
_KNOWN = ("ce", "kd", "lit_kd", "at", "mimic", "hint", "srrl")


def _kwargs(name: str, value: Any, main: str) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (int, float)):
        return {main: float(value)}
    raise DistillError(f"loss {name!r}: give a number or a dict of its arguments, got {type(value).__name__}")


def _pair(s: dict[str, Tensor], t: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    if s.keys() == t.keys():
        keys = list(t)
        return [s[k] for k in keys], [t[k] for k in keys]
    if len(s) != len(t):
        raise DistillError(f"student points {list(s)} and teacher points {list(t)} differ in number")
    return list(s.values()), list(t.values())


class Distiller(nn.Module):
    """Teacher + student + losses; ``distiller(x, y) -> (loss, logs)``.

    The teacher is deep-copied, frozen and kept in eval mode under
    ``torch.no_grad``: it never receives gradients, its BN statistics never
    move, and the user's teacher object is never touched.
    ``distiller.parameters()`` yields only the student's and the connectors'
    parameters; ``distiller.student`` is the plain student module (save its
    ``state_dict()``). ``teacher=None`` trains the student alone (``{"ce": 1}``).

    ``points`` overrides where a term reads features, e.g. ``{"at":
    ["layer2.*"]}``; ``example_input`` is used once to size connectors
    (default: a 2×3×32×32 zero batch).

    >>> import torch, fxswap
    >>> t = fxswap.models.wrn(10, 2)
    >>> d = Distiller(t, fxswap.cheapen(t, "G(N/4)"), {"at": 1000.0, "kd": 0.9})
    >>> loss, logs = d(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    >>> sorted(logs)
    ['at', 'kd', 'loss']
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        losses: Mapping[str, Any] | None = None,
        *,
        points: Mapping[str, Any] | None = None,
        example_input: Tensor | None = None,
        leaf_modules=(),
    ):
        super().__init__()
        losses = dict(losses or {"ce": 1.0})
        custom = {k: v for k, v in losses.items() if callable(v)}
        unknown = [k for k in losses if k not in _KNOWN and k not in custom]
        if unknown:
            raise DistillError(f"unknown loss(es) {unknown}; accepted: {', '.join(_KNOWN)}, "
                               f"or a callable fn(student_logits, teacher_logits, targets) under any name")
        if teacher is None and any(k != "ce" for k in losses):
            raise DistillError(f"losses {sorted(k for k in losses if k != 'ce')} need a teacher")
        if not ({"kd", "lit_kd", "mimic"} & losses.keys()) and "ce" not in losses:
            losses["ce"] = 1.0
        self.losses = losses
        self.student = student
        self.connectors = nn.ModuleDict()
        self.points = {k: (points or {}).get(k, _POINTS[k]) for k in losses if k in _POINTS}
        wanted = sorted({p for v in self.points.values() for p in ([v] if isinstance(v, str) else v)})
        self._student_probe = (probe(student, wanted + ["logits"], leaf_modules) if wanted else student,)
        self._teacher = None
        if teacher is not None:
            frozen = copy.deepcopy(teacher).eval()
            frozen.requires_grad_(False)
            self._teacher = (probe(frozen, wanted + ["logits"], leaf_modules).eval() if wanted else frozen,)
            if "srrl" in losses:
                head = split_sections(frozen, ["penultimate"], leaf_modules)[-1].eval()
                self._teacher_head = (head,)
        self.last_logits: Tensor | None = None
        if {"hint", "srrl"} & losses.keys():
            self._build_connectors(example_input)

    # teacher and its head live outside the module tree (no parameters(), no
    # train()), but must follow .to()/.cuda()/.half()
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for holder in ("_teacher", "_teacher_head"):
            if getattr(self, holder, None) is not None:
                getattr(self, holder)[0]._apply(fn)
        return self

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen (probed) teacher copy."""
        return self._teacher[0] if self._teacher else None

    def _features(self, x: Tensor):
        student = self._student_probe[0]
        if student.training != self.student.training:  # the probe is outside the module tree
            student.train(self.student.training)
        s = student(x)
        s_out, s_pts = s if isinstance(s, tuple) else (s, {})
        if self._teacher is None:
            return s_out, s_pts, None, {}
        with torch.no_grad():
            t = self._teacher[0](x)
        t_out, t_pts = t if isinstance(t, tuple) else (t, {})
        return s_out, s_pts, t_out, t_pts

    def _select(self, pts: dict[str, Tensor], term: str) -> dict[str, Tensor]:
        sel = self.points[term]
        sel = [sel] if isinstance(sel, str) else list(sel)
        from fnmatch import fnmatchcase

        if sel == ["stages"] or sel == ["blocks"]:
            return {k: v for k, v in pts.items() if k not in ("logits", "features", "penultimate")}
        return {k: v for k, v in pts.items() if any(fnmatchcase(k, p) for p in sel)}

    @torch.no_grad()
    def _build_connectors(self, example_input: Tensor | None) -> None:
        ref = next(self.student.parameters())
        x = example_input if example_input is not None else torch.zeros(2, 3, 32, 32, device=ref.device, dtype=ref.dtype)
        was = self.student.training
        self.student.eval()
        try:
            _, s_pts, _, t_pts = self._features(x)
        finally:
            self.student.train(was)
        if "hint" in self.losses:
            s_list, t_list = _pair(self._select(s_pts, "hint"), self._select(t_pts, "hint"))
            self.connectors["hint"] = nn.ModuleList(
                L.HintConnector(s.shape[1], t.shape[1]) for s, t in zip(s_list, t_list)).to(ref.device)
        if "srrl" in self.losses:
            s, t = s_pts["features"], t_pts["features"]
            self.connectors["srrl"] = L.SRRLConnector(s.shape[1], t.shape[1]).to(ref.device)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The total loss and ``{term: value}`` (plus ``"loss"``) for one batch."""
        s_out, s_pts, t_out, t_pts = self._features(x)
        terms: dict[str, Tensor] = {}
        for name, value in self.losses.items():
            if callable(value):
                terms[name] = value(s_out, t_out, y)
            elif name == "ce":
                terms[name] = float(value) * F.cross_entropy(s_out, y)
            elif name == "kd":
                terms[name] = L.kd_loss(s_out, t_out, y, **_kwargs(name, value, "alpha"))
            elif name == "lit_kd":
                terms[name] = L.lit_kd_loss(s_out, t_out, y, **_kwargs(name, value, "alpha"))
            elif name == "mimic":
                terms[name] = float(value) * L.mimic_loss(s_out, t_out)
            elif name == "at":
                s_list, t_list = _pair(self._select(s_pts, "at"), self._select(t_pts, "at"))
                terms[name] = L.attention_transfer(s_list, t_list, **_kwargs(name, value, "beta"))
            elif name == "hint":
                s_list, t_list = _pair(self._select(s_pts, "hint"), self._select(t_pts, "hint"))
                terms[name] = float(value) * sum(
                    L.hint_loss(s, t, c) for s, t, c in zip(s_list, t_list, self.connectors["hint"]))
            elif name == "srrl":
                fm, sr = L.srrl_losses(s_pts["features"], t_pts["features"], self._teacher_head[0], t_out,
                                       self.connectors["srrl"])
                terms[name] = float(value) * (fm + sr)
        loss = sum(terms.values())
        self.last_logits = s_out.detach()
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(loss.detach())
        return loss, logs
