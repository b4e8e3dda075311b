"""Logging hooks on :func:`~fxswap.distillation.loop.fit`: a CSV file built in, TensorBoard and W&B on request.

``fit(..., callbacks=[...])`` calls, on each callback that defines it:

* ``on_fit_start(info)`` once, before the first epoch. ``info`` holds the run's
  settings (``epochs``, ``steps_per_epoch``, ``preset``, ``lr``, ``seed``,
  ``device``, ``stage``, ``out_dir``) and ``history``: the rows restored by
  ``resume=True`` (empty otherwise), so a logger rebuilt after a restart can
  write the whole run again;
* ``on_train_log(info)`` every ``log_every`` optimiser steps, only for
  callbacks whose ``log_steps`` is true. ``info`` holds ``epoch`` (1-based),
  ``step`` (1-based within the epoch), ``global_step`` and ``means`` (the
  running means of the epoch's logged terms). The means cost one host sync per
  interval, the same one the progress bar pays; no callback adds a sync per step;
* ``on_epoch_end(row)`` with each new history row (the dict :func:`fit`
  returns in its list), after the checkpoint of that epoch is written;
* ``on_fit_end(history)`` with the whole history, when :func:`fit` returns.

A LIT run calls :func:`fit` once per stage with the same callbacks, so a
logger sees ``on_fit_start`` twice; rows carry ``"stage"``. :meth:`Callback.close`
is never called by :func:`fit` (a logger may span several fits): call it, or use
the logger as a context manager, when the run is over.

Built in: :class:`CSVLogger` (one row per epoch). :class:`TensorBoardLogger`
(``pip install tensorboard``) and :class:`WandbLogger` (``pip install wandb``)
import their package only when first used, and say which package to install
when it is missing.

>>> import os, tempfile, torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from fxswap.distillation import Distiller, fit
>>> loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
>>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
>>> hist = fit(Distiller(None, torch.nn.Linear(4, 2)), loader, loader, epochs=2, preset="cosine",
...            progress=False, callbacks=[CSVLogger(path)])
>>> print(open(path).read().splitlines()[0])
epoch,lr,precision,train_loss,train_ce,train_acc,val_loss,val_acc,seconds
>>> len(open(path).read().splitlines())  # header + one row per epoch
3
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from ..errors import DistillError, FxswapError

__all__ = ["Callback", "CSVLogger", "TensorBoardLogger", "WandbLogger", "CallbackList", "scalars"]

HOOKS = ("on_fit_start", "on_train_log", "on_epoch_end", "on_fit_end")


class Callback:
    """Base class of the hooks :func:`~fxswap.distillation.loop.fit` calls; every hook does nothing by default.

    Subclass it and override what you need (any object with one of the hook
    methods also works). Set ``log_steps = True`` to receive
    ``on_train_log`` every ``log_every`` steps.

    >>> class Printer(Callback):
    ...     def on_epoch_end(self, row):
    ...         print(f"epoch {row['epoch']}: loss {row['train_loss']:.1f}")
    >>> Printer().on_epoch_end({"epoch": 1, "train_loss": 2.0})
    epoch 1: loss 2.0
    >>> with Printer() as p:  # close() at the end of the block
    ...     pass
    """

    log_steps: bool = False

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Before the first epoch of a :func:`fit` call (``info["history"]``: rows restored on resume)."""

    def on_train_log(self, info: dict[str, Any]) -> None:
        """Every ``log_every`` steps, when ``log_steps`` is true (``epoch``, ``step``, ``global_step``, ``means``)."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """After each epoch, with its history row."""

    def on_fit_end(self, history: list[dict[str, Any]]) -> None:
        """When :func:`fit` returns, with the whole history."""

    def close(self) -> None:
        """Release files or runs; :func:`fit` never calls it (one logger may span several fits)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a history row (``epoch`` and text such as ``stage`` left out), as floats.

    >>> scalars({"epoch": 3, "stage": "lit", "lr": 0.1, "train_loss": 1.5, "flag": True})
    {'lr': 0.1, 'train_loss': 1.5}
    """
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, Real) and not isinstance(v, bool)}


class CallbackList:
    """The callbacks given to :func:`fit`, checked once and called hook by hook.

    Anything that is not an object with at least one of the hooks
    (``on_fit_start``, ``on_train_log``, ``on_epoch_end``, ``on_fit_end``) is a
    :class:`~fxswap.errors.DistillError` before training starts.

    >>> CallbackList([]).log_steps, CallbackList([CSVLogger("x.csv")]).log_steps
    (False, False)
    >>> CallbackList([print])
    Traceback (most recent call last):
    ...
    fxswap.errors.DistillError: callbacks[0] (builtin_function_or_method) has none of the hooks ...
    """

    def __init__(self, callbacks: Sequence[Any] | None):
        if callbacks is None:
            callbacks = ()
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]  # one callback given bare
        for i, cb in enumerate(callbacks):
            if isinstance(cb, type):
                raise DistillError(f"callbacks[{i}] is the class {cb.__name__}; pass an instance, e.g. "
                                   f"{cb.__name__}(...)")
            if not any(callable(getattr(cb, h, None)) for h in HOOKS):
                raise DistillError(f"callbacks[{i}] ({type(cb).__name__}) has none of the hooks "
                                   f"{', '.join(HOOKS)}; pass fxswap.distillation.callbacks.Callback subclasses "
                                   "such as CSVLogger(path) (use on_epoch=f for a plain function)")
        self.callbacks = list(callbacks)
        self.log_steps = any(getattr(cb, "log_steps", False) for cb in self.callbacks)

    def _call(self, hook: str, arg: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if callable(method) and (hook != "on_train_log" or getattr(cb, "log_steps", False)):
                method(arg)

    def fit_start(self, info: dict[str, Any]) -> None:
        """Call ``on_fit_start(info)`` on each callback."""
        self._call("on_fit_start", info)

    def train_log(self, info: dict[str, Any]) -> None:
        """Call ``on_train_log(info)`` on each callback that asked for step logs."""
        self._call("on_train_log", info)

    def epoch_end(self, row: dict[str, Any]) -> None:
        """Call ``on_epoch_end(row)`` on each callback."""
        self._call("on_epoch_end", row)

    def fit_end(self, history: list[dict[str, Any]]) -> None:
        """Call ``on_fit_end(history)`` on each callback."""
        self._call("on_fit_end", history)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # shortest text that reads back to the same float
    return "" if value is None else value


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch``, ``stage`` (LIT), ``lr``, the training loss terms, the validation
    metrics and ``seconds`` (the epoch's wall time), the columns of :func:`fit`'s history rows.

    The file is rewritten whole (atomically) after every epoch, so a column that
    appears later (LIT's fine-tune stage logs ``kd`` where the first stage logged
    ``lit``) still gets a header, and rows restored by ``resume=True`` are written
    again. Rows are keyed by ``(stage, epoch)``: resuming replaces, never
    duplicates. Floats are written at full precision (``float(cell)`` gives the
    history's value back).

    >>> import os, tempfile
    >>> log = CSVLogger(os.path.join(tempfile.mkdtemp(), "run.csv"))
    >>> log.on_epoch_end({"epoch": 1, "lr": 0.1, "train_loss": 2.5, "seconds": 1.0})
    >>> log.on_epoch_end({"epoch": 2, "lr": 0.05, "train_loss": 2.0, "val_acc": 0.5, "seconds": 1.0})
    >>> print(open(log.path).read().strip())
    epoch,lr,train_loss,val_acc,seconds
    1,0.1,2.5,,1.0
    2,0.05,2.0,0.5,1.0
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise FxswapError(f"CSVLogger writes a file; {str(self.path)!r} is a folder (give e.g. "
                              f"{str(self.path / 'log.csv')!r})")
        self.rows: dict[tuple[Any, Any], dict[str, Any]] = {}

    def on_fit_start(self, info: dict[str, Any]) -> None:
        for row in info.get("history") or ():
            self.rows[(row.get("stage"), row.get("epoch"))] = dict(row)
        if info.get("history"):
            self._write()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.rows[(row.get("stage"), row.get("epoch"))] = dict(row)
        self._write()

    def columns(self) -> list[str]:
        """The header: every key of every row, in order of first appearance (``seconds`` last)."""
        cols: list[str] = []
        for row in self.rows.values():
            cols += [k for k in row if k not in cols]
        if "seconds" in cols:
            cols.remove("seconds")
            cols.append("seconds")
        return cols

    def _write(self) -> None:
        from .checkpoint import atomic_write

        cols = self.columns()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(cols)
        for row in self.rows.values():
            writer.writerow([_csv_cell(row.get(k)) for k in cols])
        data = text.getvalue().encode("utf-8")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: f.write(data))


def _require(package: str, who: str, extra: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        pip = {"torch.utils.tensorboard": "tensorboard"}.get(package, package)
        raise FxswapError(f"{who} needs the {pip!r} package, which is not installed: pip install {pip} "
                          f"(or, in a checkout of fxswap, pip install -e '.[{extra}]')") from None


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard: every numeric entry of each epoch's row at step = epoch (counted across
    LIT's stages), and with ``log_steps=True`` the running training means every ``log_every`` steps.

    Needs the ``tensorboard`` package (``pip install tensorboard``), imported on
    the first write; or pass ``writer=``, any object with ``add_scalar(tag,
    value, step)`` (and optionally ``flush()``/``close()``), e.g. your own
    ``SummaryWriter``. Tags are ``epoch/<key>`` and ``step/<key>``; view them
    with ``tensorboard --logdir LOG_DIR``.

    >>> class Writer:  # a stand-in for SummaryWriter
    ...     def add_scalar(self, tag, value, step): print(tag, value, step)
    >>> tb = TensorBoardLogger(writer=Writer())
    >>> tb.on_epoch_end({"epoch": 1, "lr": 0.1, "train_loss": 2.0, "seconds": 1.5})
    epoch/lr 0.1 1
    epoch/train_loss 2.0 1
    epoch/seconds 1.5 1
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, writer: Any = None, log_steps: bool = False):
        if log_dir is None and writer is None:
            raise FxswapError("TensorBoardLogger needs log_dir (a folder for the event files) or writer=")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._writer = writer
        self.log_steps = bool(log_steps)
        self.epochs_logged = 0
        self._epoch_offset = 0

    @property
    def writer(self):
        """The ``SummaryWriter`` (created on first use)."""
        if self._writer is None:
            tb = _require("torch.utils.tensorboard", "TensorBoardLogger", "tensorboard")
            self._writer = tb.SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def on_fit_start(self, info: dict[str, Any]) -> None:
        self._epoch_offset = self.epochs_logged - len(info.get("history") or ())

    def on_train_log(self, info: dict[str, Any]) -> None:
        for k, v in info["means"].items():
            self.writer.add_scalar(f"step/{k}", float(v), info["global_step"])

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        step = self._epoch_offset + int(row["epoch"])
        for k, v in scalars(row).items():
            self.writer.add_scalar(f"epoch/{k}", v, step)
        self.epochs_logged = max(self.epochs_logged, step)

    def on_fit_end(self, history: list[dict[str, Any]]) -> None:
        flush = getattr(self._writer, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        close = getattr(self._writer, "close", None)
        if callable(close):
            close()


class WandbLogger(Callback):
    """Weights & Biases: each epoch's numeric entries with ``run.log`` (``epoch`` and ``stage`` included;
    W&B counts the steps), the run's settings in its config.

    Needs the ``wandb`` package (``pip install wandb``): on the first
    ``on_fit_start`` it calls ``wandb.init(project=project, **init_kwargs)``
    unless ``run=`` gives a run (any object with ``log(dict)``, and
    ``config.update(dict)``/``finish()`` if it has them). :meth:`close` finishes a
    run this logger started.

    >>> class Run:  # a stand-in for a wandb run
    ...     def log(self, data): print(data)
    >>> wb = WandbLogger(run=Run())
    >>> wb.on_epoch_end({"epoch": 1, "lr": 0.1, "train_loss": 2.0})
    {'lr': 0.1, 'train_loss': 2.0, 'epoch': 1}
    """

    def __init__(self, project: str | None = None, *, run: Any = None, log_steps: bool = False, **init_kwargs):
        self.project = project
        self.init_kwargs = init_kwargs
        self.run = run
        self._owned = False
        self.log_steps = bool(log_steps)

    def _start(self, config: dict[str, Any]) -> None:
        if self.run is None:
            wandb = _require("wandb", "WandbLogger", "wandb")
            self.run = wandb.init(project=self.project, config=config, **self.init_kwargs)
            self._owned = True
            return
        update = getattr(getattr(self.run, "config", None), "update", None)
        if callable(update):
            update(config, allow_val_change=True)

    def on_fit_start(self, info: dict[str, Any]) -> None:
        config = {k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool)) else v)
                  for k, v in info.items() if k != "history"}
        prefix = f"{info['stage']}/" if info.get("stage") else ""
        self._start({f"{prefix}{k}": v for k, v in config.items()})

    def on_train_log(self, info: dict[str, Any]) -> None:
        self.run.log({**{f"step/{k}": float(v) for k, v in info["means"].items()},
                      "global_step": info["global_step"]})

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.run is None:
            self._start({})
        data: dict[str, Any] = {**scalars(row), "epoch": row["epoch"]}
        if "stage" in row:
            data["stage"] = row["stage"]
        self.run.log(data)

    def close(self) -> None:
        if self._owned and self.run is not None:
            self.run.finish()
            self.run, self._owned = None, False
