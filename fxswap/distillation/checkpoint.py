"""Run files: atomic writes, and checkpoints that are finite, checksummed and checked on load.

A checkpoint is a plain dict saved with ``torch.save`` and read with
``torch.load(..., weights_only=True)``. It is written only when every tensor
in it is finite (a step that blew the weights up never replaces the last good
checkpoint), carries a SHA-256 over all its contents (``"checksum"``), and is
validated on load: a flipped byte, a missing key, a wrong RNG size or a
non-list history is a :class:`~fxswap.errors.DistillError`, never a traceback
from deep inside torch.

>>> import tempfile, pathlib, torch
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write(d / "x.txt", lambda f: f.write(b"hi"))
>>> (d / "x.txt").read_text(), oct((d / "x.txt").stat().st_mode & 0o777) != "0o600"
('hi', True)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ..errors import DistillError

__all__ = ["CHECKPOINT", "HISTORY", "STUDENT", "EMA_STUDENT", "FORMAT", "atomic_write", "write_history", "checksum",
           "non_finite", "save_checkpoint", "load_checkpoint"]

#: File names inside a run's ``out_dir``.
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
#: The student's bare ``state_dict`` at the end of a run: not named ``student.pt``, the name of the
#: self-describing file that :func:`fxswap.save_student` writes and ``fxswap distill --out`` leaves one
#: folder up; this one loads with ``student.load_state_dict(torch.load(path, weights_only=True))``.
STUDENT = "student_state_dict.pt"
#: The EMA of the student (``fit(ema=...)``) at the end of a run, a bare ``state_dict`` like :data:`STUDENT`.
EMA_STUDENT = "student_ema_state_dict.pt"
#: Checkpoint layout version (2: with ``"checksum"`` and ``"lr"``).
FORMAT = 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then ``os.replace``.

    The file gets the usual permissions (0666 less the umask, typically 0644),
    not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_history(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``history`` as JSON lines, atomically."""
    text = "".join(json.dumps(h, sort_keys=False) + "\n" for h in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def _leaves(obj: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{where}/{key}")
    elif isinstance(obj, (list, tuple)):
        yield f"{where}:{type(obj).__name__}{len(obj)}", None
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{where}/{i}")
    else:
        yield where, obj


def checksum(obj: Any) -> str:
    """SHA-256 over every key, value and tensor byte of a nested dict/list (order-independent for dicts).

    >>> a = {"w": torch.ones(2), "epoch": 1}
    >>> checksum(a) == checksum({"epoch": 1, "w": torch.ones(2)}) != checksum({"w": torch.ones(2), "epoch": 2})
    True
    """
    h = hashlib.sha256()
    for where, value in _leaves(obj):
        h.update(where.encode())
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def non_finite(obj: Any) -> list[str]:
    """Where a nested dict/list holds a NaN or inf (floating tensors and floats).

    >>> non_finite({"a": torch.tensor([1.0, float("inf")]), "b": [0.5, float("nan")], "c": torch.ones(1)})
    ['/a', '/b/1']
    """
    found = []
    for where, value in _leaves(obj):
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                found.append(where)
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(where)
    return found


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` with its checksum, atomically, if every tensor in it is finite; else raise.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
    >>> save_checkpoint(p, {"student": {"w": torch.tensor([float("nan")])}})
    Traceback (most recent call last):
    ...
    fxswap.errors.DistillError: not writing ...: non-finite values in /student/w...
    """
    bad = non_finite(state)
    if bad:
        raise DistillError(f"not writing {path}: non-finite values in {', '.join(bad[:8])}"
                           f"{f' and {len(bad) - 8} more' if len(bad) > 8 else ''}; the previous checkpoint "
                           "(if any) is kept")
    data = {**state, "checksum": checksum(state)}
    atomic_write(path, lambda f: torch.save(data, f))


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "epochs": int, "steps_per_epoch": int, "seed": int, "preset": str, "lr": (int, float),
    "student": dict, "distiller": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict,
    "history": list, "checksum": str,
}


def _check_layout(ckpt: dict, path: Path) -> None:
    for key, kind in _REQUIRED.items():
        if key not in ckpt:
            raise DistillError(f"{path}: the checkpoint lacks {key!r}; it is damaged or not written by fxswap")
        value = ckpt[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DistillError(f"{path}: {key!r} is {type(value).__name__} {value!r:.60}, expected "
                               f"{getattr(kind, '__name__', 'a number')}")
    if not 0 <= ckpt["epoch"] == len(ckpt["history"]) or ckpt["epochs"] < 1 or ckpt["steps_per_epoch"] < 1:
        raise DistillError(f"{path}: inconsistent counters (epoch {ckpt['epoch']}, epochs {ckpt['epochs']}, "
                           f"{len(ckpt['history'])} history rows, {ckpt['steps_per_epoch']} steps per epoch)")
    if not all(isinstance(row, dict) for row in ckpt["history"]):
        raise DistillError(f"{path}: the history must be a list of dicts")
    for key in ("student", "distiller"):
        if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in ckpt[key].items()):
            raise DistillError(f"{path}: {key!r} must be a state dict (names → tensors)")


def _check_rng(rng: dict, path: Path) -> None:
    try:
        ok = (isinstance(rng["torch"], Tensor) and rng["torch"].dtype == torch.uint8
              and rng["numpy"]["keys"].shape == (624,) and 0 <= int(rng["numpy"]["pos"]) <= 624
              and rng["python"]["state"].shape == (625,))
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise DistillError(f"{path}: the saved RNG state is malformed (expected torch, numpy (624 keys) and "
                           "python (625 words) states)")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`fxswap.fit` (``torch.load(..., weights_only=True)``).

    Keys: ``epoch`` (epochs completed), ``epochs``, ``steps_per_epoch``, ``seed``,
    ``preset``, ``lr``, ``student`` (state dict), ``distiller`` (the distiller's
    state outside the student: connectors), ``optimizer``, ``scheduler``,
    ``scaler``, ``rng``, ``history``, ``checksum``; ``ema`` (the EMA's state dict) with ``fit(ema=...)``.

    >>> import os, tempfile, torch
    >>> from fxswap.distillation.recipes import train
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
        raise DistillError(f"cannot read the checkpoint {path} with weights_only=True: {type(e).__name__}: "
                           f"{str(e)[:300]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DistillError(f"{path} is not an fxswap training checkpoint (format {FORMAT})")
    _check_layout(ckpt, path)
    _check_rng(ckpt["rng"], path)
    stored = ckpt.pop("checksum")
    if checksum(ckpt) != stored:
        raise DistillError(f"{path}: checksum mismatch, the file is corrupt; delete it (and resume from scratch) "
                           "or restore a copy")
    return ckpt
