"""The methods as recipes: which distiller, which preset, which stages; each ends in :func:`.loop.fit`.

* :func:`distill` — a named method (``"at"``, ``"kd"``, ``"at+kd"``,
  ``"mimic"``, ``"hint"``, ``"srrl"``, ``"lit"``) or a losses dict;
* :func:`train` — the student alone with cross-entropy (the baseline);
* LIT — two stages, LIT training then a KD fine-tune (:func:`distill` with
  ``method="lit"``);
* FitNets as in the paper — two stages, one hint then KD
  (:func:`fitnets_two_stage`; ``method="hint"`` is the joint form).

>>> sorted(METHODS)
['at', 'at+kd', 'hint', 'kd', 'kd+at', 'mimic', 'srrl']
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DistillError
from ..process_group import barrier, join
from .checkpoint import STUDENT, atomic_write
from .distiller import Distiller
from .fitnets import HintStage
from .lit import LITDistiller
from .loop import fit
from .presets import Preset

__all__ = ["METHODS", "distill", "train", "distill_lit", "fitnets_two_stage"]

#: ``method`` name → the Distiller's ``losses``. The weights are the papers':
#: Moonshine §4.1 (β = 1000 for AT; α = 0.9, T = 4 for KD), Urban et al. (mimic
#: alone), FitNets' hint in its joint form (hint weight 1 at every stage + CE;
#: the paper's two stages are :func:`fitnets_two_stage`), SRRL (CE + L_FM +
#: 1·L_SR, the reference's current code). ``"lit"`` is :func:`distill_lit`.
METHODS: dict[str, dict[str, Any]] = {
    "at": {"at": 1000.0},
    "kd": {"kd": 0.9},
    "at+kd": {"at": 1000.0, "kd": 0.9},
    "kd+at": {"at": 1000.0, "kd": 0.9},
    "mimic": {"mimic": 1.0},
    "hint": {"hint": 1.0},
    "srrl": {"srrl": 1.0},
}


def train(student: nn.Module, train_loader, val_loader=None, *, epochs: int, **fit_kwargs) -> list[dict[str, Any]]:
    """Train ``student`` alone with cross-entropy (the from-scratch baseline): :func:`fit` on
    ``Distiller(None, student, {"ce": 1.0})``. ``student`` is trained in place. ``fit_kwargs`` go to
    :func:`fit` (``precision="auto"|"fp32"|"bf16"``, ``preset``, ``out_dir``, ...).

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    >>> hist = train(torch.nn.Linear(4, 2), DataLoader(data, batch_size=8), epochs=2, progress=False)
    >>> [h["epoch"] for h in hist]
    [1, 2]
    """
    return fit(Distiller(None, student, {"ce": 1.0}), train_loader, val_loader, epochs=epochs, **fit_kwargs)


def _losses(method) -> dict[str, Any] | None:
    """The losses dict ``method`` names; None for LIT."""
    if isinstance(method, str):
        key = method.strip().lower().replace(" ", "")
        if key == "lit":
            return None
        if key not in METHODS:
            raise DistillError(f"unknown method {method!r}; accepted: {', '.join(list(METHODS) + ['lit'])}, "
                               "or a losses dict such as {'at': 1000.0, 'kd': 0.9}")
        return dict(METHODS[key])
    if isinstance(method, Mapping):
        return dict(method)
    raise DistillError(f"method must be a name or a losses dict, got {type(method).__name__}")


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_loader,
    val_loader=None,
    method: str | Mapping[str, Any] = "at",
    *,
    epochs: int,
    finetune_epochs: int | None = None,
    points: Mapping[str, Any] | None = None,
    example_input: Tensor | None = None,
    **fit_kwargs,
) -> list[dict[str, Any]]:
    """Distil ``teacher`` into ``student`` (trained in place) by ``method``; returns the history.

    ``method`` is a name in :data:`METHODS` (``"at"``, ``"kd"``, ``"at+kd"``,
    ``"mimic"``, ``"hint"``, ``"srrl"``), ``"lit"`` (:func:`distill_lit`), or a
    ``losses`` dict for :class:`~fxswap.Distiller` (e.g. ``{"at": 500.0, "kd":
    {"alpha": 0.5, "T": 2}}``). ``points`` and ``example_input`` go to the
    Distiller. The remaining keyword arguments go to :func:`fit`; the default
    preset is ``"moonshine"`` (``"lit"`` for LIT).

    >>> import fxswap
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> teacher = fxswap.models.wrn(10, 1)
    >>> data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    >>> hist = distill(teacher, fxswap.cheapen(teacher, "G(N/4)"), DataLoader(data, batch_size=4),
    ...                method="at+kd", epochs=1, progress=False)
    >>> sorted(k for k in hist[0] if k.startswith("train_"))
    ['train_acc', 'train_at', 'train_kd', 'train_loss']
    """
    if teacher is None:
        raise DistillError("distill() needs a teacher; use train() to train a student alone")
    losses = _losses(method)
    lit_only = sorted(k for k in ("finetune_preset", "finetune_lr", "train_stem_and_head") if k in fit_kwargs)
    if losses is not None and lit_only:
        raise DistillError(f"{', '.join(lit_only)}: LIT's options, for method='lit' only (method is {method!r})")
    if losses is None:
        return distill_lit(teacher, student, train_loader, val_loader, epochs=epochs,
                           finetune_epochs=finetune_epochs, **fit_kwargs)
    d = Distiller(teacher, student, losses, points=points, example_input=example_input)
    fit_kwargs.setdefault("preset", "moonshine")
    return fit(d, train_loader, val_loader, epochs=epochs, **fit_kwargs)


def distill_lit(teacher: nn.Module, student: nn.Module, train_loader, val_loader=None, *, epochs: int,
                finetune_epochs: int | None = None, train_stem_and_head: bool = False,
                finetune_preset: str | Preset = "lit-finetune", finetune_lr: float | None = None,
                **fit_kwargs) -> list[dict[str, Any]]:
    """LIT's two stages (seed 001 §3, appendix A): ``epochs`` of LIT training
    (:class:`~fxswap.distillation.lit.LITDistiller`, preset ``"lit"`` unless
    ``preset=`` says otherwise), then ``finetune_epochs`` of KD fine-tuning
    (``finetune_preset``, default ``"lit-finetune"``: the appendix's lr 0.01;
    ``finetune_lr`` overrides its lr) for 75/175 of ``epochs`` unless given
    (the appendix's ratio, rounded). The stage-1 ``preset`` and ``lr`` never
    reach the fine-tune: LIT fine-tunes at a tenth of its training lr, so a
    short run on another schedule passes both, e.g. ``preset="cosine",
    finetune_preset="cosine", finetune_lr=0.01``. With
    ``out_dir`` each stage has its own sub-folder (``lit/``, ``finetune/``)
    and the final ``student_state_dict.pt`` is also written to ``out_dir``; history rows
    carry ``"stage"``. As the reference, the teacher's stem and head are
    copied into the student and held fixed in both stages;
    ``train_stem_and_head=True`` trains the student's own (see
    :class:`~fxswap.distillation.lit.LITDistiller`).

    >>> import torch, fxswap
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> teacher = fxswap.models.wrn(10, 1)
    >>> data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))), batch_size=4)
    >>> hist = distill_lit(teacher, fxswap.cheapen(teacher, "G(N/4)"), data, epochs=2, finetune_epochs=1,
    ...                    preset="cosine", finetune_preset="cosine", finetune_lr=0.01, progress=False)
    >>> [(h["stage"], h["lr"]) for h in hist]
    [('lit', 0.1), ('lit', 0.05), ('finetune', 0.01)]
    """
    if finetune_epochs is None:
        finetune_epochs = int(round(epochs * 75 / 175)) if isinstance(epochs, int) else 0
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise DistillError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
    lit = LITDistiller(teacher, student, train_stem_and_head=train_stem_and_head)
    out = fit_kwargs.pop("out_dir", None)
    stage1 = {"preset": "lit", **fit_kwargs}
    history = fit(lit, train_loader, val_loader, epochs=epochs, stage="lit",
                  out_dir=None if out is None else Path(out) / "lit", **stage1)
    if finetune_epochs > 0:
        stage2 = {k: v for k, v in fit_kwargs.items() if k not in ("preset", "lr")}
        if finetune_lr is not None:
            stage2["lr"] = finetune_lr
        history += fit(lit.finetune(), train_loader, val_loader, epochs=finetune_epochs, stage="finetune",
                       preset=finetune_preset, out_dir=None if out is None else Path(out) / "finetune", **stage2)
    _write_student(out, student, fit_kwargs.get("process_group"))
    return history


def _write_student(out, student: nn.Module, process_group) -> None:
    """The final ``out/student.pt`` of a two-stage recipe, by rank 0 alone (after :func:`fit`, the process
    group, if any, is initialised)."""
    if out is None:
        return
    where = join(process_group)
    if where.writer:
        atomic_write(Path(out) / STUDENT, lambda f: torch.save(student.state_dict(), f))
    barrier(where)


def fitnets_two_stage(teacher: nn.Module, student: nn.Module, train_loader, val_loader=None, *, hint_epochs: int,
                      epochs: int, hint: tuple[str, str] | None = None, kd: Mapping[str, Any] | float | None = None,
                      example_input: Tensor | None = None, **fit_kwargs) -> list[dict[str, Any]]:
    """FitNets as the paper trains (Romero et al. 2015, §2.2, Algorithm 1): two stages, one hint.

    Stage 1 (``hint_epochs``): the student's layers up to the guided layer
    and a regressor learn the teacher's hint alone (eq. 3,
    :class:`~fxswap.distillation.fitnets.HintStage`; ``hint =
    (teacher_point, student_point)``, default the middle stage of each).
    Stage 2 (``epochs``): KD on the whole student from there (eq. 2,
    ``{"kd": kd}``, default Moonshine's α = 0.9, T = 4; FitNets anneals its
    KD weight λ from 4 to 1, which this does not). Remaining keywords go to
    :func:`fit` for both stages (default preset ``"moonshine"``); with
    ``out_dir`` each stage writes its own sub-folder (``hint/``, ``kd/``).
    History rows carry ``"stage"``. ``distill(..., method="hint")`` is the
    joint one-stage form.

    >>> import fxswap
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> t, s = fxswap.models.wrn(10, 2), fxswap.models.wrn(10, 1)
    >>> data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))), batch_size=4)
    >>> hist = fitnets_two_stage(t, s, data, hint_epochs=1, epochs=1, progress=False)
    >>> [h["stage"] for h in hist], sorted(k for k in hist[0] if k.startswith("train_"))
    (['hint', 'kd'], ['train_hint', 'train_loss'])
    """
    if teacher is None:
        raise DistillError("fitnets_two_stage() needs a teacher")
    fit_kwargs.setdefault("preset", "moonshine")
    out = fit_kwargs.pop("out_dir", None)
    stage1 = HintStage(teacher, student, hint, example_input=example_input)
    history = fit(stage1, train_loader, val_loader, epochs=hint_epochs, stage="hint",
                  out_dir=None if out is None else Path(out) / "hint", **fit_kwargs)
    kd_losses = {"kd": 0.9 if kd is None else kd}
    history += fit(Distiller(teacher, student, kd_losses), train_loader, val_loader, epochs=epochs, stage="kd",
                   out_dir=None if out is None else Path(out) / "kd", **fit_kwargs)
    _write_student(out, student, fit_kwargs.get("process_group"))
    return history
