"""The papers' optimisers and learning-rate schedules, as named presets.

A :class:`Preset` is an SGD configuration plus a schedule whose milestones are
given in the *paper's* epochs and rescaled to the length of your run, so that
``"moonshine"`` for 200 epochs decays at 60/120/160 and for 20 epochs at 6/12/16.

===================  ====  ===  ====  =================================  =====  ======  ==========================
name                 lr    mom  wd    schedule (paper epochs)            batch  cutout  source
===================  ====  ===  ====  =================================  =====  ======  ==========================
``moonshine``        0.1   0.9  5e-4  ×0.2 at 60, 120, 160 of 200        128    0       Moonshine §4.1 + ref. code
``blockswap``        0.1   0.9  5e-4  cosine to 1e-10, per epoch         128    16      BlockSwap ref. code
``blockswap-paper``  0.1   0.9  5e-4  ×0.2 every 60 epochs (60/120/180)  128    16      BlockSwap §5 text
``lit``              0.1   0.9  1e-4  ×0.1 at 60, 100, 125 of 175        32     0       LIT app. A.1 (LIT)
``lit-finetune``     0.01  0.9  1e-4  ×0.1 at 35, 55 of 75               32     0       LIT app. A.1 (KD FT)
``lit-kd``           0.1   0.9  1e-4  ×0.1 at 100, 175 of 250            32     0       LIT app. A.1 (KD)
``lit-scratch``      0.1   0.9  1e-4  ×0.1 at 100, 150 of 200            32     0       LIT app. A.1 (scratch)
``cosine``           0.1   0.9  5e-4  cosine to 0, per step              128    0       (no paper; common)
===================  ====  ===  ====  =================================  =====  ======  ==========================

Sources, checked against the reference code where there is one:

* **Moonshine** (seed 000, §4.1 "Implementation Details"): "200 epochs using SGD
  with standard momentum fixed at 0.9 with an initial learning rate of 0.1. The
  learning rate was reduced by a factor of 0.2 at the start of epochs 60, 120,
  and 160", batch 128. The paper does not state the weight decay; the reference
  BayesWatch/pytorch-moonshine ``main.py`` uses ``--weightDecay 0.0005``,
  ``--lr_decay_ratio 0.2``, ``--epoch_step [60,120,160]`` and
  ``optim.SGD(..., momentum=0.9, weight_decay=args.weightDecay)`` (no Nesterov).
* **BlockSwap** (seed 003, §5 "Implementation Details"): SGD momentum 0.9, lr
  0.1 "reduced by a factor of 5 every 60 epochs", 200 epochs, batch 128, Cutout,
  weight decay 0.0005 (``"blockswap-paper"``; Cutout of 16 pixels, as the
  reference's ``get_cifar_loaders(..., cutout=True, length=16)``). Its reference code,
  BayesWatch/pytorch-blockswap ``train.py``, instead uses
  ``CosineAnnealingLR(optimizer, args.epochs, eta_min=1e-10)`` stepped once per
  epoch, with Cutout(16) and ``--weightDecay 0.0005`` (``"blockswap"``; as
  elsewhere in fxswap, where paper and code disagree the code is the default).
* **LIT** (seed 001, appendix A.1, ResNet on CIFAR-10/100): batch 32 (also
  lit-code ``cifar10/main.py``'s ``batch_size = 32``), SGD
  momentum 0.9, weight decay 1e-4; from scratch 200 epochs ×0.1 at 100/150; KD
  250 epochs ×0.1 at 100/175; LIT 175 epochs ×0.1 at 60/100/125, then a KD
  fine-tune of 75 epochs from lr 0.01 with milestones 35/55. (The released
  stanford-futuredata/lit-code ``cifar10/main.py`` differs: ``lit_schedule =
  [100]`` and a 125-epoch fine-tune with ``finetune_schedule = [55]``; here the
  appendix's numbers are used because the code's constants do not match any
  table in the paper.)

The schedule is a :class:`~torch.optim.lr_scheduler.LambdaLR` stepped after
every optimiser step; step decays happen exactly at epoch boundaries (the
factor is a function of ``step // steps_per_epoch``), which is the same as the
references' per-epoch ``MultiStepLR``.

>>> p = get_preset("moonshine")
>>> p.milestones_for(200), p.milestones_for(20)
([60, 120, 160], [6, 12, 16])
>>> opt = p.optimizer(torch.nn.Linear(2, 2).parameters())
>>> sched = p.scheduler(opt, epochs=10, steps_per_epoch=5)
>>> [round(p.factor(e * 5, 10, 5), 4) for e in range(10)]
[1.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008]
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import DistillError

__all__ = ["Preset", "PRESETS", "get_preset", "register_preset"]


@dataclass(frozen=True)
class Preset:
    """SGD hyper-parameters and a learning-rate schedule.

    ``schedule`` is ``"step"`` (multiply by ``gamma`` at each of ``milestones``,
    given in the paper's ``paper_epochs`` and rescaled to the run),
    ``"cosine-epoch"`` (cosine from ``lr`` to ``eta_min`` over the epochs,
    constant within an epoch, as ``CosineAnnealingLR`` stepped per epoch) or
    ``"cosine"`` (the same per optimiser step). ``batch_size`` and
    ``paper_epochs`` record what the paper used, and ``cutout`` the Cutout
    size of its training augmentation (0: none); the optimiser and schedule
    do not read them — build the loaders with them (e.g.
    ``fxswap.data.cifar_loaders(path, batch_size=p.batch_size, cutout=p.cutout)``).

    >>> p = get_preset("moonshine")        # Moonshine/BlockSwap: lr 0.1, ×0.2 at epochs 60, 120, 160 of 200
    >>> p.lr, p.schedule, p.milestones, p.gamma
    (0.1, 'step', (60, 120, 160), 0.2)
    >>> p.milestones_for(10)               # the same schedule squeezed into a 10-epoch run
    [3, 6, 8]
    """

    name: str
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    paper_epochs: int = 200
    eta_min: float = 0.0
    batch_size: int = 128
    source: str = ""
    cutout: int = 0

    def __post_init__(self):
        if self.schedule not in ("step", "cosine", "cosine-epoch"):
            raise DistillError(f"preset {self.name!r}: schedule must be 'step', 'cosine' or 'cosine-epoch', "
                               f"got {self.schedule!r}")
        for field_name in ("batch_size", "cutout"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (field_name == "batch_size"):
                raise DistillError(f"preset {self.name!r}: {field_name} must be an integer >= "
                                   f"{int(field_name == 'batch_size')}, got {value!r}")

    # -- the optimiser -----------------------------------------------------
    def optimizer(self, params: Iterable[nn.Parameter], lr: float | None = None) -> torch.optim.SGD:
        """``torch.optim.SGD`` over ``params`` with this preset's settings (``lr`` overrides)."""
        return torch.optim.SGD(
            [p for p in params if p.requires_grad],
            lr=self.lr if lr is None else float(lr),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )

    # -- the schedule ------------------------------------------------------
    def milestones_for(self, epochs: int) -> list[int]:
        """The step milestones (epochs at whose start the lr drops) for a run of ``epochs``.

        Rescaled from the paper's epochs and rounded, but never before epoch 1:
        a run always starts at the preset's lr.

        >>> get_preset("lit-finetune").milestones_for(3)
        [1, 2]
        """
        return [max(1, int(round(m * epochs / self.paper_epochs))) for m in self.milestones]

    def factor(self, step: int, epochs: int, steps_per_epoch: int) -> float:
        """The lr multiplier after ``step`` optimiser steps of a run of ``epochs``."""
        steps_per_epoch = max(1, int(steps_per_epoch))
        epoch = step // steps_per_epoch
        base = self.eta_min / self.lr if self.lr else 0.0
        if self.schedule == "step":
            return self.gamma ** sum(epoch >= m for m in self.milestones_for(epochs))
        if self.schedule == "cosine-epoch":
            t, total = min(epoch, epochs), max(1, epochs)
        else:
            t, total = min(step, epochs * steps_per_epoch), max(1, epochs * steps_per_epoch)
        return base + (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * t / total))

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
        """A ``LambdaLR`` to step after every optimiser step (its state dict holds plain numbers)."""
        if epochs < 1 or steps_per_epoch < 1:
            raise DistillError(f"preset {self.name!r}: need epochs >= 1 and steps_per_epoch >= 1, "
                               f"got {epochs} and {steps_per_epoch}")

        def lr_lambda(step: int, _p=self, _e=int(epochs), _s=int(steps_per_epoch)) -> float:
            return _p.factor(step, _e, _s)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def with_(self, **changes) -> "Preset":
        """A copy with some fields changed, e.g. ``get_preset("moonshine").with_(weight_decay=1e-4)``."""
        return replace(self, **changes)


#: Name → :class:`Preset`. Add your own with :func:`register_preset`.
PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset, *, overwrite: bool = False) -> Preset:
    """Add ``preset`` to :data:`PRESETS` under ``preset.name``.

    >>> p = register_preset(Preset("tiny-example", lr=0.05, milestones=(5,), paper_epochs=10))
    >>> get_preset("tiny-example").milestones_for(20)
    [10]
    >>> del PRESETS["tiny-example"]
    """
    if preset.name in PRESETS and not overwrite:
        raise DistillError(f"a preset named {preset.name!r} exists; pass overwrite=True to replace it")
    PRESETS[preset.name] = preset
    return preset


def get_preset(preset: str | Preset) -> Preset:
    """The :class:`Preset` called ``preset`` (a :class:`Preset` is returned as is).

    >>> get_preset("lit").weight_decay
    0.0001
    """
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise DistillError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}") from None


for _p in (
    Preset("moonshine", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step", milestones=(60, 120, 160),
           gamma=0.2, paper_epochs=200, batch_size=128,
           source="Moonshine (seed 000) §4.1; weight decay from BayesWatch/pytorch-moonshine main.py"),
    Preset("blockswap", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine-epoch", eta_min=1e-10,
           paper_epochs=200, batch_size=128, cutout=16,
           source="BlockSwap (seed 003) reference BayesWatch/pytorch-blockswap train.py (CosineAnnealingLR); "
                  "utils.py get_cifar_loaders Cutout(length=16)"),
    Preset("blockswap-paper", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step", milestones=(60, 120, 180),
           gamma=0.2, paper_epochs=200, batch_size=128, cutout=16,
           source="BlockSwap (seed 003) §5 Implementation Details (Cutout)"),
    Preset("lit", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(60, 100, 125),
           gamma=0.1, paper_epochs=175, batch_size=32, source="LIT (seed 001) appendix A.1, ResNet, LIT stage"),
    Preset("lit-finetune", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(35, 55),
           gamma=0.1, paper_epochs=75, batch_size=32, source="LIT (seed 001) appendix A.1, ResNet, KD fine-tune"),
    Preset("lit-kd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(100, 175),
           gamma=0.1, paper_epochs=250, batch_size=32, source="LIT (seed 001) appendix A.1, ResNet, KD"),
    Preset("lit-scratch", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(100, 150),
           gamma=0.1, paper_epochs=200, batch_size=32, source="LIT (seed 001) appendix A.1, ResNet, from scratch"),
    Preset("urban", lr=0.004, momentum=0.9, nesterov=True, weight_decay=2e-4, schedule="cosine", eta_min=0.0,
           paper_epochs=160, batch_size=128,
           source="Urban et al. (seed 002) §2.6 and appendix 6.2-6.3: SGD with Nesterov momentum; students' lr "
                  "searched in [0.0013, 0.016] on a log scale (0.004: near its geometric middle), weight decay "
                  "2e-4; cosine in place of the paper's halve-on-plateau schedule; 160 epochs of pre-generated "
                  "data (§2.5)"),
    Preset("cosine", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", eta_min=0.0, paper_epochs=200,
           batch_size=128, source="per-step cosine annealing (no paper)"),
):
    register_preset(_p)
del _p
