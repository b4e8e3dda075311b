"""``Distiller``: teacher, student and loss terms in one module whose forward is the loss.

In a training loop three lines change::

    distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)   # student + connectors
    for x, y in loader:
        loss, logs = distiller(x, y)          # logs: each term as a detached 0-d tensor
        opt.zero_grad(); loss.backward(); opt.step()

``losses={name: weight or {options}}`` names :mod:`.terms` (``ce``, ``kd``,
``lit_kd``, ``at``, ``mimic``, ``hint``, ``srrl``, ``lit``), a loss added with
:func:`fxswap.losses.register_loss`, or maps any name to a callable
``fn(student_logits, teacher_logits, targets)``. ``ce`` (weight 1) is implied
unless a term carries its own label loss (``kd``, ``lit_kd``, ``lit``) or
replaces it (``mimic``: Urban et al. train on the L2 loss alone).

Each term resolves its own points on each network: AT reads the stage outputs
whatever a hint term reads. Points are paired by name when teacher and student
share them (a cheapened student keeps its block names), else by position
(WRN-16-2 from WRN-40-2). The logs are tensors, not floats, so a step costs no
host sync per term (the loop reduces them once per logging interval).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import DistillError
from ..tracing.modes import kept_modes
from .hidden import Hidden, HidingModule
from .terms import Term, TermInputs, TermSetup, channels_last, check_call, get_term, term_options

__all__ = ["Distiller"]


class _Resolver:
    """Point selectors → point names on one model, traced once (only if some term reads points)."""

    def __init__(self, model: nn.Module, leaf_modules):
        self.model, self.leaf_modules, self.graph = model, leaf_modules, None
        self.channels_last: dict[str, bool] = {}  # block name → its output has channels last (tokens)

    def __call__(self, selector) -> list[str]:
        from ..blocks.block import find_blocks
        from ..errors import NoBlocksError
        from ..probes import resolve_points
        from ..tracing.tracer import trace

        if self.graph is None:
            self.graph = trace(self.model, self.leaf_modules)
            try:
                self.channels_last = {b.name: b.channels_last for b in find_blocks(self.graph)}
            except NoBlocksError:
                pass
        return list(resolve_points(self.graph, selector))


def _layouts(names: list[str], tensors: list[Tensor], blocks: dict[str, bool]) -> list[bool]:
    return [channels_last(t, blocks.get(n)) for n, t in zip(names, tensors)]


def _candidate_inputs(models: list[nn.Module], ref: Tensor) -> list[Tensor]:
    """Inputs to size connectors with, the models' own first: a patch embedding's ``img_size`` (a ViT built
    at 32×32 still has a 224 config), the timm config's ``input_size``, then a CIFAR-sized 32×32 map."""
    sizes: list[tuple[int, ...]] = []
    channels = 3
    for model in models:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else channels
        for m in model.modules():
            size = getattr(m, "img_size", None)
            size = (size, size) if isinstance(size, int) else size
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
                sizes.append((channels, *size))
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            sizes.append(tuple(int(v) for v in cfg["input_size"]))
    sizes.append((channels, 32, 32))
    unique = list(dict.fromkeys(sizes))
    return [torch.zeros(2, *size, device=ref.device, dtype=ref.dtype) for size in unique]


def _paired(term: str, s_names: list[str], t_names: list[str]) -> tuple[list[str], list[str]]:
    if sorted(s_names) == sorted(t_names):
        return list(t_names), list(t_names)
    if len(s_names) != len(t_names):
        raise DistillError(f"loss {term!r}: student points {s_names} and teacher points {t_names} differ in number; "
                           "pass points={term: [...]} naming as many on each")
    return s_names, t_names


def _ordered_union(lists) -> list[str]:
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


class Distiller(HidingModule):
    """Teacher + student + loss terms; ``distiller(x, y) -> (loss, logs)``.

    The teacher is deep-copied, frozen and kept in eval mode under
    ``torch.no_grad``: it never receives gradients, its BN statistics never
    move, and the user's teacher object is never touched.
    ``distiller.parameters()`` yields only the student's and the connectors'
    parameters; ``distiller.student`` is the plain student module (save its
    ``state_dict()``). ``teacher=None`` trains the student alone (``{"ce": 1}``).

    ``points`` overrides where a term reads features, e.g. ``{"at":
    ["layer2.*"]}``; ``example_input`` is used once to size connectors
    (default: a zero batch of 2 at the models' own input size, a patch
    embedding's ``img_size`` or the timm config's ``input_size``, else
    3×32×32). Transformer features (tokens ``(B, N, C)``, Swin's
    ``(B, H, W, C)``) get ``Linear`` hint connectors over C and AT over the
    tokens; ``srrl`` refuses them (see :mod:`.terms`).

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
        self.terms: dict[str, tuple[Term, dict[str, Any]]] = {}
        for name, value in losses.items():
            term = get_term(name, value)
            self.terms[name] = (term, term_options(term, value))
            if term.fn is not None:
                check_call(term, term.fn, self.terms[name][1])
        needy = sorted(k for k, (t, _) in self.terms.items() if t.teacher)
        if teacher is None and needy:
            raise DistillError(f"losses {needy} need a teacher")
        if "ce" not in self.terms and not any(t.replaces_ce for t, _ in self.terms.values()):
            self.terms["ce"] = (get_term("ce"), {"weight": 1.0})
        self.losses = {k: opts for k, (_, opts) in self.terms.items()}
        self.student = student
        self.connectors = nn.ModuleDict()
        self.last_logits: Tensor | None = None
        self._leaf_modules = tuple(leaf_modules)
        self._plain_teacher = None
        if teacher is not None:
            frozen = copy.deepcopy(teacher).eval()
            frozen.requires_grad_(False)
            self._plain_teacher = Hidden(frozen)
        self._pick_points(dict(points or {}))
        self._build_probes()
        self._build_connectors(example_input)

    # -- set-up ------------------------------------------------------------
    def _pick_points(self, points: Mapping[str, Any]) -> None:
        unknown = sorted(set(points) - set(self.terms))
        if unknown:
            raise DistillError(f"points given for {unknown}, which are not among the losses {sorted(self.terms)}")
        self.points: dict[str, tuple[list[str], list[str]]] = {}
        on_student, on_teacher = _Resolver(self.student, self._leaf_modules), _Resolver(self.teacher, self._leaf_modules)
        for name, (term, _) in self.terms.items():
            selector = points.get(name, term.points)
            if selector is not None:
                self.points[name] = _paired(name, on_student(selector), on_teacher(selector))
        self._block_layouts = (on_student.channels_last, on_teacher.channels_last)

    def _build_probes(self) -> None:
        from ..probes import probe

        s_wanted = _ordered_union(s for s, _ in self.points.values())
        t_wanted = _ordered_union(t for _, t in self.points.values())
        self._student_probe = Hidden(probe(self.student, s_wanted, self._leaf_modules) if s_wanted else self.student)
        if self._plain_teacher is not None:
            frozen = self._plain_teacher.module
            self._teacher_probe = Hidden(probe(frozen, t_wanted, self._leaf_modules).eval() if t_wanted else frozen)

    @torch.no_grad()
    def _build_connectors(self, example_input: Tensor | None) -> None:
        wanted = {k: t for k, (t, _) in self.terms.items() if t.connector is not None}
        if not wanted:
            return
        ref = next(self.student.parameters())
        s_pts = t_pts = {}
        if any(t.example for t in wanted.values()):
            s_pts, t_pts = self._example_features(example_input, ref, sorted(wanted))
        s_blocks, t_blocks = self._block_layouts
        for name, term in wanted.items():
            s_names, t_names = self.points.get(name, ([], []))
            s_feats, t_feats = [s_pts[k] for k in s_names if k in s_pts], [t_pts[k] for k in t_names if k in t_pts]
            setup = TermSetup(self.student, self.teacher, s_names, t_names, s_feats, t_feats, self.terms[name][1],
                              self._leaf_modules, _layouts(s_names, s_feats, s_blocks),
                              _layouts(t_names, t_feats, t_blocks))
            self.connectors[name] = term.connector(setup).to(ref.device)

    def _example_features(self, example_input: Tensor | None, ref: Tensor, names: list[str]):
        """Student and teacher features on ``example_input``, or on the first candidate both models run on."""
        models = [self.student] + ([self.teacher] if self.teacher is not None else [])
        candidates = [example_input] if example_input is not None else _candidate_inputs(models, ref)
        failures = []
        with kept_modes(self.student):  # each module's own flag comes back
            self.student.eval()
            for x in candidates:
                try:
                    _, s_pts, _, t_pts = self._features(x)
                    return s_pts, t_pts
                except Exception as exc:  # any model code may refuse a size: try the next, report them all
                    failures.append(f"{tuple(x.shape)}: {type(exc).__name__}: {str(exc)[:200]}")
        raise DistillError(f"losses {names} size their connectors on one batch, and the models did not run on "
                           f"{'example_input' if example_input is not None else 'any input tried'} ("
                           f"{'; '.join(failures)}); pass example_input= a batch both models accept, "
                           "e.g. torch.randn(2, 3, 224, 224)")

    # -- the step ----------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher copy (eval mode, no gradients); ``None`` without a teacher."""
        return self._plain_teacher.module if self._plain_teacher is not None else None

    def _features(self, x: Tensor):
        student = self._student_probe.module
        if student.training != self.student.training:  # the probe is outside the module tree
            student.train(self.student.training)
        s = student(x)
        s_out, s_pts = s if isinstance(s, tuple) else (s, {})
        if self._plain_teacher is None:
            return s_out, s_pts, None, {}
        with torch.no_grad():
            t = self._teacher_probe.module(x)
        t_out, t_pts = t if isinstance(t, tuple) else (t, {})
        return s_out, s_pts, t_out, t_pts

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and ``{term: detached value}`` (plus ``"loss"``) for one batch."""
        s_out, s_pts, t_out, t_pts = self._features(x)
        values: dict[str, Tensor] = {}
        for name, (term, options) in self.terms.items():
            s_names, t_names = self.points.get(name, ([], []))
            s_feats, t_feats = [s_pts[k] for k in s_names], [t_pts[k] for k in t_names]
            inputs = TermInputs(s_out, t_out, y, s_feats, t_feats, _layouts(s_names, s_feats, self._block_layouts[0]),
                                _layouts(t_names, t_feats, self._block_layouts[1]))
            values[name] = term.call(inputs, options, self.connectors[name] if name in self.connectors else None)
        loss = sum(values.values())
        self.last_logits = s_out.detach()
        logs = {k: v.detach() for k, v in values.items()}
        logs["loss"] = loss.detach()
        return loss, logs
