"""Data pipelines: CIFAR-10/100 (the papers' augmentation) and ImageFolder trees; datasets and loaders.

:func:`cifar_loaders` takes 32×32 RGB images only, with CIFAR's
normalisation constants and the seed papers' 32×32 crop. :class:`ArrayDataset`
and :func:`read_npz` are the general pieces it is built from.
:func:`imagefolder_loaders` reads any other image collection laid out as
``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (resized and
cropped to ``image_size``, ImageNet normalisation). :func:`make_loaders` picks
one of the two from the path, as ``fxswap distill --data`` does.

For CIFAR, two sources are accepted:

* a ``.npz`` file holding ``x_train, y_train, x_test, y_test`` (uint8 images
  N×32×32×3, integer labels 0 ≤ y < classes, optional ``class_names``) — read
  by :func:`read_npz`, which never unpickles and checks every array header
  against the bytes the file holds before allocating — e.g. the project's
  ``cifar10_subset.npz``;
* a folder in torchvision's CIFAR-10/100 format (``cifar-10-batches-py/`` or
  ``cifar-100-python/``), downloaded only when ``download=True``.

A file that does not fit raises :class:`fxswap.errors.DataError` naming the
file, the array and what is accepted.

Either way the images are held in memory as one uint8 (N, C, H, W) tensor and
every sample is produced as a float (C, H, W) tensor in [0, 1]; augmentation runs
on tensors (no PIL round trip). The transforms here are small ``nn.Module`` s of
our own rather than ``torchvision.transforms.v2``: on a single 3×32×32 tensor
they do the same work about four times faster, which matters for CIFAR where the
per-sample overhead dominates.

The augmentation is the one all the seed papers use (Moonshine §4: "padded by
4×4 zeros, and then a random 32×32 crop was taken. Each image was left-right
flipped with a probability of a half"), then per-channel normalisation, plus an
optional Cutout (DeVries & Taylor 2017).
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, FxswapError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "RandomCropPad",
    "RandomHorizontalFlip",
    "Normalize",
    "Cutout",
    "cifar_transforms",
    "ArrayDataset",
    "NpzDataset",
    "read_npz",
    "cifar_loaders",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGEFOLDER_LAYOUT",
    "imagefolder_transforms",
    "ImageFolderSplit",
    "imagefolder_loaders",
    "data_kind",
    "make_loaders",
]

# The normalisation constants of the reference code (BayesWatch/pytorch-moonshine
# main.py, also used by the SRRL reproduction). The CIFAR-10 "std" here is the
# widely copied (0.2023, 0.1994, 0.2010); the true per-pixel std of the training
# set is about (0.247, 0.243, 0.261). We keep the reference values.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2009, 0.1984, 0.2023)

NPZ_FORMAT = ("an .npz archive (np.savez) holding x_train, y_train, x_test, y_test: uint8 images N×H×W×C "
              "and integer labels N (optional class_names)")
CIFAR_IMAGE = (32, 32, 3)  # H, W, C of every image cifar_loaders accepts

CIFAR_DATASETS = {
    "cifar10": {"num_classes": 10, "mean": CIFAR10_MEAN, "std": CIFAR10_STD},
    "cifar100": {"num_classes": 100, "mean": CIFAR100_MEAN, "std": CIFAR100_STD},
}


# ---------------------------------------------------------------------------
# transforms (tensors in, tensors out)
# ---------------------------------------------------------------------------


def _check_image(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise FxswapError(
            f"{who} needs a (C, H, W) image tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )


class RandomCropPad(nn.Module):
    """Zero-pad every side by ``padding`` pixels, then take a random ``size``×``size`` crop.

    >>> RandomCropPad(32, 4)(torch.rand(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """

    def __init__(self, size: int = 32, padding: int = 4):
        super().__init__()
        if size < 1 or padding < 0:
            raise FxswapError(f"RandomCropPad needs size >= 1 and padding >= 0, got {size}, {padding}")
        self.size = int(size)
        self.padding = int(padding)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "RandomCropPad")
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            raise FxswapError(f"RandomCropPad: padded image {h}×{w} is smaller than the crop {self.size}")
        i = int(torch.randint(0, h - self.size + 1, ()))
        j = int(torch.randint(0, w - self.size + 1, ()))
        return x[..., i : i + self.size, j : j + self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}"


class RandomHorizontalFlip(nn.Module):
    """Flip left-right with probability ``p``.

    >>> RandomHorizontalFlip(p=1.0)(torch.tensor([[[0.0, 0.5, 1.0]]]))
    tensor([[[1.0000, 0.5000, 0.0000]]])
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise FxswapError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "RandomHorizontalFlip")
        if float(torch.rand(())) < self.p:
            return x.flip(-1)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on a (C, H, W) tensor.

    >>> Normalize(mean=(0.5, 0.0), std=(0.25, 2.0))(torch.ones(2, 1, 1)).flatten()  # (1 - 0.5) / 0.25, 1 / 2
    tensor([2.0000, 0.5000])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise FxswapError(f"Normalize needs as many means as stds, all stds > 0; got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "Normalize")
        if x.shape[-3] != self.mean.shape[0]:
            raise FxswapError(
                f"Normalize has {self.mean.shape[0]} channel means but the image has {x.shape[-3]} channels"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"


class Cutout(nn.Module):
    """Cutout (DeVries & Taylor 2017): zero a ``size``×``size`` square at a random place.

    The square's centre is drawn uniformly over all pixels and the square is
    clipped at the image border (as in the original Cutout code), so near the
    edges less than a full square may be zeroed. ``size=0`` is the identity. It
    returns a new tensor; the input is not modified.

    >>> torch.manual_seed(0) and None
    >>> out = Cutout(8)(torch.ones(3, 32, 32))
    >>> bool((out == 0).any()), bool((out[0] == out[1]).all())  # same square on every channel
    (True, True)
    """

    def __init__(self, size: int):
        super().__init__()
        if size < 0:
            raise FxswapError(f"Cutout: size must be >= 0, got {size}")
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "Cutout")
        if self.size == 0:
            return x
        h, w = x.shape[-2:]
        cy = int(torch.randint(0, h, ()))
        cx = int(torch.randint(0, w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy - self.size // 2 + self.size)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx - self.size // 2 + self.size)
        out = x.clone()
        out[..., y0:y1, x0:x1] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"


def cifar_transforms(
    train: bool,
    cutout: int = 0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> nn.Sequential:
    """The papers' CIFAR transform, on float (C, H, W) tensors in [0, 1].

    ``train=True``: zero-pad 4 → random 32×32 crop → horizontal flip (p = ½) →
    normalise → Cutout(``cutout``) if ``cutout > 0`` (after normalisation, so
    the cut square is the dataset mean, as in DeVries & Taylor).
    ``train=False``: normalise only; ``cutout`` is ignored.

    >>> cifar_transforms(train=False)
    Sequential(
      (0): Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.201))
    )
    >>> cifar_transforms(train=True, cutout=16)(torch.rand(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """
    if cutout < 0:
        raise FxswapError(f"cifar_transforms: cutout must be >= 0 (0 = off), got {cutout}")
    steps: list[nn.Module] = []
    if train:
        steps += [RandomCropPad(32, 4), RandomHorizontalFlip(0.5)]
    steps.append(Normalize(mean, std))
    if train and cutout > 0:
        steps.append(Cutout(cutout))
    return nn.Sequential(*steps)


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------


def _check_images(images: np.ndarray, source: str) -> None:
    accepted = "uint8 images N×H×W×C (channels last, C = 1 or 3)"
    if images.ndim != 4:
        raise DataError(f"{source}: images must be {accepted}, got shape {images.shape}")
    if images.shape[-1] not in (1, 3):
        hint = ""
        if images.shape[1] in (1, 3, 4):
            hint = " — this looks channels-first (N×C×H×W): transpose it with x.transpose(0, 2, 3, 1)"
        if images.shape[-1] == 4:
            hint = " — 4 channels (RGBA?): drop the alpha channel, x[..., :3]"
        raise DataError(f"{source}: images must be {accepted}, got shape {images.shape}{hint}")
    if images.dtype != np.uint8:
        raise DataError(f"{source}: images must be uint8 (0–255), got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise DataError(f"{source}: the split is empty (0 images); each split needs at least one image")


def _check_labels(labels: np.ndarray, n: int, source: str) -> None:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(
            f"{source}: labels must be a 1-D array with one label per image ({n}), got shape {labels.shape}"
        )
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers 0 ≤ y < classes, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, found {int(labels.min())}")
    if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{source}: labels must be class indices 0 ≤ y < classes, found {int(labels.max())}")


def _check_class_names(classes: Sequence[Any], labels: np.ndarray, source: str) -> list[str]:
    names = np.asarray(classes)
    if names.ndim != 1:
        raise DataError(f"{source}: class_names must be a 1-D array of names, got shape {names.shape}")
    if labels.size and int(labels.max()) >= len(names):
        raise DataError(
            f"{source}: labels go up to {int(labels.max())} but class_names has only {len(names)} "
            f"name(s); class_names needs one name per class (at least {int(labels.max()) + 1})"
        )
    return [str(c) for c in names.tolist()]


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


_NPZ_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                    NotImplementedError, RuntimeError, OverflowError, MemoryError)


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """One ``.npy`` member, its header checked against the bytes it holds before anything is allocated."""
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise DataError(f"{where}: .npy format version {version} is not supported (1.0 and 2.0 are)")
        if dtype.hasobject:
            raise DataError(f"{where}: holds Python objects (a pickle); only plain numeric or string arrays "
                            "are read (allow_pickle=False)")
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - fp.tell()
        if nbytes != held:
            raise DataError(f"{where}: its header claims shape {shape} of {dtype} ({nbytes:,} bytes) but the "
                            f"file holds {held:,} bytes of data; the file is truncated or crafted")
        memory = _memory_bytes()
        if memory is not None and nbytes > memory:
            raise DataError(f"{where}: the array needs {nbytes:,} bytes, more than this machine's memory "
                            f"({memory:,} bytes)")
        data = fp.read(nbytes)
        if len(data) != nbytes:
            raise DataError(f"{where}: ended after {len(data):,} of {nbytes:,} bytes; the file is truncated")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(path: str | os.PathLike, keys: Sequence[str], optional: Sequence[str] = (),
             accepted: str | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all required) and ``optional`` (if present) of an ``.npz`` file.

    Safer than ``np.load``: nothing is unpickled; each array's header is
    checked against the bytes the file really holds before memory is
    allocated (a header claiming 9 TiB is an error, not an allocation);
    ``.npy`` files, empty, truncated and corrupted files raise
    :class:`~fxswap.errors.DataError` naming the file, the array and what is
    accepted (``accepted`` describes the expected file; by default the
    ``keys``). Only the requested arrays are read.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "a.npz")
    >>> np.savez(path, x=np.arange(6).reshape(2, 3), y=np.array([1, 2]))
    >>> read_npz(path, ["x"], optional=["labels"])
    {'x': array([[0, 1, 2],
           [3, 4, 5]])}
    >>> np.save(os.path.join(tmp.name, "b.npy"), np.zeros(3)); os.rename(os.path.join(tmp.name, "b.npy"), path)
    >>> read_npz(path, ["x"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fxswap.errors.DataError: ...a.npz is a single .npy array (np.save) renamed .npz; expected ...
    >>> tmp.cleanup()
    """
    path = Path(path)
    accepted = accepted or f"an .npz archive (np.savez) with the arrays {', '.join(keys)}"
    if not path.is_file():
        raise DataError(f"no file at {path}; expected {accepted}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"cannot open {path}: {e}") from e
    if not head:
        raise DataError(f"{path} is empty (0 bytes); expected {accepted}")
    if head == b"\x93NUMPY":
        raise DataError(f"{path} is a single .npy array (np.save) renamed .npz; expected {accepted}")
    out: dict[str, np.ndarray] = {}
    where = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            missing = [k for k in keys if k not in members]
            if missing:
                raise DataError(f"{path} lacks the array(s) {', '.join(missing)}. Expected {accepted}; "
                                f"this file has: {', '.join(members) or '(nothing)'}")
            for key in [*keys, *(k for k in optional if k in members)]:
                where = f"{path} [{key}]"
                out[key] = _read_entry(zf, members[key], where)
    except DataError:
        raise
    except _NPZ_READ_ERRORS as e:  # not a zip, corrupted deflate stream, bad CRC, bad header...
        raise DataError(f"cannot read {where} as {accepted} (plain arrays, allow_pickle=False): "
                        f"{type(e).__name__}: {e}") from e
    return out


class ArrayDataset(Dataset):
    """In-memory image dataset from uint8 N×H×W×C images and integer labels.

    Items are ``(image, label)``: a float32 (C, H, W) tensor in [0, 1] passed
    through ``transform`` (if any), and an ``int`` label. ``limit`` keeps the
    first ``limit`` samples.

    >>> ds = ArrayDataset(np.full((4, 32, 32, 3), 255, np.uint8), [0, 1, 2, 1])
    >>> img, label = ds[2]
    >>> len(ds), tuple(img.shape), float(img.max()), label, ds.num_classes
    (4, (3, 32, 32), 1.0, 2, 3)
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        transform: Callable[[Tensor], Tensor] | None = None,
        classes: Sequence[str] | None = None,
        limit: int | None = None,
        source: str = "arrays",
    ):
        images = np.asarray(images)
        labels = np.asarray(labels)
        _check_images(images, source)
        _check_labels(labels, images.shape[0], source)
        if classes is not None:
            classes = _check_class_names(classes, labels, source)
        if limit is not None:
            if limit < 1:
                raise FxswapError(f"{source}: limit must be >= 1 or None, got {limit}")
            images, labels = images[:limit], labels[:limit]
        # one copy: channels-first, contiguous, still uint8 (4× smaller than float)
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    @property
    def num_classes(self) -> int:
        """``len(classes)`` when class names are known, else ``max(label) + 1``."""
        if self.classes is not None:
            return len(self.classes)
        return int(self.targets.max()) + 1 if len(self.targets) else 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index].float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


class NpzDataset(ArrayDataset):
    """A split of an ``.npz`` file with ``x_train, y_train, x_test, y_test``.

    The file is read with :func:`read_npz` (no unpickling, headers checked);
    only the two arrays of the requested ``split`` (``"train"`` or ``"test"``)
    are loaded. Images must be uint8 N×H×W×C (N ≥ 1), labels integers
    0 ≤ y, one per image. An optional ``class_names`` array becomes
    :attr:`classes` and must name every label.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "tiny.npz")
    >>> imgs = np.zeros((6, 32, 32, 3), np.uint8)
    >>> np.savez(path, x_train=imgs, y_train=np.arange(6) % 2, x_test=imgs[:2], y_test=np.array([0, 1]),
    ...          class_names=np.array(["cat", "dog"]))
    >>> ds = NpzDataset(path, "test")
    >>> len(ds), ds.classes, ds[0][0].shape
    (2, ['cat', 'dog'], torch.Size([3, 32, 32]))
    >>> tmp.cleanup()
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Tensor], Tensor] | None = None,
        limit: int | None = None,
    ):
        path = Path(path)
        if split not in ("train", "test"):
            raise FxswapError(f"NpzDataset: split must be 'train' or 'test', got {split!r}")
        x_key, y_key = f"x_{split}", f"y_{split}"
        arrays = read_npz(path, [x_key, y_key], optional=["class_names"], accepted=NPZ_FORMAT)
        images, labels, classes = arrays[x_key], arrays[y_key], arrays.get("class_names")
        super().__init__(
            images, labels, transform=transform, classes=classes, limit=limit, source=f"{path} [{x_key}, {y_key}]"
        )
        self.path = path
        self.split = split


# ---------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------


#: What a failed download raises (urllib's URLError is an OSError, which otherwise means damaged files).
_NETWORK_ERRORS = (URLError, ConnectionError, TimeoutError, HTTPException)


def _torchvision_split(root: Path, dataset: str, train: bool, download: bool, transform, limit):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(root=str(root), train=train, download=download)
    except (_NETWORK_ERRORS if download else ()) as e:  # the download failed, not the files
        raise DataError(
            f"downloading {dataset} into {root} failed (offline?): {getattr(e, 'reason', e)}. Download it on a "
            "machine with network access, or give the path of a .npz file with x_train, y_train, x_test, "
            "y_test, or a folder that already holds it in torchvision's format"
        ) from e
    except RuntimeError as e:  # torchvision: not found / corrupted (failed integrity check)
        raise DataError(
            f"no {dataset} in torchvision's format under {root} ({e}). Pass download=True to "
            "fetch it there, give the path of a .npz file with x_train, y_train, x_test, y_test, "
            f"or an ImageFolder tree: {IMAGEFOLDER_LAYOUT}"
        ) from e
    except (OSError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as e:
        # the batch files are pickles: a truncated or foreign one fails in many ways
        raise DataError(
            f"cannot read {dataset} in torchvision's format under {root}: {type(e).__name__}: {e}. "
            "Its batch files look damaged; delete the folder and pass download=True, or give a .npz file"
        ) from e
    return ArrayDataset(
        ds.data,
        np.asarray(ds.targets),
        transform=transform,
        classes=getattr(ds, "classes", None),
        limit=limit,
        source=f"{root} [{dataset} {'train' if train else 'test'}]",
    )


def _check_cifar_images(ds: ArrayDataset, where: str) -> None:
    h, w, c = CIFAR_IMAGE
    got = tuple(ds.images.shape[1:])  # stored C, H, W
    if got != (c, h, w):
        raise DataError(
            f"{where}: the CIFAR pipeline takes {h}×{w} RGB images (uint8 N×{h}×{w}×{c}), got "
            f"N×{got[1]}×{got[2]}×{got[0]}. Its training augmentation crops {h}×{w} while validation "
            "does not, so other sizes would reach the model at two resolutions; resize the images first"
        )


def cifar_loaders(
    path: str | os.PathLike,
    batch_size: int = 128,
    num_workers: int = 2,
    cutout: int = 0,
    download: bool = False,
    dataset: str = "cifar10",
    limit: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` for CIFAR-10/100.

    ``path`` ending in ``.npz``: an :class:`NpzDataset` file (train = ``x_train``,
    validation = ``x_test``), 32×32 RGB images only (:class:`~fxswap.errors.DataError`
    otherwise, naming the file and array). Otherwise a folder for torchvision's
    ``CIFAR10``/``CIFAR100`` (``dataset``), downloaded there only if
    ``download=True``. ``limit`` keeps the first N samples of *each* split
    (quick runs). The training loader shuffles (reproducibly if ``seed`` is
    given) and augments with :func:`cifar_transforms` (``cutout`` > 0 adds
    Cutout); the validation loader keeps file order and only normalises.
    Memory is pinned when the target ``device`` is CUDA (default: when CUDA is
    available). The datasets are at ``loader.dataset`` (with ``.classes`` and
    ``.num_classes``).

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "tiny.npz")
    >>> imgs, labels = np.zeros((10, 32, 32, 3), np.uint8), np.arange(10)
    >>> np.savez(path, x_train=imgs, y_train=labels, x_test=imgs[:6], y_test=labels[:6])
    >>> train, val = cifar_loaders(path, batch_size=4, num_workers=0, seed=0)
    >>> next(iter(train))[0].shape, len(train), len(val), train.dataset.num_classes
    (torch.Size([4, 3, 32, 32]), 3, 2, 10)
    >>> tmp.cleanup()
    """
    if dataset not in CIFAR_DATASETS:
        raise FxswapError(f"dataset must be one of {', '.join(map(repr, CIFAR_DATASETS))}, got {dataset!r}")
    _check_loader_args(batch_size, num_workers, limit)
    info = CIFAR_DATASETS[dataset]
    train_tf = cifar_transforms(True, cutout=cutout, mean=info["mean"], std=info["std"])
    val_tf = cifar_transforms(False, mean=info["mean"], std=info["std"])

    path = Path(path)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FxswapError(
                f"no .npz file at {path}; give an existing .npz (x_train, y_train, x_test, y_test) "
                "or a folder for torchvision's CIFAR"
            )
        train_ds: ArrayDataset = NpzDataset(path, "train", transform=train_tf, limit=limit)
        val_ds: ArrayDataset = NpzDataset(path, "test", transform=val_tf, limit=limit)
    else:
        if not path.exists() and not download:
            raise FxswapError(
                f"{path} does not exist. Give a .npz file (x_train, y_train, x_test, y_test), a "
                f"folder holding {dataset} in torchvision's format, or pass download=True"
                f"; an ImageFolder tree ({IMAGEFOLDER_LAYOUT}) goes to imagefolder_loaders"
            )
        if path.exists() and not path.is_dir():
            raise FxswapError(f"{path} is neither a .npz file nor a folder")
        train_ds = _torchvision_split(path, dataset, True, download, train_tf, limit)
        val_ds = _torchvision_split(path, dataset, False, download, val_tf, limit)

    for ds, split in ((train_ds, "train"), (val_ds, "test")):
        _check_cifar_images(ds, f"{getattr(ds, 'path', path)} [x_{split}]")
        if len(ds) and int(ds.targets.max()) >= info["num_classes"]:
            raise DataError(
                f"{getattr(ds, 'path', path)}: labels go up to {int(ds.targets.max())} but "
                f"dataset={dataset!r} has {info['num_classes']} classes; pass the right dataset "
                f"({', '.join(map(repr, CIFAR_DATASETS))})"
            )
        if ds.classes is None:
            ds.classes = [str(i) for i in range(info["num_classes"])]

    return _loaders(train_ds, val_ds, batch_size, num_workers, device, seed)


def _check_loader_args(batch_size: int, num_workers: int, limit: int | None) -> None:
    if batch_size < 1:
        raise FxswapError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise FxswapError(f"num_workers must be >= 0, got {num_workers}")
    if limit is not None and limit < 1:
        raise FxswapError(f"limit must be >= 1 or None, got {limit}")


def _loaders(train_ds: Dataset, val_ds: Dataset, batch_size: int, num_workers: int,
             device: str | torch.device | None, seed: int | None) -> tuple[DataLoader, DataLoader]:
    """The training loader shuffles (reproducibly with ``seed``), the validation loader keeps order;
    memory is pinned when the target device is CUDA."""
    if device is not None:
        pin = torch.device(device).type == "cuda" and torch.cuda.is_available()
    else:
        pin = torch.cuda.is_available()
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train_loader = DataLoader(train_ds, shuffle=True, drop_last=False, generator=generator, **common)
    val_loader = DataLoader(val_ds, shuffle=False, drop_last=False, **common)
    return train_loader, val_loader


# ---------------------------------------------------------------------------
# ImageFolder trees
# ---------------------------------------------------------------------------

# torchvision's ImageNet constants (the statistics of ImageNet's training set), the usual choice for
# natural images and what ImageNet-pretrained teachers expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGEFOLDER_LAYOUT = ("ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (one sub-folder per class, the "
                      "same class names in both; val may be named test; .png, .jpg, .jpeg, .bmp, .webp, ... images)")
_VAL_NAMES = ("val", "test")
# the usual ImageNet evaluation crop: resize the short side to size / 0.875, then centre-crop size
_EVAL_CROP_RATIO = 0.875


#: ``auto_augment=`` names: torchvision ``transforms.v2`` policies, with their default magnitudes.
AUTO_AUGMENTS = ("randaugment", "trivialaugment")


def imagefolder_transforms(train: bool, image_size: int = 224, cutout: int = 0,
                           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                           auto_augment: str | None = None):
    """The transform of :func:`imagefolder_loaders`, from a PIL image to a normalised float (3, S, S) tensor.

    ``train=True``: a random resized crop to ``image_size`` (scale 0.08–1, the
    ImageNet recipe), a horizontal flip with p = ½, normalisation, then
    Cutout(``cutout``) if ``cutout > 0``. ``train=False``: resize the short side
    to ``image_size / 0.875``, centre-crop ``image_size``, normalise.
    ``auto_augment`` (training only): ``"randaugment"`` (``v2.RandAugment()``,
    2 ops at magnitude 9) or ``"trivialaugment"`` (``v2.TrivialAugmentWide()``)
    after the flip, on the uint8 image as torchvision's policies expect.

    >>> from PIL import Image
    >>> img = Image.new("RGB", (50, 40))
    >>> imagefolder_transforms(True, 24)(img).shape, imagefolder_transforms(False, 24)(img).shape
    (torch.Size([3, 24, 24]), torch.Size([3, 24, 24]))
    """
    from torchvision.transforms import v2

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise FxswapError(f"image_size must be an integer >= 1 (pixels), got {image_size!r}")
    if cutout < 0:
        raise FxswapError(f"imagefolder_transforms: cutout must be >= 0 (0 = off), got {cutout}")
    if auto_augment is not None and auto_augment not in AUTO_AUGMENTS:
        raise FxswapError(f"imagefolder_transforms: auto_augment must be one of {', '.join(AUTO_AUGMENTS)} (or "
                          f"None), got {auto_augment!r}")
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if train:
        steps: list[Any] = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(0.5)]
        if auto_augment is not None:  # on the uint8 image: the policies' magnitudes are in pixel values
            policy = v2.RandAugment() if auto_augment == "randaugment" else v2.TrivialAugmentWide()
            steps += [v2.ToImage(), policy]
    else:
        steps = [v2.Resize(max(image_size, round(image_size / _EVAL_CROP_RATIO)), antialias=True),
                 v2.CenterCrop(image_size)]
    steps += to_tensor + [Normalize(mean, std)]
    if train and cutout > 0:
        steps.append(Cutout(cutout))
    return v2.Compose(steps)


def _open_rgb(path: str):
    """Open an image file as RGB; a file that is not an image is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from None


def _image_files(folder: Path, limit: int = 5) -> list[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return [p.name for p in sorted(folder.iterdir())[:1000] if p.is_file()
            and p.name.lower().endswith(IMG_EXTENSIONS)][:limit]


def _import_image_folder():
    from torchvision.datasets import ImageFolder

    return ImageFolder


class ImageFolderSplit(Dataset):
    """One split of an ImageFolder tree (``split_root/<class>/<image>``): items are ``(transform(image), label)``.

    A thin wrapper over ``torchvision.datasets.ImageFolder`` with the checks
    fxswap makes everywhere: a folder with no class sub-folders, class folders
    with no images, or (with ``classes`` given, as for the validation split) a
    class the training split lacks is a :class:`~fxswap.errors.DataError`
    saying which layout is accepted. ``classes`` fixes the label of each class
    name (the training split's order), so a validation split missing a class
    still labels the others as training did. ``limit`` keeps ``limit`` samples
    spread evenly over the (class-sorted) list, so every class stays in a quick
    run. A file that is not an image fails when read, naming the file.

    >>> import os, tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, cls))
    ...     for i in range(3):
    ...         Image.new("RGB", (8, 6)).save(os.path.join(root, cls, f"{i}.png"))
    >>> ds = ImageFolderSplit(root)
    >>> len(ds), ds.classes, ds.num_classes, ds[4][1]
    (6, ['cat', 'dog'], 2, 1)
    >>> [y for _, y in ImageFolderSplit(root, limit=2)]
    [0, 1]
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 classes: Sequence[str] | None = None, limit: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder; expected {IMAGEFOLDER_LAYOUT}")
        sub = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not sub:
            loose = _image_files(root)
            found = f" (it holds images directly: {', '.join(loose)}; move them into class folders)" if loose else ""
            raise DataError(f"{root} has no class sub-folders{found}; expected {IMAGEFOLDER_LAYOUT}")
        if classes is not None:
            unknown = [c for c in sub if c not in classes]
            if unknown:
                raise DataError(f"{root} has class folder(s) {', '.join(unknown[:5])} that the training split "
                                f"lacks (its classes: {', '.join(list(classes)[:8])}{' ...' if len(classes) > 8 else ''}); "
                                f"expected {IMAGEFOLDER_LAYOUT}")
        # hidden folders (.ipynb_checkpoints, ...) are not classes; the validation split may lack a class
        folder = self._folder(root, list(classes) if classes is not None else sub, allow_empty=classes is not None)
        if len(folder.samples) == 0:
            raise DataError(f"{root} holds no images in its class folders; expected {IMAGEFOLDER_LAYOUT}")
        samples = list(folder.samples)
        if limit is not None:
            if limit < 1:
                raise FxswapError(f"{root}: limit must be >= 1 or None, got {limit}")
            if limit < len(samples):
                picks = np.linspace(0, len(samples) - 1, limit).round().astype(int)
                samples = [samples[i] for i in picks]
        self.root = root
        self.samples = samples  # (path, label) pairs only: the dataset pickles into worker processes
        self.targets = [y for _, y in samples]
        self.classes = list(folder.classes)
        self.transform = transform

    @staticmethod
    def _folder(root: Path, classes: list[str], allow_empty: bool):
        image_folder = _import_image_folder()

        class _Folder(image_folder):
            def find_classes(self, directory):
                return list(classes), {c: i for i, c in enumerate(classes)}

        try:
            return _Folder(str(root), loader=_open_rgb, allow_empty=allow_empty)
        except FileNotFoundError as e:  # torchvision: class folders without a single image file
            raise DataError(f"{root}: {e}; expected {IMAGEFOLDER_LAYOUT}") from None

    @property
    def num_classes(self) -> int:
        """The number of classes (class folders of the training split)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = _open_rgb(path)
        return (self.transform(img) if self.transform is not None else img), label


def _imagefolder_splits(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; an ImageFolder tree is {IMAGEFOLDER_LAYOUT}")
    train = root / "train"
    val = next((root / v for v in _VAL_NAMES if (root / v).is_dir()), None)
    if not train.is_dir() or val is None:
        has = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:8]
        lacks = " and ".join(n + "/" for n, ok in (("train", train.is_dir()), ("val", val is not None)) if not ok)
        raise DataError(f"{root} has no {lacks} folder (it holds: {', '.join(has) or 'nothing'}); "
                        f"expected {IMAGEFOLDER_LAYOUT}")
    return train, val


def imagefolder_loaders(
    root: str | os.PathLike,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 2,
    cutout: int = 0,
    limit: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    auto_augment: str | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` for an ImageFolder tree: ``root/train/<class>/<image>``,
    ``root/val/<class>/<image>`` (or ``root/test/...``).

    Labels are the training split's class folders in sorted order (the
    validation split is labelled with the same map; a class only in ``val`` is
    a :class:`~fxswap.errors.DataError`, as is any other layout, with the
    accepted one in the message). Images are read as RGB and transformed by
    :func:`imagefolder_transforms` (training: random resized crop to
    ``image_size`` + flip, then ``auto_augment``'s policy if given; validation: resize + centre crop), normalised with
    ``mean``/``std`` (ImageNet's by default). ``limit`` keeps ``limit`` images of
    each split, spread over the classes. The loaders behave as
    :func:`cifar_loaders`' (shuffled reproducibly with ``seed``, memory pinned for
    CUDA); the datasets (:class:`ImageFolderSplit`) are at ``loader.dataset``
    with ``.classes`` and ``.num_classes``.

    >>> import os, tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for split in ("train", "val"):
    ...     for cls in ("ant", "bee"):
    ...         os.makedirs(os.path.join(root, split, cls))
    ...         for i in range(2):
    ...             Image.new("RGB", (40, 30)).save(os.path.join(root, split, cls, f"{i}.png"))
    >>> train, val = imagefolder_loaders(root, image_size=16, batch_size=4, num_workers=0, seed=0)
    >>> next(iter(train))[0].shape, train.dataset.classes, len(val.dataset)
    (torch.Size([4, 3, 16, 16]), ['ant', 'bee'], 4)
    """
    _check_loader_args(batch_size, num_workers, limit)
    train_tf = imagefolder_transforms(True, image_size, cutout=cutout, mean=mean, std=std, auto_augment=auto_augment)
    val_tf = imagefolder_transforms(False, image_size, mean=mean, std=std)
    train_dir, val_dir = _imagefolder_splits(Path(root))
    train_ds = ImageFolderSplit(train_dir, train_tf, limit=limit)
    val_ds = ImageFolderSplit(val_dir, val_tf, classes=train_ds.classes, limit=limit)
    return _loaders(train_ds, val_ds, batch_size, num_workers, device, seed)


def data_kind(path: str | os.PathLike) -> str:
    """What :func:`make_loaders` will read at ``path``: ``"npz"`` (a path ending in ``.npz``),
    ``"imagefolder"`` (a folder with a ``train/`` sub-folder) or ``"cifar-folder"`` (any other path: a
    folder for torchvision's CIFAR, made by ``download=True``).

    >>> import tempfile, os
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "train"))
    >>> data_kind("cifar10_subset.npz"), data_kind(root), data_kind("data")
    ('npz', 'imagefolder', 'cifar-folder')
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir() and (path / "train").is_dir():
        return "imagefolder"
    return "cifar-folder"


def make_loaders(path: str | os.PathLike, *, image_size: int | None = None, dataset: str = "cifar10",
                 download: bool = False, **kwargs) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` for whatever ``path`` holds (:func:`data_kind`): an ``.npz`` or a
    CIFAR folder through :func:`cifar_loaders` (``dataset``, ``download``), an ImageFolder tree through
    :func:`imagefolder_loaders` (``image_size``, default 224). The other keyword arguments
    (``batch_size``, ``num_workers``, ``cutout``, ``limit``, ``device``, ``seed``) go to either.
    ``image_size`` with CIFAR data is an error (CIFAR is 32×32), as is ``auto_augment``
    (ImageFolder only: the CIFAR pipeline keeps its own per-sample transforms).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> imgs = np.zeros((4, 32, 32, 3), np.uint8)
    >>> np.savez(path, x_train=imgs, y_train=np.arange(4), x_test=imgs, y_test=np.arange(4))
    >>> train, _ = make_loaders(path, batch_size=2, num_workers=0)
    >>> type(train.dataset).__name__
    'NpzDataset'
    """
    kind = data_kind(path)
    if kind == "imagefolder":
        return imagefolder_loaders(path, image_size=224 if image_size is None else image_size, **kwargs)
    if image_size is not None and image_size != 32:
        raise FxswapError(f"image_size={image_size} applies to an ImageFolder tree ({IMAGEFOLDER_LAYOUT}); "
                          f"{path} is CIFAR data ({'.npz' if kind == 'npz' else 'torchvision folder'}), 32×32 images")
    if kwargs.get("auto_augment") is not None:
        raise FxswapError(f"auto_augment={kwargs['auto_augment']!r} applies to an ImageFolder tree "
                          f"({IMAGEFOLDER_LAYOUT}); {path} is CIFAR data (its per-sample transforms stay)")
    kwargs.pop("auto_augment", None)
    return cifar_loaders(path, dataset=dataset, download=download, **kwargs)
