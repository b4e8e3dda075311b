"""LIT: block-wise intermediate-representation training (seed 001).

Teacher and student are cut at the same stage boundaries into sections
T_1..T_k and S_1..S_k (plus the head). During training student section i is
fed the *teacher's* IR i−1 (seed 001 eq. 3), so each section learns to mimic
its teacher section in isolation, while the whole student also gets a KD loss
on its own logits (eq. 1, in the reference's form, see
:func:`fxswap.losses.lit_loss`)::

    loss = (β · KD(S(x), T(x)) + (1 − β) · Σ_i MSE(S_i(T_{i−1}), T_i)) / 2

with T_0 = x. Then a KD fine-tune stage trains the student end to end
(``Distiller(teacher, student, {"lit_kd": 0.95})``).

Works for depth-reduced students (``cheapen(teacher, {"layer1.[1-9]*": "I"})``)
and cheapened ones: the stage boundaries are the last block of each resolution
stage, found independently in each network.

>>> import torch, fxswap
>>> t = fxswap.models.cifar_resnet(20)
>>> s = fxswap.cheapen(t, {"layer*.2": "I"})
>>> lit = LITDistiller(t, s)
>>> loss, logs = lit(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
>>> sorted(logs)
['ir', 'kd', 'loss']
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .. import losses as L
from ..blocks import find_blocks
from ..errors import DistillError
from ..probes import probe
from ..sections import split_sections

__all__ = ["LITDistiller", "stage_points"]


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


class LITDistiller(nn.Module):
    """LIT training step as a module: ``lit(x, y) -> (loss, logs)``.

    ``parameters()`` yields only the student's. ``beta``, ``T``, ``alpha`` are
    the reference's ResNet/CIFAR values (lit-code ``cifar10/main.py``; seed 001
    appendix A). ``section_inputs`` holds, after each call, the tensors fed to
    student sections 2..k (the teacher's IRs; kept for inspection).

    >>> import torch, fxswap
    >>> t = fxswap.models.wrn(10, 1); s = fxswap.cheapen(t, "G(N/4)")
    >>> lit = LITDistiller(t, s)
    >>> sum(p.numel() for p in lit.parameters()) == sum(p.numel() for p in s.parameters())
    True
    >>> loss, logs = lit(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> [tuple(ir.shape) for ir in lit.section_inputs]  # teacher IRs fed to student sections 2 and 3
    [(2, 16, 8, 8), (2, 32, 4, 4)]
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, beta: float = 0.75, T: float = 6.0,
                 alpha: float = 0.95, leaf_modules=()):
        super().__init__()
        t_points, s_points = stage_points(teacher), stage_points(student)
        if len(t_points) != len(s_points):
            raise DistillError(f"LIT needs as many stages in the student as in the teacher: "
                               f"teacher {t_points}, student {s_points}")
        self.student = student
        self.beta, self.T, self.alpha = beta, T, alpha
        frozen = copy.deepcopy(teacher).eval()
        frozen.requires_grad_(False)
        self._teacher = (probe(frozen, t_points, leaf_modules).eval(),)
        self._t_names, self._s_names = t_points, s_points
        # S_1(x) comes from the student's own forward; S_2..S_k run on teacher IRs
        self._student_probe = (probe(student, s_points[:1], leaf_modules),)
        self._sections = tuple(split_sections(student, s_points, leaf_modules)[1:len(s_points)])
        self.section_inputs: list[Tensor] = []
        self.last_logits: Tensor | None = None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._teacher[0]._apply(fn)
        return self

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        mode = self.student.training
        for m in (self._student_probe[0], *self._sections):
            if m.training != mode:
                m.train(mode)
        with torch.no_grad():
            t_out, t_pts = self._teacher[0](x)
        t_irs = [t_pts[n] for n in self._t_names]
        s_out, s_first = self._student_probe[0](x)
        s_irs = [s_first[self._s_names[0]]]
        self.section_inputs = t_irs[:-1]
        s_irs += [sec(t_ir) for sec, t_ir in zip(self._sections, t_irs[:-1])]
        kd = L.lit_kd_loss(s_out, t_out, y, alpha=self.alpha, T=self.T)
        ir = L.lit_ir_loss(s_irs, t_irs)
        loss = (self.beta * kd + (1 - self.beta) * ir) / 2
        self.last_logits = s_out.detach()
        return loss, {"kd": float(kd.detach()), "ir": float(ir.detach()), "loss": float(loss.detach())}

    def finetune(self) -> nn.Module:
        """The KD fine-tune stage that follows LIT: a :class:`Distiller` with LIT's KD."""
        from .distiller import Distiller

        d = Distiller(None, self.student)
        d._teacher = self._teacher
        d.losses = {"lit_kd": {"alpha": self.alpha, "T": self.T}}
        return d
