"""LIT: block-wise intermediate-representation training (seed 001).

Teacher and student are cut at the same stage boundaries into sections
T_1..T_k and S_1..S_k (plus the head). During training student section i is
fed the *teacher's* IR i−1 (seed 001 eq. 3), so each section learns to mimic
its teacher section in isolation, while the whole student also gets a KD loss
on its own logits (eq. 1, in the reference's form, see
:func:`fxswap.losses.lit_loss`)::

    loss = (β · KD(S(x), T(x)) + (1 − β) · Σ_i MSE(S_i(T_{i−1}), T_i)) / 2

with T_0 the stem's output. Then a KD fine-tune stage trains the student end
to end (:meth:`LITDistiller.finetune`).

**As the reference runs it** (stanford-futuredata/lit-code ``cifar10/main.py``,
the default here): ``setup_teacher_student`` copies the teacher's stem
(``conv1``, ``bn1``) and classifier (``linear``) into the student, and
``lit_epoch`` puts the whole student in eval mode, turns ``requires_grad`` off
everywhere and back on only for the sections ``layer1..layerk``, which alone
are put in train mode. So the stem and head are the teacher's, frozen, with
the stem's BatchNorm on its running statistics; student section 1 then sees
exactly the teacher's stem output T_0 (same weights, both in eval mode), and
only the sections train. Here the *stem* is what the student runs before its
first block outside any block, the *head* everything after its last stage
boundary (for a WRN: the final BN, pooling and ``fc``); their parameters and
buffers are copied from the teacher's modules of the same names, and
``LITDistiller(...).parameters()`` leaves them out. The reference never turns
``requires_grad`` back on, so they stay fixed through its fine-tune stage too
(where ``student.train()`` lets the stem's BN statistics move again);
:meth:`LITDistiller.finetune` does the same. ``train_stem_and_head=True``
keeps the student's own stem and head and trains them with the rest (fxswap's
earlier behaviour).

:class:`LITDistiller` is a :class:`~fxswap.Distiller` with the ``"lit"`` term
(:mod:`.terms`): points ``"stages"`` on each network, the student's sections
as its connector (they share the student's weights), the call
:func:`fxswap.losses.lit_loss`.

Works for depth-reduced students (``cheapen(teacher, {"layer1.[1-9]*": "I"})``)
and cheapened ones: the stage boundaries are the last block of each resolution
stage, found independently in each network.

>>> import torch, fxswap
>>> t = fxswap.models.cifar_resnet(20)
>>> s = fxswap.cheapen(t, {"layer*.2": "I"})
>>> lit = LITDistiller(t, s)
>>> loss, logs = lit(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
>>> sorted(logs)
['lit', 'loss']
>>> lit.fixed                      # the teacher's stem and classifier, copied and frozen
('conv1', 'bn1', 'fc')
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..blocks.block import find_blocks
from ..errors import DistillError
from .distiller import Distiller

__all__ = ["LITDistiller", "stage_points", "stem_and_head"]


def stage_points(model: nn.Module) -> list[str]:
    """Names of the last block of each resolution stage (LIT's section boundaries).

    >>> from fxswap.models import cifar_resnet
    >>> stage_points(cifar_resnet(20))
    ['layer1.2', 'layer2.2', 'layer3.2']
    """
    last = {}
    for b in find_blocks(model):
        last[b.stage] = b.name
    return [last[k] for k in sorted(last)]


def stem_and_head(model: nn.Module, leaf_modules=(), *, also_blocks_of: nn.Module | None = None) -> list[str]:
    """Parameter and buffer names of ``model``'s stem and head, as LIT's reference freezes them.

    The stem: what the first section (up to the end of the first stage) holds
    outside any block; the head: everything after the last stage boundary.
    Names under a block of ``also_blocks_of`` (the teacher) count as block
    names too, so a block a depth-reduced student replaced is never taken
    for the stem.

    >>> from fxswap.models import wrn
    >>> stem_and_head(wrn(10, 1))
    ['conv1.weight', 'bn.weight', 'bn.bias', 'fc.weight', 'fc.bias', 'bn.running_mean', 'bn.running_var', \
'bn.num_batches_tracked']
    """
    from ..sections import split_sections

    points = stage_points(model)
    sections = split_sections(model, points, leaf_modules)
    blocks = [b.name for b in find_blocks(model, leaf_modules)]
    if also_blocks_of is not None:
        blocks += [b.name for b in find_blocks(also_blocks_of, leaf_modules)]
    modules = dict(model.named_modules())
    missing = sorted({b for b in blocks if b not in modules})
    if missing:
        raise DistillError(f"LIT cannot tell the stem from the blocks: block(s) {missing} are not modules of their "
                           "own; pass train_stem_and_head=True to train the student's own stem and head")

    def in_block(name: str) -> bool:
        return any(name.startswith(b + ".") for b in blocks)

    first, last = sections[0], sections[-1]
    names = [n for n, _ in first.named_parameters() if not in_block(n)]
    names += [n for n, _ in last.named_parameters() if n not in names]
    names += [n for n, _ in first.named_buffers() if not in_block(n) and n not in names]
    names += [n for n, _ in last.named_buffers() if n not in names]
    return names


def _tensor(model: nn.Module, name: str) -> Tensor | None:
    owner, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return None
    value = getattr(module, attr, None)
    return value if isinstance(value, Tensor) else None


@torch.no_grad()
def _copy_from(teacher: nn.Module, student: nn.Module, names: list[str]) -> None:
    """The reference's ``student.conv1.load_state_dict(teacher.conv1.state_dict())``, for every name."""
    for name in names:
        src, dst = _tensor(teacher, name), _tensor(student, name)
        if src is None or dst is None or src.shape != dst.shape:
            what = "is missing from the teacher" if src is None else f"is {tuple(src.shape)} in the teacher"
            raise DistillError(f"LIT copies the teacher's stem and head into the student, but {name!r} "
                               f"{what} and {tuple(dst.shape)} in the student; give the student the teacher's "
                               "stem and head, or pass train_stem_and_head=True to train its own")
        dst.copy_(src)


class _HoldsFixed:
    """A Distiller whose student has parameters held fixed: out of ``parameters()``, and, during the
    forward, not requiring gradients (so no gradient is computed for them, as with the reference's
    ``requires_grad = False``); their flags are given back after each forward."""

    _fixed_params: tuple[nn.Parameter, ...] = ()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        fixed = {id(p) for p in self._fixed_params}
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if id(p) not in fixed:
                yield name, p

    @contextlib.contextmanager
    def _no_grad_for_fixed(self):
        flags = [p.requires_grad for p in self._fixed_params]
        try:
            for p in self._fixed_params:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in zip(self._fixed_params, flags):
                p.requires_grad_(flag)

    def forward(self, x: Tensor, y: Tensor):
        """The total loss and the logs, with the fixed parameters out of the autograd graph."""
        with self._no_grad_for_fixed():
            return super().forward(x, y)


class _LITFinetune(_HoldsFixed, Distiller):
    """LIT's KD fine-tune (``lit_kd``) with the stem and head still fixed, as in the reference."""

    def __init__(self, teacher, student, losses, fixed_params, leaf_modules=()):
        super().__init__(teacher, student, losses, leaf_modules=leaf_modules)
        self._fixed_params = tuple(fixed_params)


class LITDistiller(_HoldsFixed, Distiller):
    """LIT training step as a module: ``lit(x, y) -> (loss, logs)``.

    ``beta``, ``T``, ``alpha`` are the reference's ResNet/CIFAR values
    (lit-code ``cifar10/main.py``; seed 001 appendix A). ``section_inputs``
    holds, after each call, the tensors fed to student sections 2..k (the
    teacher's IRs; kept for inspection).

    By default (as the reference, see the module docstring) the teacher's stem
    and head are copied into ``student`` (which is trained in place anyway)
    and held fixed: ``fixed`` names their modules, which stay in eval mode
    whatever ``train()`` says, and ``parameters()`` yields only the sections'
    (and any other student parameter outside the stem and head).
    ``train_stem_and_head=True`` leaves the student's stem and head as they are
    and trains every student parameter. The teacher passed in is never changed.

    >>> import torch, fxswap
    >>> t = fxswap.models.wrn(10, 1); s = fxswap.cheapen(t, "G(N/4)")
    >>> lit = LITDistiller(t, s)
    >>> torch.equal(s.conv1.weight, t.conv1.weight)          # the teacher's stem, copied
    True
    >>> trained = sum(p.numel() for p in lit.parameters())
    >>> trained == sum(p.numel() for n, p in s.named_parameters() if n.startswith("layer"))
    True
    >>> loss, logs = lit(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> [tuple(ir.shape) for ir in lit.section_inputs]  # teacher IRs fed to student sections 2 and 3
    [(2, 16, 8, 8), (2, 32, 4, 4)]
    >>> everything = LITDistiller(t, fxswap.cheapen(t, "G(N/4)"), train_stem_and_head=True)
    >>> sum(p.numel() for p in everything.parameters()) > trained
    True
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, beta: float = 0.75, T: float = 6.0,
                 alpha: float = 0.95, train_stem_and_head: bool = False, leaf_modules=()):
        t_points, s_points = stage_points(teacher), stage_points(student)
        if len(t_points) != len(s_points):
            raise DistillError(f"LIT needs as many stages in the student as in the teacher: "
                               f"teacher {t_points}, student {s_points}")
        if not isinstance(train_stem_and_head, bool):
            raise DistillError(f"train_stem_and_head must be True or False, got {train_stem_and_head!r}")
        super().__init__(teacher, student, {"lit": {"beta": beta, "T": T, "alpha": alpha}},
                         leaf_modules=leaf_modules)
        self.beta, self.T, self.alpha = beta, T, alpha
        self.train_stem_and_head = train_stem_and_head
        self.fixed: tuple[str, ...] = ()
        if not train_stem_and_head:
            names = stem_and_head(student, leaf_modules, also_blocks_of=self.teacher)
            _copy_from(self.teacher, student, names)
            params = dict(student.named_parameters())
            self._fixed_params = tuple(params[n] for n in names if n in params)
            owners = dict.fromkeys(n.rpartition(".")[0] for n in names)
            self.fixed = tuple(o for o in owners if o)  # a tensor on the root: the root itself stays in train
            self._hold_fixed_modes()

    def _hold_fixed_modes(self) -> None:
        for name in self.fixed:
            self.student.get_submodule(name).eval()

    def train(self, mode: bool = True) -> "LITDistiller":
        """``nn.Module.train``; the fixed stem and head stay in eval mode (the reference's ``student.eval()``)."""
        super().train(mode)
        self._hold_fixed_modes()
        return self

    def _features(self, x: Tensor):
        probe = self._student_probe.module
        if probe.training != self.student.training:  # the probe shares the student's modules: sync, then re-hold
            probe.train(self.student.training)
        self._hold_fixed_modes()
        return super()._features(x)

    @property
    def section_inputs(self) -> list[Tensor]:
        """The teacher IRs fed to student sections 2..k in the last call."""
        return self.connectors["lit"].section_inputs

    def finetune(self) -> Distiller:
        """The KD fine-tune stage that follows LIT: a :class:`Distiller` with LIT's KD (``lit_kd``).

        The stem and head this LIT stage held fixed stay out of its
        ``parameters()`` (the reference never sets their ``requires_grad``
        back); their modules follow ``train()`` again, as the reference's
        ``student.train()``.

        >>> import fxswap
        >>> t = fxswap.models.wrn(10, 1)
        >>> ft = LITDistiller(t, fxswap.cheapen(t, "G(N/4)")).finetune()
        >>> sorted(ft.losses), any(p is ft.student.conv1.weight for p in ft.parameters())
        (['lit_kd'], False)
        """
        return _LITFinetune(self.teacher, self.student, {"lit_kd": {"alpha": self.alpha, "T": self.T}},
                            self._fixed_params, leaf_modules=self._leaf_modules)
