"""FitNets' first stage: the student up to its guided layer learns the teacher's hint (Romero et al. 2015).

FitNets (Romero et al., ICLR 2015, §2.2 and Algorithm 1) trains in two
stages. Stage 1: *one* hint layer of the teacher (its middle layer) guides
*one* layer of the student (its middle layer); the student's layers up to the
guided layer, W_Guided, and a regressor r on top of them are trained alone on

    L_HT(W_Guided, W_r) = ½ ‖u_h(x; W_Hint) − r(v_g(x; W_Guided); W_r)‖²      (eq. 3)

Stage 2: the whole student, initialised from stage 1, is trained with KD
(eq. 2). :func:`fxswap.distillation.recipes.fitnets_two_stage` runs both;
:class:`HintStage` is stage 1 as a module for :func:`~fxswap.fit`.

fxswap's ``"hint"`` term is the *joint* form common in later work (a hint at
every stage output, added to CE and trained with the whole student from the
start); this module is the paper's procedure. The regressor is
:class:`fxswap.losses.HintConnector` (1×1 conv), and the loss
:func:`fxswap.losses.hint_loss` (an elementwise mean, i.e. eq. 3 up to a
constant factor) — FitNets' convolutional regressor of a larger kernel is only
needed when the spatial sizes differ, which a same-resolution cut avoids.

>>> import torch, fxswap
>>> t = fxswap.models.wrn(10, 2); s = fxswap.models.wrn(10, 1)
>>> hint_points(t, s)                               # the middle stage of each
('layer2.0', 'layer2.0')
>>> stage1 = HintStage(t, s)
>>> loss, logs = stage1(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
>>> sorted(logs)
['hint', 'loss']
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .. import losses as L
from ..errors import DistillError
from ..tracing.modes import kept_modes
from .hidden import Hidden, HidingModule
from .lit import stage_points

__all__ = ["HintStage", "hint_points"]


def hint_points(teacher: nn.Module, student: nn.Module, leaf_modules=()) -> tuple[str, str]:
    """(teacher hint point, student guided point): the output of each network's middle stage.

    FitNets picks "the middle layer of the teacher" as the hint and the
    student's middle layer as the guided layer (§2.2); here, the last block of
    the middle resolution stage (the lower middle for an even stage count).

    >>> from fxswap.models import wrn
    >>> hint_points(wrn(16, 2), wrn(10, 1))
    ('layer2.1', 'layer2.0')
    """
    t, s = stage_points(teacher), stage_points(student)
    if not t or not s:
        raise DistillError("FitNets needs residual stages in teacher and student to place the hint; pass "
                           "hint=(teacher_point, student_point) naming a block or node of each")
    return t[(len(t) - 1) // 2], s[(len(s) - 1) // 2]


class HintStage(HidingModule):
    """FitNets stage 1 as a module: ``stage(x, y) -> (loss, logs)`` with ``loss = hint_loss``.

    ``parameters()`` yields the student's layers up to the guided point (a
    section cut by :func:`fxswap.split_sections`, sharing the student's
    weights) and the regressor; nothing after the guided layer trains, and the
    teacher (a frozen copy, eval mode) only runs up to its hint. ``hint`` is
    ``(teacher_point, student_point)``, by default :func:`hint_points`. The
    features are sized once on ``example_input`` (default a 2×3×32×32 zero
    batch). ``.student`` is the whole student, as :func:`fxswap.fit` expects.

    >>> import torch, fxswap
    >>> t = fxswap.models.wrn(10, 2); s = fxswap.models.wrn(10, 1)
    >>> stage1 = HintStage(t, s)
    >>> trained = {id(p) for p in stage1.parameters()}
    >>> id(s.layer1[0].conv1.weight) in trained, id(s.layer3[0].conv1.weight) in trained, id(s.fc.weight) in trained
    (True, False, False)
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, hint: tuple[str, str] | None = None, *,
                 example_input: Tensor | None = None, leaf_modules=()):
        super().__init__()
        from ..sections import split_sections

        t_point, s_point = hint if hint is not None else hint_points(teacher, student, leaf_modules)
        frozen = copy.deepcopy(teacher).eval()
        frozen.requires_grad_(False)
        self._student = Hidden(student)
        self.guided = split_sections(student, [s_point], leaf_modules)[0]
        self._hint = Hidden(split_sections(frozen, [t_point], leaf_modules)[0].eval())
        self.points = (t_point, s_point)
        ref = next(student.parameters())
        x = example_input if example_input is not None else torch.zeros(2, 3, 32, 32, device=ref.device,
                                                                       dtype=ref.dtype)
        with kept_modes(self.guided), torch.no_grad():  # each module's own flag comes back
            s_feat = self.guided.eval()(x)
            t_feat = self._hint.module(x.to(next(frozen.parameters()).device))
        if s_feat.ndim != 4 or t_feat.ndim != 4:
            raise DistillError(f"FitNets hints are feature maps: the guided point {s_point!r} gives "
                               f"{tuple(s_feat.shape)} and the hint point {t_point!r} {tuple(t_feat.shape)}")
        self.regressor = L.HintConnector(s_feat.shape[1], t_feat.shape[1]).to(ref.device)

    @property
    def student(self) -> nn.Module:
        """The whole student (trained in place; only its layers up to the guided point change here)."""
        return self._student.module

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The hint loss (eq. 3) on one batch; ``y`` is not used (stage 1 sees no labels)."""
        with torch.no_grad():
            t_feat = self._hint.module(x)
        loss = L.hint_loss(self.guided(x), t_feat, self.regressor)
        return loss, {"hint": loss.detach(), "loss": loss.detach()}
