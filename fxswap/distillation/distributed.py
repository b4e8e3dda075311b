"""What :func:`~fxswap.distillation.loop.fit` does differently over several processes (``torchrun``).

With a :class:`~fxswap.process_group.Dist` of ``world`` > 1 (see
:func:`fxswap.process_group.join`):

* each rank trains on its share of every epoch (:func:`shard_loader`: a
  ``DistributedSampler`` for a ``DataLoader``, :meth:`DeviceLoader.shard
  <fxswap.data.device.DeviceLoader.shard>` for the device pipeline) and
  validates on its share of the validation set, each image once;
* the distiller is wrapped in ``DistributedDataParallel`` (:func:`wrap`):
  student and connector gradients are averaged, rank 0's initial weights and
  buffers are everyone's;
* :func:`check_same` refuses to start when the ranks disagree on the
  teacher's weights (a SHA-256 of its state) or on the run's settings;
* the epoch's means and accuracies are reduced over the ranks, weighted by
  sample counts (:func:`reduce_train`, :func:`reduce_eval`), so every rank
  holds the same history row;
* ``sync_batchnorm=True`` makes the student's BatchNorm layers
  ``SyncBatchNorm`` for the run (:func:`sync_batchnorm`).

In one process every function here returns its input unchanged (or does
nothing), so the one-process loop is the loop it was.

>>> import torch
>>> from fxswap.process_group import SINGLE
>>> loader = [(torch.zeros(2, 1), torch.zeros(2))]
>>> shard_loader(loader, SINGLE, seed=0, train=True) is loader
True
"""
from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler, \
    SequentialSampler

from ..data.device import DeviceLoader
from ..errors import DistillError
from ..process_group import Dist, gather_objects
from ..seeding import derived_seed, epoch_seed, reseed
from .history import Meter

__all__ = ["Strided", "shard_loader", "set_epoch", "reseed_epoch", "wrap", "sync_buffers", "quiet_bucket_strides", "digest", "check_same",
           "all_finite",
           "reduce_train", "reduce_eval", "sync_batchnorm"]


class Strided(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n``: a rank's share of a validation set, each index once.

    >>> list(Strided(7, 1, 3))
    [1, 4]
    """

    def __init__(self, n: int, rank: int, world: int):
        self.indices = range(rank, n, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _dataloader_share(loader: DataLoader, where: Dist, seed: int, train: bool) -> DataLoader:
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return loader  # the user sharded it already
    if isinstance(loader.dataset, IterableDataset) or not isinstance(sampler, (RandomSampler, SequentialSampler)) \
            or loader.batch_sampler is None:
        raise DistillError(f"over {where.world} processes fit() shards a DataLoader over a map-style dataset with "
                           f"shuffle=True/False; this one has a {type(sampler).__name__}. Give it a "
                           "torch.utils.data.DistributedSampler yourself, or use shuffle=True/False")
    n = len(loader.dataset)
    if train:
        share: Sampler = DistributedSampler(loader.dataset, num_replicas=where.world, rank=where.rank,
                                            shuffle=isinstance(sampler, RandomSampler), seed=seed)
    else:
        share = Strided(n, where.rank, where.world)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=share, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=False,
                      pin_memory_device=loader.pin_memory_device)


def shard_loader(loader, where: Dist, *, seed: int, train: bool):
    """``loader``'s share for this rank: every rank sees a disjoint 1/world of each epoch, together all of it.

    A ``DataLoader`` gets a ``DistributedSampler`` (shuffled with ``seed`` and the epoch when the loader
    shuffled; padded so that every rank steps as often) for training and a :class:`Strided` sampler for
    validation (each image once); a loader that already has a ``DistributedSampler`` is kept. A
    :class:`~fxswap.data.device.DeviceLoader` is :meth:`~fxswap.data.device.DeviceLoader.shard`-ed. None stays
    None; anything else is a :class:`~fxswap.errors.DistillError` over several processes.

    >>> from torch.utils.data import TensorDataset
    >>> from fxswap.process_group import Dist
    >>> dl = DataLoader(TensorDataset(torch.arange(5.0)), batch_size=2)
    >>> [b[0].tolist() for b in shard_loader(dl, Dist(1, 2), seed=0, train=False)]
    [[1.0, 3.0]]
    """
    if where.world == 1 or loader is None:
        return loader
    if isinstance(loader, DeviceLoader):
        return loader.shard(where.rank, where.world, even=train)
    if isinstance(loader, DataLoader):
        return _dataloader_share(loader, where, seed, train)
    raise DistillError(f"over {where.world} processes fit() needs a torch DataLoader or an fxswap DeviceLoader to "
                       f"give each rank its share of the data, got {type(loader).__name__}")


def set_epoch(loader, epoch: int) -> None:
    """Tell a ``DistributedSampler`` the epoch (its shuffle depends on it); nothing for other loaders.

    >>> set_epoch([], 3)
    """
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def reseed_epoch(seed: int, epoch: int, phase: int, loader, where: Dist) -> None:
    """:func:`fxswap.seeding.reseed` for ``(seed, epoch, phase)``; over several processes each rank gets its
    own stream (dropout, a DataLoader's workers' augmentations), while a sharded
    :class:`~fxswap.data.device.DeviceLoader`'s generator is seeded alike on every rank (one shared
    permutation).

    >>> from fxswap.process_group import SINGLE
    >>> reseed_epoch(0, 1, 0, None, SINGLE); a = torch.rand(1); reseed_epoch(0, 1, 0, None, SINGLE)
    >>> bool(a == torch.rand(1))
    True
    """
    shared = epoch_seed(seed, epoch, phase)
    if where.world == 1:
        reseed(shared, loader)
        return
    reseed(epoch_seed(derived_seed(seed, "rank", where.rank), epoch, phase), loader)
    if isinstance(loader, DeviceLoader):
        loader.generator.manual_seed(shared)


def wrap(distiller: nn.Module, where: Dist, device: torch.device, channels_last: bool = False) -> nn.Module:
    """``distiller`` in ``DistributedDataParallel`` over ``where``'s group (``distiller`` itself in one
    process). DDP copies rank 0's parameters and buffers to every rank now and averages the gradients of
    ``distiller.parameters()`` (student and connectors; the teacher is not among them) at every backward.
    ``channels_last`` (the run's inputs are): the trained 4-d weights take that layout first, so that their
    gradients match DDP's buckets (else DDP warns on every run that the strides differ and copies).

    >>> from fxswap.process_group import SINGLE
    >>> m = nn.Linear(2, 2); wrap(m, SINGLE, torch.device("cpu")) is m
    True
    """
    if where.world == 1:
        return distiller
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    # parameters in the tree that distiller.parameters() leaves out (LIT's fixed stem and head) get no
    # gradient; DDP would wait for them forever
    trained = {id(p) for p in distiller.parameters()}
    untrained = [f"{name}.{pname}" for name, m in distiller.named_modules()
                 for pname, p in m.named_parameters(recurse=False) if id(p) not in trained]
    if untrained:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, untrained)
    if channels_last:
        with torch.no_grad():
            for p in distiller.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
    return DistributedDataParallel(distiller, device_ids=ids, process_group=where.group)


@contextlib.contextmanager
def quiet_bucket_strides(where: Dist) -> Iterator[None]:
    """Over several processes with channels_last inputs, DDP notes on every run that a 1×1 conv's gradient
    strides differ from its bucket's (a 1×1 weight is both NCHW- and NHWC-contiguous, so no layout of the
    weight avoids it; DDP copies that one gradient): the note is hidden while the loop runs, nothing else is.

    >>> from fxswap.process_group import SINGLE
    >>> with quiet_bucket_strides(SINGLE): pass
    """
    if where.world == 1:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        yield


def sync_buffers(module: nn.Module, where: Dist) -> None:
    """Rank 0's buffers (BatchNorm statistics) for every rank. DDP sends them before each forward, so after
    an epoch's last step each rank holds its own batch's update; from here on (validation, the checkpoint,
    the returned student) every rank holds rank 0's.

    >>> from fxswap.process_group import SINGLE
    >>> sync_buffers(nn.BatchNorm1d(2), SINGLE)
    """
    if where.world == 1:
        return
    src = 0 if where.group is None else dist.get_global_rank(where.group, 0)
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src, group=where.group)


def digest(module: nn.Module | None) -> str | None:
    """A SHA-256 over ``module``'s state dict (names, dtypes, shapes, bytes); None for None.

    >>> digest(nn.Linear(2, 2)) != digest(nn.Linear(2, 2)), digest(None)
    (True, None)
    """
    if module is None:
        return None
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_same(facts: Mapping[str, Any], where: Dist) -> None:
    """Raise a :class:`~fxswap.errors.DistillError` on every rank unless all ranks hold the same ``facts``
    (the teacher's :func:`digest`, epochs, seed, steps per epoch, ...): a rank with another teacher would
    otherwise distil from its own, silently.

    >>> from fxswap.process_group import SINGLE
    >>> check_same({"teacher": "ab"}, SINGLE)
    """
    everyone = gather_objects(dict(facts), where)
    for key in facts:
        values = [f.get(key) for f in everyone]
        if any(v != values[0] for v in values):
            odd = [r for r, v in enumerate(values) if v != values[0]]
            if key == "teacher":
                raise DistillError(f"the teacher differs between the processes (rank(s) {odd} hold other weights "
                                   "than rank 0): every rank must load the same teacher (the same checkpoint, "
                                   "or the same seed before building it), or each would distil from its own")
            raise DistillError(f"the processes disagree on {key}: {values} (by rank); start every rank with the "
                               "same arguments and data")


def all_finite(flag: Tensor, where: Dist) -> Tensor:
    """``flag`` (a bool tensor) and-ed over the ranks, so that every rank stops at the same step.

    >>> from fxswap.process_group import SINGLE
    >>> all_finite(torch.tensor(True), SINGLE)
    tensor(True)
    """
    if where.world == 1:
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=where.group)
    return t.bool()


def reduce_train(meter: Meter, correct: Tensor, counted: int, where: Dist) -> tuple[dict[str, float], float | None]:
    """The epoch's ``(means, accuracy)`` over every rank's samples (one ``all_reduce``).

    >>> from fxswap.process_group import SINGLE
    >>> m = Meter(torch.device("cpu")); m.add({"loss": 2.0}, 4)
    >>> reduce_train(m, torch.tensor(3), 4, SINGLE)
    ({'loss': 2.0}, 0.75)
    """
    if where.world == 1:
        return meter.means(), (int(correct) / counted if counted else None)
    keys = list(meter.sums)
    count = torch.tensor([float(meter.count), float(correct), float(counted)], dtype=torch.float64,
                         device=meter.device)
    packed = torch.cat([torch.stack([meter.sums[k] for k in keys]) if keys else count[:0], count])
    dist.all_reduce(packed, group=where.group)
    total, right, seen = packed[-3:].tolist()
    means = dict(zip(keys, (packed[:-3] / total).tolist())) if total else {}
    return means, (right / seen if seen else None)


def reduce_eval(sums: tuple[float, int, int], device: torch.device, where: Dist) -> dict[str, float]:
    """``{"loss", "acc"}`` over the whole validation set from each rank's ``(loss sum, correct, count)``.

    >>> from fxswap.process_group import SINGLE
    >>> reduce_eval((3.0, 1, 2), torch.device("cpu"), SINGLE)
    {'loss': 1.5, 'acc': 0.5}
    """
    loss, correct, n = sums
    if where.world > 1:
        t = torch.tensor([loss, float(correct), float(n)], dtype=torch.float64, device=device)
        dist.all_reduce(t, group=where.group)
        loss, correct, n = t[0].item(), int(t[1].item()), int(t[2].item())
    if n == 0:
        raise DistillError("the validation loader yielded no samples")
    return {"loss": float(loss) / n, "acc": int(correct) / n}


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextlib.contextmanager
def sync_batchnorm(student: nn.Module, enabled: bool, where: Dist, device: torch.device):
    """Within the block, the student's ``BatchNorm1d/2d/3d`` layers compute their batch statistics over
    every rank (``torch.nn.SyncBatchNorm``); afterwards they are their own class again.

    The layers change class in place (the same objects, parameters and buffers), so the probes the
    distiller built over the student use them too, and the student's module tree is as it was after the
    run. A BatchNorm subclass of another library (with its own forward) is left alone. In one process
    there is nothing to synchronise and nothing changes; torch synchronises BatchNorm on GPUs only, so
    CPU training over several processes with ``enabled`` is an error.

    >>> from fxswap.process_group import SINGLE
    >>> m = nn.Sequential(nn.BatchNorm2d(3))
    >>> with sync_batchnorm(m, True, SINGLE, torch.device("cpu")):
    ...     type(m[0]).__name__
    'BatchNorm2d'
    """
    if not isinstance(enabled, bool):
        raise DistillError(f"sync_batchnorm must be True or False, got {enabled!r}")
    if not enabled or where.world == 1:
        yield
        return
    if device.type == "cpu":
        raise DistillError("sync_batchnorm=True needs GPUs: torch's SyncBatchNorm synchronises CUDA tensors "
                           "only; train on CPU without it (each rank normalises by its own batch)")
    layers = [(m, type(m)) for m in student.modules() if type(m) in _PLAIN_BN]
    try:
        for m, _ in layers:
            m.__class__ = nn.SyncBatchNorm
            m.process_group = where.group
        yield
    finally:
        for m, cls in layers:
            m.__class__ = cls
            del m.process_group
