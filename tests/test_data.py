"""Tests of fxswap.data on tiny generated files (nothing under /work/shared is needed)."""

from __future__ import annotations

import doctest
import pickle

import numpy as np
import pytest
import torch

import fxswap.data.datasets as D
from fxswap.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Cutout,
    NpzDataset,
    RandomCropPad,
    RandomHorizontalFlip,
    cifar_loaders,
    cifar_transforms,
)
from fxswap.errors import FxswapError


def make_arrays(n_train=20, n_test=12, classes=10, seed=0, hw=32):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, hw, hw, 3), dtype=np.uint8),
        "y_train": rng.integers(0, classes, size=n_train).astype(np.int64),
        "x_test": rng.integers(0, 256, size=(n_test, hw, hw, 3), dtype=np.uint8),
        "y_test": rng.integers(0, classes, size=n_test).astype(np.int64),
    }


@pytest.fixture
def arrays():
    return make_arrays()


@pytest.fixture
def npz(tmp_path, arrays):
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays, class_names=np.array([f"c{i}" for i in range(10)]))
    return path


# ---------------------------------------------------------------------------
# NpzDataset
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_npz_dataset_shapes_dtypes_values(npz, arrays, split):
    ds = NpzDataset(npz, split)
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    assert len(ds) == len(y)
    for i in (0, 3, len(ds) - 1):
        img, label = ds[i]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert isinstance(label, int) and label == y[i]
        # NHWC uint8 → CHW float in [0, 1], pixel by pixel
        for c, h, w in [(0, 0, 0), (2, 31, 5), (1, 7, 30)]:
            assert float(img[c, h, w]) == pytest.approx(x[i, h, w, c] / 255.0)
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert ds.targets.dtype == torch.int64
    assert 0 <= int(ds.targets.min()) and int(ds.targets.max()) < 10
    assert ds.classes == [f"c{i}" for i in range(10)] and ds.num_classes == 10


def test_npz_dataset_limit_and_transform(npz, arrays):
    ds = NpzDataset(npz, "train", transform=lambda t: t * 0 + 7, limit=5)
    assert len(ds) == 5
    assert ds.targets.tolist() == arrays["y_train"][:5].tolist()
    img, _ = ds[4]
    assert torch.all(img == 7)
    with pytest.raises(IndexError):
        ds[5]


def test_npz_missing_arrays_named(tmp_path, arrays):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"])
    assert len(NpzDataset(path, "train")) == 20  # the train split has what it needs
    with pytest.raises(FxswapError) as err:
        NpzDataset(path, "test")
    msg = str(err.value)
    assert "y_test" in msg and "x_train, y_train, x_test, y_test" in msg
    assert "lacks the array(s) y_test." in msg  # only the missing one is named as missing
    with pytest.raises(FxswapError, match="y_test"):
        cifar_loaders(path, num_workers=0)


def test_npz_errors(tmp_path, arrays):
    with pytest.raises(FxswapError, match="no file"):
        NpzDataset(tmp_path / "nope.npz")
    with pytest.raises(FxswapError, match="split"):
        NpzDataset(tmp_path / "nope.npz", "val")
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(FxswapError, match="cannot read"):
        NpzDataset(bad)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x_train=np.zeros((4, 32, 32, 3), dtype=np.float32)), "uint8"),
        (dict(x_train=np.zeros((4, 3, 32, 32), dtype=np.uint8)), "N×H×W×C"),
        (dict(x_train=np.zeros((4, 32, 32, 3), dtype=np.uint8), y_train=np.zeros(5, dtype=np.int64)), "one label per image"),
        (dict(x_train=np.zeros((2, 32, 32, 3), dtype=np.uint8), y_train=np.array([0.5, 1.0])), "integers"),
        (dict(x_train=np.zeros((2, 32, 32, 3), dtype=np.uint8), y_train=np.array([0, -1])), ">= 0"),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, change, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **{**arrays, **change})
    with pytest.raises(FxswapError, match=match):
        NpzDataset(path, "train")


def test_npz_pickled_object_array_is_refused(tmp_path, arrays):
    path = tmp_path / "obj.npz"
    np.savez(path, **{**arrays, "y_train": np.array([{"a": 1}] * 20, dtype=object)})
    with pytest.raises(FxswapError, match="allow_pickle=False"):
        NpzDataset(path, "train")


# ---------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------


def test_eval_transform_is_exact_normalisation():
    torch.manual_seed(0)
    x = torch.rand(3, 32, 32)
    out = cifar_transforms(train=False, cutout=8)(x)  # cutout is ignored when not training
    xn = x.numpy()
    for c in range(3):
        expected = (xn[c] - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        np.testing.assert_allclose(out[c].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_train_transform_keeps_shape_and_has_the_papers_steps():
    tf = cifar_transforms(train=True, cutout=8)
    kinds = [type(m).__name__ for m in tf]
    assert kinds == ["RandomCropPad", "RandomHorizontalFlip", "Normalize", "Cutout"]
    assert tf[0].size == 32 and tf[0].padding == 4 and tf[1].p == 0.5
    assert "Cutout" not in [type(m).__name__ for m in cifar_transforms(train=True)]
    torch.manual_seed(1)
    for _ in range(5):
        assert tf(torch.rand(3, 32, 32)).shape == (3, 32, 32)
    with pytest.raises(FxswapError):
        cifar_transforms(train=True, cutout=-1)


def test_crop_and_flip_are_shifted_zero_padded_windows():
    torch.manual_seed(2)
    x = torch.rand(3, 32, 32) + 0.5  # no zeros in the image itself
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    crop_flip = torch.nn.Sequential(RandomCropPad(32, 4), RandomHorizontalFlip(0.5))
    offsets, flips = set(), set()
    for _ in range(40):
        out = crop_flip(x)
        found = [
            (i, j, f)
            for i in range(9)
            for j in range(9)
            for f in (False, True)
            if torch.equal(out, padded[:, i : i + 32, j : j + 32].flip(-1) if f else padded[:, i : i + 32, j : j + 32])
        ]
        assert len(found) == 1, "output is not a (flipped) window of the zero-padded image"
        offsets.add(found[0][:2])
        flips.add(found[0][2])
    assert flips == {False, True}
    assert len(offsets) > 5


def test_flip_probability_extremes():
    x = torch.arange(12.0).view(1, 3, 4)
    assert torch.equal(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)
    with pytest.raises(FxswapError):
        RandomHorizontalFlip(2.0)


def test_cutout_zeroes_one_square():
    torch.manual_seed(3)
    size = 8
    x = torch.ones(3, 32, 32)
    full_squares = 0
    for _ in range(60):
        out = Cutout(size)(x)
        assert torch.all(x == 1)  # input untouched
        zero = out == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        rows = zero[0].any(1)
        cols = zero[0].any(0)
        assert zero[0].any()
        # the zeroed pixels form exactly one axis-aligned rectangle ...
        assert torch.equal(zero[0], rows[:, None] & cols[None, :])
        r_idx, c_idx = rows.nonzero().flatten(), cols.nonzero().flatten()
        assert int(r_idx[-1] - r_idx[0] + 1) == int(rows.sum())  # contiguous
        assert int(c_idx[-1] - c_idx[0] + 1) == int(cols.sum())
        # ... of at most size × size (clipped at the border), and it is all that changed
        assert int(rows.sum()) <= size and int(cols.sum()) <= size
        assert torch.all(out[~zero] == 1)
        full_squares += int(rows.sum()) == size and int(cols.sum()) == size
    assert full_squares > 0


def test_cutout_zero_size_is_identity_and_negative_raises():
    x = torch.rand(3, 8, 8)
    assert torch.equal(Cutout(0)(x), x)
    with pytest.raises(FxswapError):
        Cutout(-2)


# ---------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------


def test_cifar_loaders_from_npz(npz, arrays):
    train, val = cifar_loaders(npz, batch_size=8, num_workers=0, cutout=4, device="cpu")
    assert len(train.dataset) == 20 and len(val.dataset) == 12
    assert train.pin_memory is False and val.pin_memory is False
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10
    # validation: file order, normalisation only
    xv, yv = next(iter(val))
    assert yv.tolist() == arrays["y_test"][:8].tolist()
    expected = (arrays["x_test"][0].transpose(2, 0, 1) / 255.0 - np.array(CIFAR10_MEAN)[:, None, None]) / np.array(
        CIFAR10_STD
    )[:, None, None]
    np.testing.assert_allclose(xv[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert sum(b[0].shape[0] for b in val) == 12


def test_cifar_loaders_limit_seed_and_workers(npz):
    train, val = cifar_loaders(npz, batch_size=4, num_workers=0, limit=6, seed=123)
    assert len(train.dataset) == 6 and len(val.dataset) == 6
    first = [y.tolist() for _, y in train]
    train2, _ = cifar_loaders(npz, batch_size=4, num_workers=0, limit=6, seed=123)
    assert [y.tolist() for _, y in train2] == first
    # worker processes can pickle the dataset and transforms
    train_w, _ = cifar_loaders(npz, batch_size=5, num_workers=1)
    x, _ = next(iter(train_w))
    assert x.shape == (5, 3, 32, 32)


def test_cifar_loaders_pin_memory_follows_device(npz):
    train, _ = cifar_loaders(npz, num_workers=0)
    assert train.pin_memory == torch.cuda.is_available()
    train, _ = cifar_loaders(npz, num_workers=0, device="cuda")
    assert train.pin_memory == torch.cuda.is_available()


def test_cifar_loaders_label_range_checked(tmp_path):
    arrays = make_arrays(classes=100)
    arrays["y_train"][0] = 57
    path = tmp_path / "c100.npz"
    np.savez(path, **arrays)
    with pytest.raises(FxswapError, match="cifar100"):
        cifar_loaders(path, num_workers=0, dataset="cifar10")
    train, _ = cifar_loaders(path, num_workers=0, dataset="cifar100")
    assert train.dataset.num_classes == 100
    assert torch.allclose(train.dataset.transform[2].mean.flatten(), torch.tensor(D.CIFAR100_MEAN))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="mnist"), "cifar10"),
        (dict(batch_size=0), "batch_size"),
        (dict(limit=0), "limit"),
        (dict(num_workers=-1), "num_workers"),
    ],
)
def test_cifar_loaders_bad_arguments(npz, kwargs, match):
    with pytest.raises(FxswapError, match=match):
        cifar_loaders(npz, **{"num_workers": 0, **kwargs})


def test_cifar_loaders_missing_paths(tmp_path):
    with pytest.raises(FxswapError, match="no .npz file"):
        cifar_loaders(tmp_path / "absent.npz", num_workers=0)
    with pytest.raises(FxswapError, match="download=True"):
        cifar_loaders(tmp_path / "absent_folder", num_workers=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FxswapError, match="download=True"):
        cifar_loaders(empty, num_workers=0, download=False)


def test_cifar_loaders_torchvision_folder_format(tmp_path, monkeypatch):
    """A tiny fake cifar-10-batches-py folder (integrity check bypassed; no network)."""
    import torchvision

    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(4)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        data = rng.integers(0, 256, size=(3, 3 * 32 * 32), dtype=np.uint8)  # CHW rows, as CIFAR stores them
        labels = rng.integers(0, 10, size=3).tolist()
        batches[name] = (data, labels)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"n{i}" for i in range(10)]}, f)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)

    train, val = cifar_loaders(tmp_path / "cifar", batch_size=4, num_workers=0, limit=10)
    assert len(train.dataset) == 10 and len(val.dataset) == 3
    assert train.dataset.classes == [f"n{i}" for i in range(10)]
    assert val.dataset.targets.tolist() == batches["test_batch"][1]
    img, label = val.dataset.images[1], int(val.dataset.targets[1])
    assert torch.equal(img, torch.from_numpy(batches["test_batch"][0][1].reshape(3, 32, 32)))
    assert label == batches["test_batch"][1][1]
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("error", ["url", "connection"])
def test_a_failed_cifar_download_is_named_as_such_not_damaged_files(tmp_path, monkeypatch, error):
    """Offline, download=True fails in urllib (a URLError is an OSError): the message says the download
    failed and what to give instead, not that the batch files look damaged."""
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise (urllib.error.URLError("[Errno -3] Temporary failure in name resolution") if error == "url"
               else ConnectionResetError(104, "Connection reset by peer"))

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"downloading cifar10 into .* failed \(offline\?\)") as caught:
        cifar_loaders(tmp_path / "cifar", num_workers=0, download=True)
    assert "damaged" not in str(caught.value) and ".npz" in str(caught.value)


def test_docstring_examples_run():
    result = doctest.testmod(D)
    assert result.attempted > 3
    assert result.failed == 0


# ---------------------------------------------------------------------------
# broken files and arrays: each a DataError naming the file, the array and what is accepted
# ---------------------------------------------------------------------------

from fxswap.errors import DataError  # noqa: E402


def _crafted_npz(path, header: dict, data: bytes, arrays: dict | None = None):
    """An .npz whose ``x_train.npy`` has ``header`` (shape/dtype as claimed) and ``data`` as its bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", np.lib.format.magic(1, 0) + buf.getvalue()[len(np.lib.format.magic(1, 0)):] + data)
        for k, v in (arrays or {}).items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())
    return path


def test_npy_renamed_npz_is_named(tmp_path):
    path = tmp_path / "data.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"single \.npy array \(np\.save\) renamed \.npz.*x_train, y_train"):
        NpzDataset(path)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.npz is empty \(0 bytes\)"):
        cifar_loaders(path, num_workers=0)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_named(npz, keep):
    data = npz.read_bytes()
    npz.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=str(npz.name)):
        cifar_loaders(npz, num_workers=0)


def test_header_claiming_9_tib_is_refused_before_allocating(tmp_path):
    path = _crafted_npz(tmp_path / "huge.npz",
                        {"descr": "|u1", "fortran_order": False, "shape": (9 * 2**40 // 3072, 32, 32, 3)},
                        b"\0" * 3072, {"y_train": np.zeros(1, np.int64)})
    with pytest.raises(DataError, match=r"huge\.npz \[x_train\].*claims shape .* but the file holds 3,072 bytes"):
        NpzDataset(path)


def test_header_disagreeing_with_the_data_is_refused(tmp_path):
    path = _crafted_npz(tmp_path / "short.npz", {"descr": "<i8", "fortran_order": False, "shape": (4,)}, b"\1" * 8,
                        {"y_train": np.zeros(4, np.int64)})
    with pytest.raises(DataError, match=r"\[x_train\].*\(32 bytes\) but the file holds 8 bytes"):
        NpzDataset(path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_is_named(tmp_path, arrays, split):
    arrays[f"x_{split}"], arrays[f"y_{split}"] = np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)
    path = tmp_path / "e.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"e\.npz \[x_{split}, y_{split}\]: the split is empty"):
        cifar_loaders(path, num_workers=0)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.full(20, 10), r"labels go up to 10 but dataset='cifar10' has 10 classes"),
        (np.full(20, 2**40), r"class indices"),
        (np.r_[np.zeros(19, np.int64), -3], r"labels must be >= 0, found -3"),
        (np.array(["cat"] * 20), r"labels must be integers.*got dtype <U3"),
        (np.ones(20, bool), r"labels must be integers.*got dtype bool"),
        (np.ones(20, np.float32), r"labels must be integers.*got dtype float32"),
    ],
    ids=["out-of-range", "huge", "negative", "strings", "bool", "float"],
)
def test_bad_labels_are_named(tmp_path, arrays, labels, match):
    path = tmp_path / "l.npz"
    np.savez(path, **{**arrays, "y_train": labels})
    with pytest.raises(DataError, match=match) as err:
        cifar_loaders(path, num_workers=0)
    assert "l.npz" in str(err.value)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((20, 32, 32, 1), np.uint8), r"32×32 RGB images .*got N×32×32×1"),
        (np.zeros((20, 32, 32, 4), np.uint8), r"RGBA\?\): drop the alpha channel"),
        (np.zeros((20, 3, 32, 32), np.uint8), r"channels-first \(N×C×H×W\)"),
        (np.zeros((20, 64, 64, 3), np.uint8), r"32×32 RGB images .*got N×64×64×3.*two resolutions"),
        (np.zeros((20, 32, 32), np.uint8), r"N×H×W×C .*got shape \(20, 32, 32\)"),
    ],
    ids=["1-channel", "RGBA", "channels-first", "64x64", "no-channel-axis"],
)
def test_images_the_cifar_pipeline_cannot_take_are_named(tmp_path, arrays, images, match):
    path = tmp_path / "i.npz"
    np.savez(path, **{**arrays, "x_train": images})
    with pytest.raises(DataError, match=match) as err:
        cifar_loaders(path, num_workers=0)
    assert "i.npz [x_train" in str(err.value)


def test_64px_images_in_one_split_only_are_named(tmp_path):
    arrays = make_arrays()
    arrays["x_test"] = np.zeros((12, 64, 64, 3), np.uint8)
    path = tmp_path / "mixed.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"mixed\.npz \[x_test\]: the CIFAR pipeline takes 32×32"):
        cifar_loaders(path, num_workers=0)


def test_class_names_shorter_than_the_labels_are_named(tmp_path, arrays):
    arrays["y_train"] %= 2
    arrays["y_train"][0] = 7
    path = tmp_path / "c.npz"
    np.savez(path, **arrays, class_names=np.array(["cat", "dog"]))
    with pytest.raises(DataError, match=r"c\.npz .*labels go up to 7 but class_names has only 2 name\(s\)"):
        cifar_loaders(path, num_workers=0)


def test_class_names_not_one_dimensional_are_named(tmp_path, arrays):
    path = tmp_path / "c.npz"
    np.savez(path, **arrays, class_names=np.array([["a", "b"]] * 5))
    with pytest.raises(DataError, match=r"class_names must be a 1-D array"):
        NpzDataset(path)


def test_big_endian_and_fortran_arrays_read_as_written(tmp_path, arrays):
    path = tmp_path / "be.npz"
    x = np.asfortranarray(arrays["x_train"])
    y = arrays["y_train"].astype(">i4")
    np.savez(path, **{**arrays, "x_train": x, "y_train": y})
    ds = NpzDataset(path)
    assert torch.equal(ds.images, torch.from_numpy(arrays["x_train"].transpose(0, 3, 1, 2).copy()))
    assert ds.targets.tolist() == arrays["y_train"].tolist()


def test_compressed_npz_reads_as_written(tmp_path, arrays):
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **arrays)
    assert NpzDataset(path, "test").targets.tolist() == arrays["y_test"].tolist()


def test_damaged_torchvision_folder_is_named(tmp_path, monkeypatch):
    import torchvision

    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (base / name).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})[:20])
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    with pytest.raises(DataError, match=r"cannot read cifar10 in torchvision's format under .*cifar.*damaged"):
        cifar_loaders(tmp_path / "cifar", num_workers=0)
