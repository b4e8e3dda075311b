"""A small, reproducible training loop around any ``distiller(x, y) -> (loss, logs)``.

Three entry points:

* :func:`fit` — train a :class:`~fxswap.Distiller` (or anything with
  the same interface: a module whose forward maps a batch ``(x, y)`` to the
  total loss and a ``{term: float}`` dict, with the trained network at
  ``.student``) under one of the papers' schedules (:mod:`.presets`);
* :func:`distill` — build the Distiller for a named method (``"at"``, ``"kd"``,
  ``"at+kd"``, ``"mimic"``, ``"hint"``, ``"srrl"``, ``"lit"``) and fit it;
* :func:`train` — the same loop without a teacher (the from-scratch baseline).

What the loop does, every epoch:

1. reseeds ``random``, NumPy, torch (all devices) and the loader's generator
   with a seed derived from ``(seed, epoch)``, so an epoch's shuffling,
   augmentation and dropout depend only on the seed and the epoch number
   (validation is reseeded the same way);
2. trains: batches are moved with ``non_blocking=True``, the forward runs
   under ``torch.autocast`` when ``amp`` (fp16 + ``GradScaler`` on CUDA by
   default), the scheduler steps after every optimiser step; a NaN/inf loss
   raises :class:`~fxswap.errors.DistillError` naming the term(s);
3. validates the student (eval mode, ``torch.no_grad``): cross-entropy and
   top-1 accuracy;
4. appends a row to the history and, with ``out_dir``, rewrites
   ``history.jsonl`` and ``checkpoint.pt`` *atomically* (temporary file in the
   same folder, then ``os.replace``). The checkpoint holds the student, the
   distiller's other state (connectors), optimiser, scheduler, grad scaler,
   RNG states and the history, and loads with ``torch.load(...,
   weights_only=True)``.

``resume=True`` restores the last checkpoint and carries on. Because of step 1
and the saved state, an interrupted and resumed run ends with *bit-identical*
parameters to an uninterrupted one on CPU (on CUDA also set
``torch.use_deterministic_algorithms(True)``). A loader with persistent
workers has its workers restarted every epoch for the same reason (a worker's
random stream would otherwise run on across epochs).

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
(True, ['epoch', 'lr', 'seconds', 'train_acc', 'train_ce', 'train_loss', 'val_acc', 'val_loss'])
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from .presets import Preset, get_preset

__all__ = ["fit", "distill", "train", "evaluate", "METHODS", "load_checkpoint", "format_history",
           "CHECKPOINT", "HISTORY"]

#: File names inside ``out_dir``.
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
STUDENT = "student.pt"

#: ``method`` name → the Distiller's ``losses``. The weights are the papers':
#: Moonshine §4.1 (β = 1000 for AT; α = 0.9, T = 4 for KD), Urban et al. (mimic
#: alone), FitNets (hint weight 1 + CE), SRRL (α = β = 1 + CE). ``"lit"`` is
#: handled by :class:`~fxswap.distillation.lit.LITDistiller`, see :func:`distill`.
METHODS: dict[str, dict[str, Any]] = {
    "at": {"at": 1000.0},
    "kd": {"kd": 0.9},
    "at+kd": {"at": 1000.0, "kd": 0.9},
    "kd+at": {"at": 1000.0, "kd": 0.9},
    "mimic": {"mimic": 1.0},
    "hint": {"hint": 1.0},
    "srrl": {"srrl": 1.0},
}
_FORMAT = 1


# ---------------------------------------------------------------------------
# seeding and RNG state
# ---------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int, phase: int = 0) -> int:
    """A 32-bit seed for ``epoch`` (phase 0: training, 1: validation) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(phase)]).generate_state(1)[0])


def _loader_generators(loader) -> list[torch.Generator]:
    gens = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None),
                                                                   "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def _reseed(seed: int, loader) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    for g in _loader_generators(loader):
        g.manual_seed(seed)


def _restart_persistent_workers(loader) -> None:
    # Persistent workers keep their random streams across epochs, so an epoch's
    # augmentation would depend on the epochs before it (and differ after a
    # resume). Dropping the iterator makes the next epoch start fresh workers
    # seeded from the just-reseeded generator.
    if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
        it = getattr(loader, "_iterator", None)
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()
            loader._iterator = None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_history(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(h, sort_keys=False) + "\n" for h in history)
    _atomic_write(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (``torch.load(..., weights_only=True)``).

    Keys: ``epoch`` (epochs completed), ``epochs``, ``steps_per_epoch``, ``seed``,
    ``preset``, ``student`` (state dict), ``distiller`` (the distiller's state
    outside the student: connectors), ``optimizer``, ``scheduler``, ``scaler``,
    ``rng``, ``history``.

    >>> import os, tempfile, torch
    >>> from fxswap.distillation.loop import train
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = train(torch.nn.Linear(4, 2), loader, epochs=2, out_dir=d, progress=False)
    ...     ckpt = load_checkpoint(os.path.join(d, "checkpoint.pt"))
    >>> ckpt["epoch"], sorted(ckpt["student"]), len(ckpt["history"])
    (2, ['bias', 'weight'], 2)
    """
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt / not a torch file / pickled objects
        raise DistillError(f"cannot read the checkpoint {path} with weights_only=True: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT or "student" not in ckpt:
        raise DistillError(f"{path} is not an fxswap training checkpoint (format {_FORMAT})")
    return ckpt


def _student_of(distiller: nn.Module) -> nn.Module:
    student = getattr(distiller, "student", None)
    if not isinstance(student, nn.Module):
        raise DistillError(f"{type(distiller).__name__} has no .student module; fit() needs a distiller with "
                           "the student at .student and forward(x, y) -> (loss, logs)")
    return student


def _extra_state(distiller: nn.Module) -> dict[str, Tensor]:
    """The distiller's state outside the student (connectors)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("student.")}


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device {device} was asked for but CUDA is not available; use device='cpu'")
    return device


def _batch(batch, device: torch.device) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DistillError(f"the loader must yield (inputs, targets) batches, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _logits(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise DistillError(f"the student returned {type(out).__name__}; evaluation needs logits (a tensor)")


def _amp_dtype(device: torch.device, amp_dtype) -> torch.dtype:
    if amp_dtype is not None:
        return amp_dtype
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def evaluate(model: nn.Module, loader, device=None, *, amp: bool | None = None,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "acc": top-1 accuracy}`` of ``model`` on ``loader``.

    Runs in eval mode under ``torch.no_grad`` (and ``torch.autocast`` when
    ``amp``; default: on CUDA), then restores the model's mode.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> m = torch.nn.Linear(2, 2)
    >>> with torch.no_grad(): _ = m.weight.copy_(torch.eye(2)), m.bias.zero_()
    >>> data = TensorDataset(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    >>> r = evaluate(m, DataLoader(data, batch_size=2), "cpu")
    >>> round(r["acc"], 4)
    0.6667
    """
    device = _device(device) if device is not None else next(model.parameters()).device
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    dtype = _amp_dtype(device, amp_dtype)
    was = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = _batch(batch, device)
                with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                    out = _logits(model(x))
                loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
                correct += (out.argmax(1) == y).sum()
                n += y.shape[0]
    finally:
        model.train(was)
    if n == 0:
        raise DistillError("the validation loader yielded no samples")
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n}


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


def _non_finite(loss: Tensor, logs: Mapping[str, float], epoch: int, epochs: int, step: int, steps: int,
                out_dir: Path | None) -> DistillError | None:
    values = {}
    for k, v in logs.items():
        try:
            values[k] = float(v)
        except (TypeError, ValueError):
            continue
    total = values.get("loss")
    if total is None:
        total = float(loss.detach())
    bad = {k: v for k, v in values.items() if k != "loss" and not math.isfinite(v)}
    if math.isfinite(total) and not bad:
        return None
    names = ", ".join(f"{k!r} = {v}" for k, v in bad.items()) if bad else f"the total 'loss' = {total}"
    others = ", ".join(f"{k} = {v:.4g}" for k, v in values.items() if k != "loss" and k not in bad)
    where = (f"; the last checkpoint (end of epoch {epoch}) is in {out_dir}" if out_dir is not None and epoch > 0
             else "")
    return DistillError(
        f"non-finite loss at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}: loss term(s) {names}"
        + (f" (finite terms: {others})" if others else "")
        + f"{where}. Lower the learning rate or the term's weight, or turn AMP off (amp=False)")


def fit(
    distiller: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int,
    preset: str | Preset = "moonshine",
    lr: float | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 20,
    stage: str | None = None,
) -> list[dict[str, Any]]:
    """Train ``distiller`` for ``epochs`` epochs; returns the history (one dict per epoch).

    ``distiller(x, y)`` must return ``(loss, logs)`` with ``logs`` a dict of
    floats (``"loss"`` and one entry per term) and expose the trained network
    as ``distiller.student``; the optimiser runs over
    ``distiller.parameters()`` (student + connectors). If the distiller keeps
    the student's last logits in ``distiller.last_logits`` the training
    accuracy is reported too.

    ``preset``: a name in :data:`~fxswap.distillation.presets.PRESETS` or a
    :class:`~fxswap.distillation.presets.Preset` (SGD settings and lr schedule,
    milestones rescaled to ``epochs``); ``lr`` overrides its initial lr.
    ``device``: default CUDA when available; the distiller is moved there.
    ``amp``: autocast (default on CUDA only) with ``amp_dtype`` (default fp16
    with a ``GradScaler`` on CUDA, bf16 on CPU). ``out_dir``: where
    ``history.jsonl``, ``checkpoint.pt`` (every epoch) and, at the end,
    ``student.pt`` (the student's state dict) go. ``resume``: continue from
    ``out_dir/checkpoint.pt`` if it exists (else start afresh, with a warning).
    ``seed``: every epoch is reseeded from ``(seed, epoch)``. ``progress``: a
    tqdm bar per epoch, its running loss/accuracy refreshed every ``log_every``
    steps. ``stage``: a label stored in each history row (e.g. ``"lit"``).

    Each history row has ``epoch`` (1-based), ``lr`` (at the epoch's start),
    ``train_loss``, ``train_<term>`` for every logged term, ``train_acc`` (if
    logits are available), ``val_loss`` and ``val_acc`` (with a
    ``val_loader``), and ``seconds`` (training + validation).

    >>> import os, tempfile, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from fxswap.distillation import Distiller
    >>> loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     hist = fit(Distiller(None, torch.nn.Linear(4, 2)), loader, epochs=2, preset="cosine", out_dir=d, progress=False)
    ...     files = sorted(os.listdir(d))
    >>> [h["epoch"] for h in hist], files
    ([1, 2], ['checkpoint.pt', 'history.jsonl', 'student.pt'])
    """
    from tqdm.auto import tqdm

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise DistillError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(seed, int) or seed < 0:
        raise DistillError(f"seed must be an integer >= 0, got {seed!r}")
    log_every = max(1, int(log_every))
    try:
        steps = len(train_loader)
    except TypeError:
        raise DistillError("the training loader must have a length (a map-style DataLoader)") from None
    if steps == 0:
        raise DistillError("the training loader yields no batches (empty dataset, or drop_last with too few samples)")
    student = _student_of(distiller)
    preset_obj = get_preset(preset)
    dev = _device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    dtype = _amp_dtype(dev, amp_dtype)
    use_scaler = use_amp and dev.type == "cuda" and dtype == torch.float16

    distiller.to(dev)
    params = [p for p in distiller.parameters() if p.requires_grad]
    if not params:
        raise DistillError(f"{type(distiller).__name__}.parameters() has nothing to train")
    optimizer = preset_obj.optimizer(params, lr)
    scheduler = preset_obj.scheduler(optimizer, epochs, steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    start = 0
    if resume:
        if out is None:
            raise DistillError("resume=True needs out_dir (the folder holding checkpoint.pt)")
        if (out / CHECKPOINT).exists():
            ckpt = load_checkpoint(out / CHECKPOINT)
            if ckpt["epochs"] != epochs or ckpt["steps_per_epoch"] != steps:
                warnings.warn(
                    f"resuming {out / CHECKPOINT} (written for {ckpt['epochs']} epochs of {ckpt['steps_per_epoch']} "
                    f"steps) with epochs={epochs}, {steps} steps per epoch: the lr schedule is recomputed for the new "
                    "length, so the run will not match an uninterrupted one", stacklevel=2)
            if ckpt["seed"] != seed:
                warnings.warn(f"resuming with seed={seed}, the checkpoint was written with seed={ckpt['seed']}",
                              stacklevel=2)
            student.load_state_dict(ckpt["student"])
            missing, unexpected = distiller.load_state_dict(ckpt["distiller"], strict=False)
            missing = [k for k in missing if not k.startswith("student.")]
            if missing or unexpected:
                raise DistillError(f"the checkpoint's distiller state does not fit this distiller: missing "
                                   f"{missing}, unexpected {list(unexpected)}")
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start = int(ckpt["epoch"])
            history = list(ckpt["history"])
        else:
            warnings.warn(f"resume=True but there is no {CHECKPOINT} in {out}; starting from epoch 1", stacklevel=2)
    if out is not None:
        _write_history(out / HISTORY, history)

    was_training = distiller.training
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        _reseed(_epoch_seed(seed, epoch), train_loader)
        _restart_persistent_workers(train_loader)
        distiller.train()
        lr_now = optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = {}
        seen = 0
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        counted = 0
        bar = tqdm(train_loader, total=steps, disable=not progress, leave=False, dynamic_ncols=True,
                   desc=f"{stage + ' ' if stage else ''}epoch {epoch + 1}/{epochs}")
        for step, batch in enumerate(bar):
            x, y = _batch(batch, dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=use_amp):
                loss, logs = distiller(x, y)
            err = _non_finite(loss, logs, epoch, epochs, step, steps, out)
            if err is not None:
                bar.close()
                raise err
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with warnings.catch_warnings():
                # a GradScaler-skipped first step makes LambdaLR warn about the call order
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            n = int(y.shape[0])
            if "loss" not in logs:
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            seen += n
            logits = getattr(distiller, "last_logits", None)
            if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == n:
                correct += (logits.argmax(1) == y).sum()
                counted += n
            if progress and (step % log_every == 0 or step == steps - 1):
                post = {"loss": f"{sums['loss'] / seen:.4f}"}
                if counted:
                    post["acc"] = f"{int(correct) / counted:.3f}"
                bar.set_postfix(post, refresh=False)
        bar.close()

        row: dict[str, Any] = {"epoch": epoch + 1}
        if stage is not None:
            row["stage"] = stage
        row["lr"] = lr_now
        row["train_loss"] = sums["loss"] / seen
        for k in sums:
            if k != "loss":
                row[f"train_{k}"] = sums[k] / seen
        if counted:
            row["train_acc"] = int(correct) / counted
        if val_loader is not None:
            # validation gets its own seed too: a random transform or persistent workers would otherwise
            # make the numbers depend on the epochs before
            _reseed(_epoch_seed(seed, epoch, 1), val_loader)
            _restart_persistent_workers(val_loader)
            v = evaluate(student, val_loader, dev, amp=use_amp, amp_dtype=dtype)
            row["val_loss"], row["val_acc"] = v["loss"], v["acc"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)

        if out is not None:
            state = {
                "format": _FORMAT,
                "epoch": epoch + 1,
                "epochs": epochs,
                "steps_per_epoch": steps,
                "seed": seed,
                "preset": preset_obj.name,
                "student": student.state_dict(),
                "distiller": _extra_state(distiller),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else {},
                "rng": _rng_state(),
                "history": history,
            }
            _atomic_write(out / CHECKPOINT, lambda f: torch.save(state, f))
            _write_history(out / HISTORY, history)
        if progress:
            tqdm.write(_summary(row, epochs))

    if out is not None:
        _atomic_write(out / STUDENT, lambda f: torch.save(student.state_dict(), f))
    distiller.train(was_training)
    return history


def _summary(row: Mapping[str, Any], epochs: int) -> str:
    parts = [f"{row['stage']} " if "stage" in row else "", f"epoch {row['epoch']}/{epochs}", f" lr {row['lr']:.4g}",
             f" train loss {row['train_loss']:.4f}"]
    if "train_acc" in row:
        parts.append(f" acc {row['train_acc']:.4f}")
    if "val_loss" in row:
        parts.append(f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    parts.append(f" | {row['seconds']:.1f}s")
    return "".join(parts)


def format_history(history: Sequence[Mapping[str, Any]]) -> str:
    """The history as an aligned text table (accuracies in %).

    >>> print(format_history([{"epoch": 1, "lr": 0.1, "train_loss": 2.5, "train_acc": 0.1, "seconds": 3.0}]))
    epoch  lr   train_loss  train_acc  seconds
    1      0.1  2.5000      10.00      3.0
    """
    if not history:
        return "(no epochs)"
    cols: list[str] = []
    for row in history:
        for k in row:
            if k not in cols:
                cols.append(k)

    def cell(k: str, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            if k.endswith("_acc"):
                return f"{100 * v:.2f}"
            if k == "lr":
                return f"{v:.4g}"
            if k == "seconds":
                return f"{v:.1f}"
            return f"{v:.4f}"
        return str(v)

    table = [cols] + [[cell(k, row.get(k)) for k in cols] for row in history]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def train(student: nn.Module, train_loader, val_loader=None, *, epochs: int, **fit_kwargs) -> list[dict[str, Any]]:
    """Train ``student`` alone with cross-entropy (the from-scratch baseline): :func:`fit` on
    ``Distiller(None, student, {"ce": 1.0})``. ``student`` is trained in place.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    >>> hist = train(torch.nn.Linear(4, 2), DataLoader(data, batch_size=8), epochs=2, progress=False)
    >>> [h["epoch"] for h in hist]
    [1, 2]
    """
    from .distiller import Distiller

    return fit(Distiller(None, student, {"ce": 1.0}), train_loader, val_loader, epochs=epochs, **fit_kwargs)


def _lit_distiller():
    try:
        from .lit import LITDistiller
    except ImportError as e:
        raise DistillError(f"method='lit' needs fxswap.distillation.lit.LITDistiller, which could not be imported: {e}") \
            from e
    return LITDistiller


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
    ``"mimic"``, ``"hint"``, ``"srrl"``), ``"lit"``, or a ``losses`` dict for
    :class:`~fxswap.Distiller` (e.g. ``{"at": 500.0, "kd": {"alpha":
    0.5, "T": 2}}``). ``points`` and ``example_input`` go to the Distiller.
    The remaining keyword arguments go to :func:`fit`; the default preset is
    ``"moonshine"`` (``"lit"`` for LIT).

    ``"lit"`` runs LIT's two stages (seed 001 §3, appendix A): ``epochs`` of
    LIT training (:class:`~fxswap.distillation.lit.LITDistiller`, preset ``"lit"``),
    then ``finetune_epochs`` of KD fine-tuning (preset ``"lit-finetune"``, lr
    0.01; default: 75/175 of ``epochs``, the appendix's ratio, rounded). With
    ``out_dir`` each stage has its own sub-folder (``lit/``, ``finetune/``);
    history rows carry ``"stage"``.

    >>> import torch, fxswap
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> teacher = fxswap.models.wrn(10, 1)
    >>> data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    >>> hist = distill(teacher, fxswap.cheapen(teacher, "G(N/4)"), DataLoader(data, batch_size=4),
    ...                method="at+kd", epochs=1, progress=False)
    >>> sorted(k for k in hist[0] if k.startswith("train_"))
    ['train_acc', 'train_at', 'train_kd', 'train_loss']
    """
    if epochs is None:
        raise DistillError("distill() needs epochs")
    if isinstance(method, str):
        key = method.strip().lower().replace(" ", "")
        if key == "lit":
            return _distill_lit(teacher, student, train_loader, val_loader, epochs=epochs,
                                finetune_epochs=finetune_epochs, **fit_kwargs)
        if key not in METHODS:
            raise DistillError(f"unknown method {method!r}; accepted: {', '.join(list(METHODS) + ['lit'])}, "
                               "or a losses dict such as {'at': 1000.0, 'kd': 0.9}")
        losses = dict(METHODS[key])
    elif isinstance(method, Mapping):
        losses = dict(method)
    else:
        raise DistillError(f"method must be a name or a losses dict, got {type(method).__name__}")
    if teacher is None:
        raise DistillError("distill() needs a teacher; use train() to train a student alone")
    from .distiller import Distiller

    d = Distiller(teacher, student, losses, points=points, example_input=example_input)
    fit_kwargs.setdefault("preset", "moonshine")
    return fit(d, train_loader, val_loader, epochs=epochs, **fit_kwargs)


def _distill_lit(teacher, student, train_loader, val_loader, *, epochs, finetune_epochs, **fit_kwargs):
    LITDistiller = _lit_distiller()
    lit = LITDistiller(teacher, student)
    if finetune_epochs is None:
        finetune_epochs = int(round(epochs * 75 / 175))
    out = fit_kwargs.pop("out_dir", None)
    stage1 = dict(fit_kwargs)
    stage1.setdefault("preset", "lit")
    history = fit(lit, train_loader, val_loader, epochs=epochs, stage="lit",
                  out_dir=None if out is None else Path(out) / "lit", **stage1)
    if finetune_epochs > 0:
        stage2 = {k: v for k, v in fit_kwargs.items() if k not in ("preset", "lr")}
        finetune = lit.finetune() if hasattr(lit, "finetune") else None
        if finetune is None:
            from .distiller import Distiller

            finetune = Distiller(teacher, student, {"lit_kd": {"alpha": lit.alpha, "T": lit.T}})
        history += fit(finetune, train_loader, val_loader, epochs=finetune_epochs, stage="finetune",
                       preset="lit-finetune", out_dir=None if out is None else Path(out) / "finetune", **stage2)
    return history
