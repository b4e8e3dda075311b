"""The epoch loop: :func:`fit` trains any ``distiller(x, y) -> (loss, logs)``.

A distiller is a :class:`~fxswap.Distiller` or anything with the same
interface: a module whose forward maps a batch ``(x, y)`` to the total loss and
a ``{term: value}`` dict, with the trained network at ``.student``. The recipes
(:mod:`.recipes`: ``distill``, ``train``, LIT's stages) build one and call
:func:`fit`.

What :func:`fit` does, every epoch:

1. reseeds ``random``, NumPy, torch (all devices) and the loader's generator
   with a seed derived from ``(seed, epoch)`` (:mod:`fxswap.seeding`), so an
   epoch's shuffling, augmentation and dropout depend only on the seed and the
   epoch number (validation is reseeded the same way); a loader with
   persistent workers is used through a twin with ``persistent_workers=False``
   (a persistent worker's random stream would run on across epochs);
2. trains: batches are moved with ``non_blocking=True``, the forward runs
   in the run's precision (:func:`fxswap.precision.resolve_precision`: by
   default ``"auto"``, bf16 autocast with channels_last inputs where the
   hardware computes bf16 natively, fp32 elsewhere; fp16 + ``GradScaler`` on
   a GPU without bf16), the scheduler steps after every optimiser step. Non-finite inputs
   or a non-finite loss raise :class:`~fxswap.errors.DistillError` naming the
   batch and the term(s), before the optimiser step (one host sync per step,
   on a single flag; the terms are reduced once per logging interval);
3. validates the student (:func:`.evaluation.evaluate`);
4. checks that every parameter and buffer of the student is finite, appends a
   row to the history and, with ``out_dir``, writes ``history.jsonl`` and a
   checksummed ``checkpoint.pt`` atomically (:mod:`.checkpoint`).

``resume=True`` restores the last checkpoint and carries on; an interrupted
and resumed run ends with *bit-identical* parameters to an uninterrupted one
on CPU (on CUDA also set ``torch.use_deterministic_algorithms(True)``). A new
``lr`` on resume is applied from the next step (with a warning); another preset
is refused.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from fxswap.distillation import Distiller
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> x = torch.randn(64, 3, 8, 8); y = (x[:, 0].mean((1, 2)) > 0).long()
>>> loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
>>> student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
>>> hist = fit(Distiller(None, student), loader, loader, epochs=3, preset="cosine", progress=False)
>>> [round(h["val_acc"], 2) for h in hist][-1] > 0.6, sorted(hist[0])
(True, ['epoch', 'lr', 'precision', 'seconds', 'train_acc', 'train_ce', 'train_loss', 'val_acc', 'val_loss'])

Over several processes (``torchrun``; see :mod:`fxswap.process_group`:
the group is ``process_group``, the initialised default one, or one
initialised from torchrun's environment, gloo on CPU and NCCL on CUDA with
each rank on ``cuda:LOCAL_RANK``), ``fit`` is data-parallel
(:mod:`.distributed`): each rank trains on a disjoint share of every epoch
(``batch_size`` is per process), the distiller runs in
``DistributedDataParallel``, the teacher must be identical on every rank
(checked by a checksum at the start; else a ``DistillError``), the
history's means and accuracies are over all ranks' samples (validation
over the whole validation set) and only rank 0 writes files, shows
progress and calls ``on_epoch`` and the callbacks; every rank returns the
same history (``seconds`` apart: each rank's own clock). Resuming needs
the same number of processes (recorded in the checkpoint) and ``out_dir``
on a filesystem every rank reads.
``fit(sync_batchnorm=True)`` computes the student's BatchNorm statistics over
all ranks (``torch.nn.SyncBatchNorm``, GPUs only) during the run.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import DistillError, FxswapError
from ..tracing.modes import kept_modes
from ..precision import Precision, amp_precision, resolve_precision
from ..process_group import SINGLE, Dist, barrier, join
from ..seeding import rng_state, set_rng_state
from . import distributed as ranks
from .augment import hard_labels, mix_batch, resolve_mixup
from .averaging import resolve_ema
from .callbacks import CallbackList
from .checkpoint import CHECKPOINT, EMA_STUDENT, FORMAT, HISTORY, STUDENT, atomic_write, load_checkpoint, non_finite, \
    save_checkpoint, write_history
from .evaluation import evaluation_sums, resolve_device, to_device
from .history import Meter, epoch_summary, percent
from .presets import Preset, get_preset

__all__ = ["fit"]


@dataclass
class _Run:
    """Everything one :func:`fit` call works with."""

    distiller: nn.Module
    student: nn.Module
    train_loader: Any
    val_loader: Any
    epochs: int
    steps: int
    seed: int
    preset: Preset
    lr: float
    device: torch.device
    use_amp: bool
    dtype: torch.dtype
    use_scaler: bool
    precision: Precision
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    out: Path | None
    progress: bool
    log_every: int
    stage: str | None
    on_epoch: Callable[[dict], None] | None
    callbacks: CallbackList = field(default_factory=lambda: CallbackList(None))
    where: Dist = SINGLE
    #: the module the steps call: the distiller, or its DistributedDataParallel over several processes
    stepper: nn.Module | None = None
    #: timm's Mixup applied to each training batch (:mod:`.augment`), or None
    mixer: Any = None
    #: timm's ModelEmaV3 of the student (:mod:`.averaging`), or None
    ema: Any = None


def _student_of(distiller: nn.Module) -> nn.Module:
    student = getattr(distiller, "student", None)
    if not isinstance(student, nn.Module):
        raise DistillError(f"{type(distiller).__name__} has no .student module; fit() needs a distiller with "
                           "the student at .student and forward(x, y) -> (loss, logs)")
    return student


def _steps(epochs, seed, train_loader) -> int:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise DistillError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DistillError(f"seed must be an integer >= 0, got {seed!r}")
    try:
        steps = len(train_loader)
    except TypeError:
        raise DistillError("the training loader must have a length (a map-style DataLoader)") from None
    if steps == 0:
        raise DistillError("the training loader yields no batches (empty dataset, or drop_last with too few samples)")
    return steps


def fresh_workers(loader):
    """``loader``, or a twin with ``persistent_workers=False`` when its workers persist, so that every
    epoch starts fresh workers seeded from the reseeded generator (public DataLoader API only).

    >>> from torch.utils.data import TensorDataset
    >>> dl = DataLoader(TensorDataset(torch.zeros(4)), batch_size=2)
    >>> fresh_workers(dl) is dl
    True
    """
    if not (isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0):
        return loader
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor, persistent_workers=False,
                      pin_memory_device=loader.pin_memory_device)


def _setup(distiller, train_loader, val_loader, *, epochs, preset, lr, device, precision, amp, amp_dtype, out_dir,
           seed, progress, log_every, stage, on_epoch, process_group) -> _Run:
    _steps(epochs, seed, train_loader)
    student = _student_of(distiller)
    preset_obj = get_preset(preset)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                           or lr <= 0):
        raise DistillError(f"lr must be a finite number > 0 (or None for the preset's), got {lr!r}")
    dev = resolve_device(device)
    where = join(process_group, dev)
    if where.world > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # torchrun's LOCAL_RANK, set by join
    train_loader = ranks.shard_loader(train_loader, where, seed=seed, train=True)
    val_loader = ranks.shard_loader(val_loader, where, seed=seed, train=False)
    steps = _steps(epochs, seed, train_loader)
    try:  # explicit amp= / amp_dtype= win over precision= (the older interface keeps its meaning)
        prec = (resolve_precision(precision, dev) if amp is None and amp_dtype is None
                else amp_precision(amp, amp_dtype, dev))
    except FxswapError as e:
        raise DistillError(str(e)) from None
    use_scaler = prec.scaler and dev.type == "cuda"
    distiller.to(dev)
    params = [p for p in distiller.parameters() if p.requires_grad]
    if not params:
        raise DistillError(f"{type(distiller).__name__}.parameters() has nothing to train")
    optimizer = preset_obj.optimizer(params, lr)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and where.writer:
        out.mkdir(parents=True, exist_ok=True)
    # one writer: rank 0 alone shows progress and reports each epoch (the callbacks are set in fit)
    return _Run(distiller, student, fresh_workers(train_loader), fresh_workers(val_loader), epochs, steps, seed,
                preset_obj, float(optimizer.param_groups[0]["lr"]), dev, prec.amp, prec.dtype, use_scaler, prec,
                optimizer,
                preset_obj.scheduler(optimizer, epochs, steps), torch.amp.GradScaler(dev.type, enabled=use_scaler),
                out, progress and where.writer, max(1, int(log_every)), stage, on_epoch if where.writer else None,
                where=where)


# -- resume -------------------------------------------------------------------


def _check_settings(run: _Run, ckpt: Mapping[str, Any], path: Path) -> None:
    world = ckpt.get("world_size", 1)
    if world != run.where.world:
        how = "plain python" if world == 1 else f"torchrun --nproc_per_node {world} (or as many over machines)"
        raise DistillError(f"{path} was written by a run over {world} process(es); this run has {run.where.world}. "
                           "An epoch's shares of the data and its batches depend on the number of processes: "
                           f"resume with {how}, or use a new out_dir")
    if ckpt["preset"] != run.preset.name:
        raise DistillError(f"{path} was written with preset {ckpt['preset']!r}, this run asks for "
                           f"{run.preset.name!r}; resume with preset={ckpt['preset']!r} or use a new out_dir")
    if ckpt["epochs"] != run.epochs or ckpt["steps_per_epoch"] != run.steps:
        warnings.warn(f"resuming {path} (written for {ckpt['epochs']} epochs of {ckpt['steps_per_epoch']} steps) "
                      f"with epochs={run.epochs}, {run.steps} steps per epoch: the lr schedule is recomputed for "
                      "the new length, so the run will not match an uninterrupted one", stacklevel=3)
    if ckpt["seed"] != run.seed:
        warnings.warn(f"resuming with seed={run.seed}, the checkpoint was written with seed={ckpt['seed']}",
                      stacklevel=3)


def _restore(run: _Run, ckpt: Mapping[str, Any], path: Path) -> None:
    try:
        run.student.load_state_dict(ckpt["student"])
    except RuntimeError as e:
        raise DistillError(f"{path} holds another student's weights (a different model in the same out_dir?): "
                           f"{str(e).splitlines()[0]}; use a new out_dir or drop resume") from None
    _restore_ema(run, ckpt, path)
    missing, unexpected = run.distiller.load_state_dict(ckpt["distiller"], strict=False)
    missing = [k for k in missing if not k.startswith("student.")]
    if missing or unexpected:
        raise DistillError(f"the checkpoint's distiller state does not fit this distiller: missing "
                           f"{missing}, unexpected {list(unexpected)}")
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            run.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, FxswapError) as e:
        raise DistillError(f"{path}: the optimiser, schedule or RNG state does not fit this run: {e}") from None


def _restore_ema(run: _Run, ckpt: Mapping[str, Any], path: Path) -> None:
    if run.ema is None:
        if "ema" in ckpt:
            warnings.warn(f"{path} holds an EMA of the student and this run keeps none (ema=None): it is dropped",
                          stacklevel=4)
        return
    if "ema" not in ckpt:
        raise DistillError(f"{path} was written without an EMA of the student and this run asks for one (ema=); "
                           "resume without ema, or use a new out_dir")
    run.ema.module.load_state_dict(ckpt["ema"])


def _apply_lr(run: _Run, saved_lr: float, path: Path) -> None:
    """A new initial lr on resume: rescale the schedule from the next step on, and say so."""
    if math.isclose(saved_lr, run.lr, rel_tol=1e-12):
        return
    run.scheduler.base_lrs = [run.lr for _ in run.scheduler.base_lrs]
    for group in run.optimizer.param_groups:
        group["lr"] = group["lr"] * run.lr / saved_lr
        group["initial_lr"] = run.lr
    warnings.warn(f"resuming {path} with lr={run.lr:g} (the checkpoint was trained with {saved_lr:g}): the new lr "
                  "is applied from the next step, on the same schedule", stacklevel=3)


def _resume(run: _Run) -> tuple[int, list[dict[str, Any]]]:
    if run.out is None:
        raise DistillError("resume=True needs out_dir (the folder holding checkpoint.pt)")
    path = run.out / CHECKPOINT
    if not path.exists():
        warnings.warn(f"resume=True but there is no {CHECKPOINT} in {run.out}; starting from epoch 1", stacklevel=3)
        return 0, []
    ckpt = load_checkpoint(path)
    _check_settings(run, ckpt, path)
    _restore(run, ckpt, path)
    _apply_lr(run, float(ckpt["lr"]), path)
    return ckpt["epoch"], list(ckpt["history"])


# -- one epoch ----------------------------------------------------------------


def _step_error(run: _Run, x: Tensor, loss: Tensor, logs: Mapping[str, Any], epoch: int, step: int) -> DistillError:
    where = f"epoch {epoch + 1}/{run.epochs}, step {step + 1}/{run.steps}"
    kept = (f"; the last checkpoint (end of epoch {epoch}) is in {run.out}" if run.out is not None and epoch > 0
            else "")
    if bool(torch.isfinite(loss.detach()).all()) and (not x.is_floating_point() or bool(torch.isfinite(x).all())):
        return DistillError(f"another process met a non-finite input or loss at {where} (rank {run.where.rank} did "
                            f"not; the failing rank's error names the batch and the term){kept}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        count = int((~torch.isfinite(x)).sum())
        return DistillError(f"non-finite input data at {where} (training batch {step + 1}: {count} NaN/inf "
                            f"values){kept}. Check the dataset and its transforms")
    values = {}
    for k, v in logs.items():
        try:
            values[k] = float(v)
        except (TypeError, ValueError):
            continue
    total = values.get("loss", float(loss.detach()))
    bad = {k: v for k, v in values.items() if k != "loss" and not math.isfinite(v)}
    names = ", ".join(f"{k!r} = {v}" for k, v in bad.items()) if bad else f"the total 'loss' = {total}"
    others = ", ".join(f"{k} = {v:.4g}" for k, v in values.items() if k != "loss" and k not in bad)
    return DistillError(f"non-finite loss at {where}: loss term(s) {names}" + (f" (finite terms: {others})"
                        if others else "") + f"{kept}. Lower the learning rate (resume with a new lr applies it) "
                        "or the term's weight, or turn AMP off (amp=False)")


def _optimise(run: _Run, loss: Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    with warnings.catch_warnings():
        # a GradScaler-skipped first step makes LambdaLR warn about the call order
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        run.scheduler.step()


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, float], float | None]:
    """One epoch of optimiser steps; returns the mean of each logged term and the training accuracy."""
    from tqdm.auto import tqdm

    ranks.reseed_epoch(run.seed, epoch, 0, run.train_loader, run.where)
    ranks.set_epoch(run.train_loader, epoch)
    run.distiller.train()
    meter = Meter(run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    counted = 0
    bar = tqdm(run.train_loader, total=run.steps, disable=not run.progress, leave=False, dynamic_ncols=True,
               desc=f"{run.stage + ' ' if run.stage else ''}epoch {epoch + 1}/{run.epochs}")
    with bar:
        for step, batch in enumerate(bar):
            x, y = to_device(batch, run.device)
            if run.mixer is not None:
                x, y = mix_batch(run.mixer, x, y)
            x = run.precision.inputs(x)
            try:
                with run.precision.autocast(run.device.type):
                    loss, logs = run.stepper(x, y)
            except RuntimeError as e:
                if run.precision.channels_last and "view size is not compatible" in str(e):
                    raise DistillError(f"the model cannot take channels_last inputs ({str(e).splitlines()[0]}); "
                                       f"precision={run.precision.label!r} ({run.precision.reason}) feeds them. Use "
                                       ".reshape instead of .view in the model, or pass precision='fp32'") from e
                raise
            finite = torch.isfinite(loss.detach())
            if x.is_floating_point():
                finite = finite & torch.isfinite(x).all()
            if not bool(ranks.all_finite(finite, run.where)):  # the one host sync of a step
                raise _step_error(run, x, loss, logs, epoch, step)
            _optimise(run, loss)
            if run.ema is not None:
                run.ema.update(run.student)
            n = int(y.shape[0])
            meter.add({"loss": loss.detach(), **logs} if "loss" not in logs else logs, n)
            logits = getattr(run.distiller, "last_logits", None)
            if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == n:
                correct += (logits.argmax(1) == hard_labels(y)).sum()  # soft targets: their argmax
                counted += n
            log_now = step % run.log_every == 0 or step == run.steps - 1
            # the bar also refreshes after batches 2, 4, 8, ... below log_every: a few syncs per epoch, and
            # its running loss/accuracy no longer sit on the first batch's values for log_every steps
            bar_now = run.progress and (log_now or (step < run.log_every and (step + 1) & step == 0))
            if bar_now or (log_now and run.callbacks.log_steps):
                means = meter.means()  # the one sync of a logging interval, shared by the bar and the callbacks
                if bar_now:
                    post = {"loss": f"{means['loss']:.4f}"}
                    if counted:
                        post["acc"] = percent(int(correct) / counted)
                    bar.set_postfix(post, refresh=False)
                if log_now and run.callbacks.log_steps:
                    run.callbacks.train_log({"epoch": epoch + 1, "step": step + 1,
                                             "global_step": epoch * run.steps + step + 1, "means": means})
    ranks.sync_buffers(run.distiller, run.where)
    return ranks.reduce_train(meter, correct, counted, run.where)


def _epoch_row(run: _Run, epoch: int, lr: float, means: Mapping[str, float], acc: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch + 1}
    if run.stage is not None:
        row["stage"] = run.stage
    row["lr"] = lr
    row["precision"] = run.precision.label
    row["train_loss"] = means["loss"]
    row.update((f"train_{k}", v) for k, v in means.items() if k != "loss")
    if acc is not None:
        row["train_acc"] = acc
    if run.val_loader is not None:
        # validation gets its own seed too: a random transform would otherwise depend on the epochs before
        ranks.reseed_epoch(run.seed, epoch, 1, run.val_loader, run.where)
        sums = evaluation_sums(run.student, run.val_loader, run.device, amp=run.use_amp, amp_dtype=run.dtype,
                               channels_last=run.precision.channels_last)
        v = ranks.reduce_eval(sums, run.device, run.where)
        row["val_loss"], row["val_acc"] = v["loss"], v["acc"]
        if run.ema is not None:
            ranks.reseed_epoch(run.seed, epoch, 1, run.val_loader, run.where)  # the same images as the student's
            sums = evaluation_sums(run.ema.module, run.val_loader, run.device, amp=run.use_amp, amp_dtype=run.dtype,
                                   channels_last=run.precision.channels_last)
            v = ranks.reduce_eval(sums, run.device, run.where)
            row["val_loss_ema"], row["val_acc_ema"] = v["loss"], v["acc"]
    return row


def _check_student(run: _Run, epoch: int) -> None:
    bad = non_finite(run.student.state_dict())
    if bad:
        kept = f"; the last good checkpoint (end of epoch {epoch}) is in {run.out}" if run.out and epoch else ""
        raise DistillError(f"after epoch {epoch + 1}/{run.epochs} the student holds non-finite values in "
                           f"{', '.join(b.lstrip('/') for b in bad[:6])}{' ...' if len(bad) > 6 else ''}: not "
                           f"checkpointed{kept}. Check the data for huge values, or lower the learning rate")


def _save(run: _Run, epoch: int, history: list[dict[str, Any]]) -> None:
    state = {
        "format": FORMAT, "epoch": epoch + 1, "epochs": run.epochs, "steps_per_epoch": run.steps,
        "seed": run.seed, "preset": run.preset.name, "lr": run.lr, "world_size": run.where.world,
        "student": run.student.state_dict(),
        "distiller": {k: v for k, v in run.distiller.state_dict().items() if not k.startswith("student.")},
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_scaler else {}, "rng": rng_state(), "history": history,
    }
    if run.ema is not None:
        state["ema"] = run.ema.module.state_dict()
    save_checkpoint(run.out / CHECKPOINT, state)
    write_history(run.out / HISTORY, history)


def fit(
    distiller: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int,
    preset: str | Preset = "moonshine",
    lr: float | None = None,
    device: str | torch.device | None = None,
    precision: str | Precision = "auto",
    amp: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 20,
    stage: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    callbacks: Sequence[Any] | None = None,
    process_group=None,
    sync_batchnorm: bool = False,
    mixup: Any = None,
    ema: Any = None,
) -> list[dict[str, Any]]:
    """Train ``distiller`` for ``epochs`` epochs; returns the history (one dict per epoch).

    ``distiller(x, y)`` must return ``(loss, logs)`` with ``logs`` a dict of
    0-d tensors or floats (``"loss"`` and one entry per term) and expose the
    trained network as ``distiller.student``; the optimiser runs over
    ``distiller.parameters()`` (student + connectors). If the distiller keeps
    the student's last logits in ``distiller.last_logits`` the training
    accuracy is reported too.

    ``preset``: a name in :data:`~fxswap.distillation.presets.PRESETS` or a
    :class:`~fxswap.distillation.presets.Preset` (SGD settings and lr schedule,
    milestones rescaled to ``epochs``); ``lr`` overrides its initial lr.
    ``device``: default CUDA when available; the distiller is moved there.
    ``precision``: ``"auto"`` (default), ``"fp32"`` or ``"bf16"``
    (:func:`fxswap.precision.resolve_precision`): ``"auto"`` trains in bf16
    autocast with channels_last inputs on CUDA and on CPUs with native bf16
    (``avx512_bf16``/``amx_bf16``), in fp32 elsewhere; pass ``"fp32"`` for
    results that must not depend on the machine. ``amp`` / ``amp_dtype``: the
    older switch, which wins when given: ``amp`` autocast (default on CUDA
    only) with ``amp_dtype`` (default fp16 with a ``GradScaler`` on CUDA, bf16
    on CPU), no channels_last. ``out_dir``: where
    ``history.jsonl``, ``checkpoint.pt`` (every epoch) and, at the end,
    ``student_state_dict.pt`` (the student's bare state dict) go. ``resume``: continue from
    ``out_dir/checkpoint.pt`` if it exists (else start afresh, with a warning).
    ``seed``: every epoch is reseeded from ``(seed, epoch)``. ``progress``: a
    tqdm bar per epoch, its running loss/accuracy (in %) refreshed every
    ``log_every`` steps and after batches 1, 2, 4, 8, ... before that. ``stage``: a label stored in each history row (e.g. ``"lit"``).
    ``on_epoch(row)``: called with each new history row. ``callbacks``: logging
    hooks (:mod:`.callbacks`: ``CSVLogger(path)``, ``TensorBoardLogger``,
    ``WandbLogger`` or a :class:`~.callbacks.Callback` of your own), called at
    the start, every ``log_every`` steps (those that ask), after each epoch and
    at the end.

    Over several processes (``torchrun``) ``fit`` is data-parallel: see the
    module docstring. ``sync_batchnorm=True``: the student's BatchNorm
    statistics over all ranks (GPUs only) during the run.

    ``mixup``: a ``timm.data.Mixup`` or its arguments as a dict, on every training batch (:mod:`.augment`).
    ``ema``: a decay (0.999) or a ``timm.utils.ModelEmaV3`` of the student (:mod:`.averaging`).

    Each history row has ``epoch`` (1-based), ``lr`` (at the epoch's start),
    ``precision`` (``"fp32"``, ``"bf16+channels_last"``, ...), ``train_loss``,
    ``train_<term>`` for every logged term, ``train_acc`` (if logits are available), ``val_loss`` and ``val_acc`` (with a
    ``val_loader``; ``val_loss_ema``, ``val_acc_ema`` with ``ema``), and ``seconds`` (training + validation). Accuracies are
    fractions in [0, 1] here and in ``history.jsonl``; printed, they are %.

    >>> import os, tempfile, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from fxswap.distillation import Distiller
    >>> loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     hist = fit(Distiller(None, torch.nn.Linear(4, 2)), loader, epochs=2, preset="cosine", out_dir=d, progress=False)
    ...     files = sorted(os.listdir(d))
    >>> [h["epoch"] for h in hist], files
    ([1, 2], ['checkpoint.pt', 'history.jsonl', 'student_state_dict.pt'])
    """
    hooks = CallbackList(callbacks)  # checked before any work
    if not isinstance(sync_batchnorm, bool):
        raise DistillError(f"sync_batchnorm must be True or False, got {sync_batchnorm!r}")
    run = _setup(distiller, train_loader, val_loader, epochs=epochs, preset=preset, lr=lr, device=device,
                 precision=precision, amp=amp, amp_dtype=amp_dtype, out_dir=out_dir, seed=seed, progress=progress, log_every=log_every,
                 stage=stage, on_epoch=on_epoch, process_group=process_group)
    run.callbacks = hooks if run.where.writer else CallbackList(None)
    run.mixer, run.ema = resolve_mixup(mixup, run.student), resolve_ema(ema, run.student)
    start, history = _start(run, resume)
    # every module of the distiller gets its own flag back on return (one frozen BatchNorm stays frozen)
    with kept_modes(distiller):
        with ranks.sync_batchnorm(run.student, sync_batchnorm, run.where, run.device), \
                ranks.quiet_bucket_strides(run.where):
            run.stepper = ranks.wrap(distiller, run.where, run.device, run.precision.channels_last)
            _epochs(run, start, history)
        _write_students(run)
        barrier(run.where)  # on return every rank finds rank 0's files written
    run.callbacks.fit_end(history)
    return history


def _write_students(run: _Run) -> None:
    """``out_dir``'s bare state dicts at the end: the student's and, with ``ema=``, its EMA's (rank 0 only)."""
    if run.out is None or not run.where.writer:
        return
    atomic_write(run.out / STUDENT, lambda f: torch.save(run.student.state_dict(), f))
    if run.ema is not None:
        atomic_write(run.out / EMA_STUDENT, lambda f: torch.save(run.ema.module.state_dict(), f))


def _start(run: _Run, resume: bool) -> tuple[int, list[dict[str, Any]]]:
    """The epoch to start from and the history so far; over several processes, checked the same on every rank
    (and the teacher with them)."""
    with warnings.catch_warnings():
        if not run.where.writer:
            warnings.simplefilter("ignore")  # rank 0 says it
        start, history = _resume(run) if resume else (0, [])
    if run.where.world > 1:
        teacher = getattr(run.distiller, "teacher", None)
        ranks.check_same({"teacher": ranks.digest(teacher if isinstance(teacher, nn.Module) else None),
                          "epochs": run.epochs, "steps per epoch": run.steps, "seed": run.seed, "lr": run.lr,
                          "preset": run.preset.name, "resumed epoch": start}, run.where)
    return start, history


def _epochs(run: _Run, start: int, history: list[dict[str, Any]]) -> None:
    """Epochs ``start + 1 .. run.epochs``, each appended to ``history`` (and, on rank 0, written and reported)."""
    hooks = run.callbacks
    hooks.fit_start({"epochs": run.epochs, "steps_per_epoch": run.steps, "preset": run.preset.name, "lr": run.lr,
                     "seed": run.seed, "device": str(run.device), "stage": run.stage,
                     "precision": run.precision.describe(),
                     "out_dir": None if run.out is None else str(run.out), "history": list(history)})
    writes = run.out is not None and run.where.writer
    if writes:
        write_history(run.out / HISTORY, history)
    if run.progress:  # rank 0's only (progress is off elsewhere)
        from tqdm.auto import tqdm

        tqdm.write(f"precision: {run.precision.describe()}")
    for epoch in range(start, run.epochs):
        t0 = time.perf_counter()
        lr_now = run.optimizer.param_groups[0]["lr"]
        means, acc = _train_epoch(run, epoch)
        row = _epoch_row(run, epoch, lr_now, means, acc)
        row["seconds"] = time.perf_counter() - t0
        _check_student(run, epoch)
        history.append(row)
        if writes:
            _save(run, epoch, history)
        if run.progress:
            from tqdm.auto import tqdm

            tqdm.write(epoch_summary(row, run.epochs))
        if run.on_epoch is not None:
            run.on_epoch(row)
        hooks.epoch_end(dict(row))  # a copy: a callback cannot change the history
