"""A device-resident CIFAR pipeline: the uint8 images live on the device, augmentation runs per batch there.

:func:`fxswap.data.cifar_loaders` augments one image at a time on the CPU
(a ``DataLoader`` of per-sample transforms). On a GPU that is the bottleneck:
a WRN-16-2 trains at about a quarter of the rate the GPU reaches with the data
already on it (issue 10). :class:`DeviceLoader` moves the whole uint8 dataset
to the device once (CIFAR-10's 50,000 images are 150 MB) and, per batch, draws
everything on the device with its own :class:`torch.Generator`:

* the shuffle (``torch.randperm``),
* the crop offsets: zero-pad by ``padding`` then a random crop of the image's
  own size — an offset uniform in ``{0, …, 2·padding}`` on each axis, as
  :class:`fxswap.data.RandomCropPad`,
* a left-right flip with probability ½, as :class:`fxswap.data.RandomHorizontalFlip`,
* per-channel normalisation (:class:`fxswap.data.Normalize`, the reference
  mean/std), then Cutout: a ``cutout``×``cutout`` square whose centre is
  uniform over the pixels, clipped at the border, set to 0 after
  normalisation, as :class:`fxswap.data.Cutout`.

Crop and flip are one ``gather`` over the flattened pixels with a validity
mask for the padding, so a batch costs a handful of kernels and no host
synchronisation (no ``.item()``, no data-dependent shapes). The distributions
are those of :func:`fxswap.data.cifar_transforms` (tested in
``tests/test_device_data.py``); the random streams differ, so individual
batches do not.

A :class:`DeviceLoader` is an iterable of ``(x, y)`` batches with ``len()``
(the number of batches), which is all :func:`fxswap.fit`, :func:`fxswap.train`
and :func:`fxswap.distill` need; its ``generator`` attribute is the one those
loops reseed every epoch, so runs are reproducible from their ``seed``.

>>> import numpy as np, torch
>>> images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
>>> loader = DeviceLoader(images, np.arange(10) % 2, batch_size=4, train=True, cutout=8, seed=0)
>>> [tuple(x.shape) for x, y in loader], len(loader)
([(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)], 3)
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .datasets import CIFAR_DATASETS, CIFAR10_MEAN, CIFAR10_STD, ArrayDataset, NpzDataset
from ..errors import FxswapError

__all__ = ["DeviceLoader", "augment_batch", "draw_augmentation", "device_cifar_loaders"]


def draw_augmentation(n: int, height: int, width: int, *, padding: int, flip: bool, cutout: int,
                      generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """The random choices for ``n`` images, drawn on ``device`` from ``generator``.

    Returns ``row``/``col`` (crop offsets in ``{0, …, 2·padding}``), ``flip``
    (bool, p = ½; all False when ``flip`` is off) and ``cy``/``cx`` (Cutout
    centres, uniform over the pixels; absent when ``cutout == 0``).

    >>> g = torch.Generator().manual_seed(0)
    >>> d = draw_augmentation(1000, 32, 32, padding=4, flip=True, cutout=16, generator=g, device=torch.device("cpu"))
    >>> int(d["row"].min()), int(d["row"].max()), sorted(d)
    (0, 8, ['col', 'cx', 'cy', 'flip', 'row'])
    """
    kw = dict(generator=generator, device=device)
    draws = {
        "row": torch.randint(0, 2 * padding + 1, (n,), **kw),
        "col": torch.randint(0, 2 * padding + 1, (n,), **kw),
        "flip": (torch.rand(n, **kw) < 0.5) if flip else torch.zeros(n, dtype=torch.bool, device=device),
    }
    if cutout > 0:
        draws["cy"] = torch.randint(0, height, (n,), **kw)
        draws["cx"] = torch.randint(0, width, (n,), **kw)
    return draws


def augment_batch(images: Tensor, draws: dict[str, Tensor] | None, mean: Tensor, std: Tensor, *, padding: int = 4,
                  cutout: int = 0) -> Tensor:
    """Normalised float32 batch from uint8 ``images`` (B, C, H, W) and the ``draws`` of :func:`draw_augmentation`.

    ``draws=None``: no augmentation (normalisation only, the validation
    transform). Otherwise, per image: zero-pad by ``padding``, crop H×W at
    ``(row, col)``, flip if ``flip``, normalise with ``mean``/``std`` (C,
    tensors on the images' device), zero the Cutout square around ``(cy, cx)``
    — the order of :func:`fxswap.data.cifar_transforms`.

    >>> img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    >>> zero, one = torch.zeros(1), torch.ones(1) / 255  # "normalisation" back to 0..255
    >>> d = {"row": torch.tensor([0]), "col": torch.tensor([0]), "flip": torch.tensor([True])}
    >>> augment_batch(img, d, zero, one, padding=1)[0, 0].round().long()  # shifted down and right by 1, flipped
    tensor([[ 0,  0,  0,  0],
            [ 2,  1,  0,  0],
            [ 6,  5,  4,  0],
            [10,  9,  8,  0]])
    """
    b, c, h, w = images.shape
    mean = mean.view(1, c, 1, 1)
    std = std.view(1, c, 1, 1)
    if draws is None:
        return (images.float().div_(255.0) - mean) / std
    dev = images.device
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    # source pixel of each output pixel, in unpadded coordinates; outside the image = the zero padding
    src_r = draws["row"].view(b, 1) - padding + rows.view(1, h)
    col_off = torch.where(draws["flip"].view(b, 1), (w - 1) - cols.view(1, w), cols.view(1, w))
    src_c = draws["col"].view(b, 1) - padding + col_off
    inside = ((src_r >= 0) & (src_r < h)).view(b, h, 1) & ((src_c >= 0) & (src_c < w)).view(b, 1, w)
    flat = (src_r.clamp(0, h - 1).view(b, h, 1) * w + src_c.clamp(0, w - 1).view(b, 1, w)).view(b, 1, h * w)
    x = images.reshape(b, c, h * w).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    x = x.float().div_(255.0).mul_(inside.view(b, 1, h, w))
    x = (x - mean) / std
    if cutout > 0 and "cy" in draws:
        y0 = draws["cy"].view(b, 1) - cutout // 2
        x0 = draws["cx"].view(b, 1) - cutout // 2
        in_r = (rows.view(1, h) >= y0) & (rows.view(1, h) < y0 + cutout)
        in_c = (cols.view(1, w) >= x0) & (cols.view(1, w) < x0 + cutout)
        cut = in_r.view(b, 1, h, 1) & in_c.view(b, 1, 1, w)
        x = x.masked_fill(cut, 0.0)
    return x


def _as_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FxswapError(f"DeviceLoader: device {device} was asked for but CUDA is not available; use 'cpu'")
    return device


class DeviceLoader:
    """Batches ``(x, y)`` of a uint8 image set held on ``device``, augmented there per batch.

    ``images``: uint8 N×H×W×C (NumPy, as in an ``.npz``) or N×C×H×W (a tensor,
    as :attr:`fxswap.data.ArrayDataset.images`); ``labels``: N integers.
    ``train=True`` shuffles and augments (crop with ``padding``, flip, Cutout
    ``cutout`` if > 0); ``train=False`` keeps the order and only normalises.
    ``channels_last`` returns batches in that memory format. ``drop_last``
    drops a short last batch (fixed shapes suit ``torch.compile`` and CUDA
    graphs). ``seed`` seeds :attr:`generator`, which :func:`fxswap.fit`
    reseeds every epoch. ``len()`` is the number of batches per pass.

    >>> import numpy as np
    >>> imgs = np.zeros((6, 8, 8, 3), np.uint8)
    >>> x, y = next(iter(DeviceLoader(imgs, [0, 1, 2, 0, 1, 2], batch_size=6, train=False, mean=(0.5,) * 3,
    ...                               std=(0.5,) * 3)))
    >>> x.shape, float(x.min()), y.tolist()
    (torch.Size([6, 3, 8, 8]), -1.0, [0, 1, 2, 0, 1, 2])
    """

    def __init__(self, images, labels, batch_size: int = 128, *, train: bool = True, cutout: int = 0,
                 padding: int = 4, flip: bool = True, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD, device=None, channels_last: bool = False,
                 drop_last: bool = False, seed: int | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FxswapError(f"DeviceLoader: batch_size must be an integer >= 1, got {batch_size!r}")
        if cutout < 0 or padding < 0:
            raise FxswapError(f"DeviceLoader: cutout and padding must be >= 0, got {cutout}, {padding}")
        self.device = _as_device(device)
        imgs = self._images(images)
        labs = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if labs.ndim != 1 or labs.shape[0] != imgs.shape[0]:
            raise FxswapError(f"DeviceLoader: need one label per image ({imgs.shape[0]}), got labels of shape "
                              f"{tuple(labs.shape)}")
        if labs.numel() and (labs.dtype.is_floating_point or labs.dtype == torch.bool):
            raise FxswapError(f"DeviceLoader: labels must be integers, got {labs.dtype}")
        if len(mean) != imgs.shape[1] or len(std) != imgs.shape[1] or any(s <= 0 for s in std):
            raise FxswapError(f"DeviceLoader: need one mean and one std (> 0) per channel ({imgs.shape[1]}), got "
                              f"{tuple(mean)}, {tuple(std)}")
        self.images = imgs.to(self.device).contiguous()
        self.targets = labs.to(torch.int64).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.train = bool(train)
        self.cutout = int(cutout)
        self.padding = int(padding)
        self.flip = bool(flip)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last)
        #: the random stream of shuffling and augmentation; :func:`fxswap.fit` reseeds it every epoch
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.initial_seed()) & 0xFFFFFFFF)
        #: this loader's share of each pass (:meth:`shard`): every ``world``-th image from ``rank`` on
        self.rank, self.world, self.even = 0, 1, True

    @staticmethod
    def _images(images) -> Tensor:
        if isinstance(images, Tensor):
            if images.ndim != 4 or images.dtype != torch.uint8:
                raise FxswapError(f"DeviceLoader: a tensor of images must be uint8 N×C×H×W, got "
                                  f"{images.dtype} {tuple(images.shape)}")
            return images
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
            raise FxswapError(f"DeviceLoader: images must be uint8 N×H×W×C (C = 1 or 3), got {arr.dtype} "
                              f"{arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    @classmethod
    def from_dataset(cls, dataset: ArrayDataset, batch_size: int = 128, **kwargs) -> DeviceLoader:
        """A loader over an :class:`fxswap.data.ArrayDataset`'s images and labels (its ``transform`` is ignored).

        >>> ds = ArrayDataset(np.zeros((5, 32, 32, 3), np.uint8), [0, 1, 0, 1, 0])
        >>> len(DeviceLoader.from_dataset(ds, batch_size=2, train=False))
        3
        """
        loader = cls(dataset.images, dataset.targets, batch_size, **kwargs)
        loader.classes = dataset.classes
        return loader

    def shard(self, rank: int, world: int, *, even: bool = True) -> DeviceLoader:
        """A twin that yields ``rank``'s share of each pass out of ``world`` processes (the images, labels
        and :attr:`generator` are shared, not copied).

        Every rank draws the same permutation (:func:`fxswap.fit` seeds :attr:`generator` alike on every
        rank) and takes every ``world``-th image of it from position ``rank``: the shares of one pass are
        disjoint and together cover the set. ``even=True`` (training) first repeats the permutation's head
        so that every rank gets ``ceil(N / world)`` images and as many batches (the processes step
        together); ``even=False`` (validation) counts each image once. Augmentations are drawn for the
        ``world`` batches together and each rank takes its own, so rank ``r``'s batch ``k`` holds the
        images, crops, flips and Cutouts at positions ``r, r + world, ...`` of a one-process batch ``k`` of
        ``world × batch_size``.

        >>> import numpy as np
        >>> loader = DeviceLoader(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10), batch_size=2, train=False)
        >>> [y.tolist() for _, y in loader.shard(1, 3, even=False)], len(loader.shard(0, 3))
        ([[1, 4], [7]], 2)
        """
        if not (isinstance(world, int) and isinstance(rank, int) and 0 <= rank < world):
            raise FxswapError(f"DeviceLoader.shard: need 0 <= rank < world, got rank={rank!r}, world={world!r}")
        twin = copy.copy(self)
        twin.rank, twin.world, twin.even = rank, world, bool(even)
        return twin

    @property
    def num_samples(self) -> int:
        """Images per pass (of this rank's share, see :meth:`shard`)."""
        n = int(self.images.shape[0])
        if self.world == 1:
            return n
        return math.ceil(n / self.world) if self.even else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> Tensor:
        n = int(self.images.shape[0])
        order = (torch.randperm(n, generator=self.generator, device=self.device) if self.train
                 else torch.arange(n, device=self.device))
        if self.world == 1:
            return order
        if self.even and n % self.world:
            pad = self.world - n % self.world  # more than n when world > 2n: the permutation, repeated
            order = torch.cat([order] * (1 + math.ceil(pad / n)))[: n + pad]
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        h, w = self.images.shape[2], self.images.shape[3]
        order = self._order()
        n = int(order.shape[0])
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            b = min(self.batch_size, n - k * self.batch_size)
            draws = None
            if self.train:
                # drawn for the world's batches together: every rank's generator stays in step with the others
                draws = draw_augmentation(b * self.world, h, w, padding=self.padding, flip=self.flip,
                                          cutout=self.cutout, generator=self.generator, device=self.device)
                if self.world > 1:
                    draws = {key: v[self.rank::self.world] for key, v in draws.items()}
            x = augment_batch(self.images.index_select(0, idx), draws, self.mean, self.std, padding=self.padding,
                              cutout=self.cutout)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.targets.index_select(0, idx)

    def __repr__(self) -> str:
        return (f"DeviceLoader({self.num_samples} images on {self.device}, batch_size={self.batch_size}, "
                f"train={self.train}, cutout={self.cutout}, channels_last={self.channels_last})")


def device_cifar_loaders(path: str | os.PathLike, batch_size: int = 128, *, cutout: int = 0,
                         dataset: str = "cifar10", limit: int | None = None, device=None,
                         channels_last: bool = False, drop_last: bool = False,
                         seed: int | None = None) -> tuple[DeviceLoader, DeviceLoader]:
    """``(train, val)`` :class:`DeviceLoader` s from an ``.npz`` file, the device twin of :func:`fxswap.data.cifar_loaders`.

    Same file format, ``limit`` (first N of each split) and normalisation
    constants (``dataset``); the validation loader keeps file order, only
    normalises and never drops its last batch.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "tiny.npz")
    >>> imgs, labels = np.zeros((10, 32, 32, 3), np.uint8), np.arange(10)
    >>> np.savez(path, x_train=imgs, y_train=labels, x_test=imgs[:6], y_test=labels[:6])
    >>> train, val = device_cifar_loaders(path, batch_size=4, device="cpu", seed=0)
    >>> len(train), len(val), train.classes
    (3, 2, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
    >>> tmp.cleanup()
    """
    if dataset not in CIFAR_DATASETS:
        raise FxswapError(f"dataset must be one of {', '.join(map(repr, CIFAR_DATASETS))}, got {dataset!r}")
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise FxswapError(f"device_cifar_loaders reads an .npz file (x_train, y_train, x_test, y_test), got {path}")
    info = CIFAR_DATASETS[dataset]
    common = dict(mean=info["mean"], std=info["std"], device=device, channels_last=channels_last)
    loaders = []
    for split, train in (("train", True), ("test", False)):
        ds = NpzDataset(path, split, limit=limit)
        if len(ds) and int(ds.targets.max()) >= info["num_classes"]:
            raise FxswapError(f"{path}: labels go up to {int(ds.targets.max())} but dataset={dataset!r} has "
                              f"{info['num_classes']} classes")
        loader = DeviceLoader.from_dataset(ds, batch_size, train=train, cutout=cutout if train else 0,
                                           drop_last=drop_last and train, seed=seed, **common)
        if loader.classes is None:
            loader.classes = [str(i) for i in range(info["num_classes"])]
        loaders.append(loader)
    return loaders[0], loaders[1]
