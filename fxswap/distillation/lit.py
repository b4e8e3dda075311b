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
"""
from __future__ import annotations

from torch import Tensor, nn

from ..blocks import find_blocks
from ..errors import DistillError
from .distiller import Distiller

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


class LITDistiller(Distiller):
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
        t_points, s_points = stage_points(teacher), stage_points(student)
        if len(t_points) != len(s_points):
            raise DistillError(f"LIT needs as many stages in the student as in the teacher: "
                               f"teacher {t_points}, student {s_points}")
        super().__init__(teacher, student, {"lit": {"beta": beta, "T": T, "alpha": alpha}},
                         leaf_modules=leaf_modules)
        self.beta, self.T, self.alpha = beta, T, alpha

    @property
    def section_inputs(self) -> list[Tensor]:
        """The teacher IRs fed to student sections 2..k in the last call."""
        return self.connectors["lit"].section_inputs

    def finetune(self) -> Distiller:
        """The KD fine-tune stage that follows LIT: a :class:`Distiller` with LIT's KD (``lit_kd``)."""
        return Distiller(self.teacher, self.student, {"lit_kd": {"alpha": self.alpha, "T": self.T}},
                         leaf_modules=self._leaf_modules)
