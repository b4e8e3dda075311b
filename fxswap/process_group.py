"""Several processes (``torchrun``): which process this is, how many there are, and the few collectives fxswap uses.

:func:`join` finds the process group a run belongs to: the one passed in, the
default group when ``torch.distributed`` is already initialised, or, when
``torchrun`` (or any launcher) set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``, a default group it initialises itself (gloo
on CPU; NCCL on CUDA, after ``torch.cuda.set_device(LOCAL_RANK)``). A plain
``python`` run is :data:`SINGLE`: rank 0 of 1, and every helper here is then a
no-op, so the one-process path runs exactly as without them.

>>> SINGLE.rank, SINGLE.world, SINGLE.writer
(0, 1, True)
>>> join(None, torch.device("cpu")) == SINGLE   # no launcher, no group
True
>>> gather_objects({"seed": 0}, SINGLE)
[{'seed': 0}]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import FxswapError

__all__ = ["Dist", "SINGLE", "join", "gather_objects", "barrier", "launched"]

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """One process's place in a run: ``rank`` of ``world`` in ``group`` (None: the default group).

    ``writer`` is rank 0, the one process that writes files and prints.

    >>> Dist(1, 2).writer, Dist(0, 2).writer
    (False, True)
    """

    rank: int = 0
    world: int = 1
    group: Any = None
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """True on the one process that writes files, prints and shows progress (rank 0)."""
        return self.rank == 0


#: The one-process run.
SINGLE = Dist()


def launched() -> bool:
    """Whether a launcher (``torchrun``) started this process as one of several: ``WORLD_SIZE`` > 1 with
    ``RANK`` and ``LOCAL_RANK`` set.

    >>> import os
    >>> launched() == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
    True
    """
    try:
        return all(v in os.environ for v in _LAUNCH_VARS) and int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        raise FxswapError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer (torchrun sets it; unset "
                          "it to run as one process)") from None


def _init_from_env(device: torch.device) -> None:
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise FxswapError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not: start the processes with "
                          "torchrun (torchrun --nproc_per_node N -m fxswap ...), or set MASTER_ADDR and "
                          "MASTER_PORT, or unset WORLD_SIZE to run as one process")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def join(group=None, device: torch.device | None = None) -> Dist:
    """This process's :class:`Dist`: ``group``'s, the initialised default group's, or a default group
    initialised from torchrun's environment (backend by ``device``: NCCL on CUDA, gloo otherwise);
    :data:`SINGLE` when there is none, or one of a single process.

    >>> join().world
    1
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if group is not None:
        if not (dist.is_available() and dist.is_initialized()):
            raise FxswapError("process_group= was given but torch.distributed is not initialised; call "
                              "torch.distributed.init_process_group first, or leave process_group out")
        try:
            rank, world = dist.get_rank(group), dist.get_world_size(group)
        except (RuntimeError, ValueError, TypeError) as e:
            raise FxswapError(f"process_group= must be a torch.distributed ProcessGroup this process belongs "
                              f"to, got {type(group).__name__}: {e}") from None
        if rank < 0:
            raise FxswapError("this process is not a member of the process_group= passed in")
    elif dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif dist.is_available() and launched():
        _init_from_env(device)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        return SINGLE
    if world == 1:
        return SINGLE
    return Dist(rank, world, group, int(os.environ.get("LOCAL_RANK", rank)))


def gather_objects(obj: Any, where: Dist) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process).

    >>> gather_objects(3, SINGLE)
    [3]
    """
    if where.world == 1:
        return [obj]
    out: list[Any] = [None] * where.world
    dist.all_gather_object(out, obj, group=where.group)
    return out


def barrier(where: Dist) -> None:
    """Wait for every rank (nothing in one process), e.g. until rank 0 has written a file the others read.

    >>> barrier(SINGLE)
    """
    if where.world > 1:
        dist.barrier(group=where.group)
