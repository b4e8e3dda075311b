"""ImageFolder data beside CIFAR: layout checks, labels, sizes, normalisation, and --data DIR on the CLI."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from fxswap.data import (IMAGENET_MEAN, IMAGENET_STD, ImageFolderSplit, data_kind, imagefolder_loaders,
                         make_loaders)
from fxswap.errors import DataError, FxswapError


def _write_tree(root, classes=("ant", "bee", "cat"), per_class=3, val_classes=None, seed=0, sizes=((40, 30),)):
    """Random RGB PNGs of assorted sizes under root/train/<class>/ and root/val/<class>/."""
    rng = np.random.default_rng(seed)
    for split, names in (("train", classes), ("val", classes if val_classes is None else val_classes)):
        for c in names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_loaders_give_image_size_batches_labelled_by_class_folder(tmp_path):
    root = _write_tree(tmp_path, sizes=((40, 30), (17, 50), (64, 64)))
    train, val = imagefolder_loaders(root, image_size=24, batch_size=4, num_workers=0, seed=0)
    assert train.dataset.classes == ["ant", "bee", "cat"] and train.dataset.num_classes == 3
    assert len(train.dataset) == 9 and len(val.dataset) == 9
    xs, ys = zip(*train)
    assert all(x.shape[1:] == (3, 24, 24) and x.dtype == torch.float32 for x in xs)
    assert sorted(torch.cat(ys).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for path, label in val.dataset.samples:
        assert path.split("/")[-2] == ["ant", "bee", "cat"][label]


def test_validation_is_a_deterministic_centre_crop_normalised_with_imagenet_statistics(tmp_path):
    colour = (200, 30, 90)
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (50, 35), colour).save(tmp_path / split / "only" / "a.png")
    _, val = imagefolder_loaders(tmp_path, image_size=16, batch_size=1, num_workers=0)
    x, _ = val.dataset[0]
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)]
    assert x.shape == (3, 16, 16)
    for ch in range(3):
        assert torch.allclose(x[ch], torch.full((16, 16), expected[ch]), atol=1e-5)
    assert torch.equal(val.dataset[0][0], x)  # no randomness in validation


def test_a_validation_split_missing_a_class_keeps_the_training_labels(tmp_path):
    root = _write_tree(tmp_path, per_class=1, val_classes=("bee", "cat"))
    train, val = imagefolder_loaders(root, image_size=8, num_workers=0)
    assert val.dataset.classes == train.dataset.classes == ["ant", "bee", "cat"]
    assert sorted(val.dataset.targets) == [1, 2]


def test_hidden_folders_are_not_classes(tmp_path):
    root = _write_tree(tmp_path, per_class=1)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / ".ipynb_checkpoints" / "x.png")
    train, _ = imagefolder_loaders(root, image_size=8, num_workers=0)
    assert train.dataset.classes == ["ant", "bee", "cat"] and len(train.dataset) == 3


def test_limit_keeps_every_class(tmp_path):
    root = _write_tree(tmp_path, per_class=4)
    train, _ = imagefolder_loaders(root, image_size=8, num_workers=0, limit=3)
    assert len(train.dataset) == 3 and sorted(train.dataset.targets) == [0, 1, 2]


def test_worker_processes_read_the_split(tmp_path):
    root = _write_tree(tmp_path, per_class=2)
    train, _ = imagefolder_loaders(root, image_size=8, batch_size=3, num_workers=1, seed=0)
    assert sum(len(y) for _, y in train) == 6


def _no_val(root):
    _write_tree(root)
    for p in sorted((root / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "val").rmdir()


def _flat_train(root):
    _write_tree(root)
    Image.new("RGB", (8, 8)).save(root / "train" / "loose.png")
    for c in ("ant", "bee", "cat"):
        for p in (root / "train" / c).iterdir():
            p.unlink()
        (root / "train" / c).rmdir()


def _empty_class(root):
    _write_tree(root)
    for p in (root / "train" / "bee").iterdir():
        p.unlink()
    (root / "train" / "bee" / "notes.txt").write_text("no images here")


def _extra_val_class(root):
    _write_tree(root, val_classes=("ant", "zebra"))


@pytest.mark.parametrize("make, says", [
    (_no_val, "has no val/ folder"),
    (lambda root: (root / "val").mkdir(), "has no train/ folder"),
    (_flat_train, "has no class sub-folders (it holds images directly: loose.png"),
    (_empty_class, "bee"),
    (_extra_val_class, "zebra"),
])
def test_a_wrong_layout_is_a_data_error_naming_the_accepted_one(tmp_path, make, says):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError) as info:
        imagefolder_loaders(root, image_size=8, num_workers=0)
    assert says in str(info.value) and "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>" in str(info.value)


def test_a_file_that_is_not_an_image_is_named_when_read(tmp_path):
    root = _write_tree(tmp_path, per_class=1)
    (root / "val" / "ant" / "0.png").write_bytes(b"not a png")
    _, val = imagefolder_loaders(root, image_size=8, num_workers=0)
    with pytest.raises(DataError, match=r"ant/0\.png as an image"):
        list(val)


def test_make_loaders_picks_the_reader_from_the_path(tmp_path):
    root = _write_tree(tmp_path / "tree", per_class=1)
    npz = tmp_path / "tiny.npz"
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    np.savez(npz, x_train=imgs, y_train=np.arange(2), x_test=imgs, y_test=np.arange(2))
    assert (data_kind(root), data_kind(npz), data_kind(tmp_path)) == ("imagefolder", "npz", "cifar-folder")
    train, _ = make_loaders(root, image_size=12, batch_size=2, num_workers=0)
    assert isinstance(train.dataset, ImageFolderSplit) and next(iter(train))[0].shape == (2, 3, 12, 12)
    train, _ = make_loaders(npz, batch_size=2, num_workers=0)
    assert next(iter(train))[0].shape == (2, 3, 32, 32)
    with pytest.raises(FxswapError, match="applies to an ImageFolder tree"):
        make_loaders(npz, image_size=64, num_workers=0)
    with pytest.raises(DataError, match="ImageFolder tree"):  # a folder that is neither layout
        make_loaders(tmp_path / "tree" / "train", num_workers=0)


def test_bad_image_size_is_refused(tmp_path):
    root = _write_tree(tmp_path, per_class=1)
    with pytest.raises(FxswapError, match="image_size must be an integer >= 1"):
        imagefolder_loaders(root, image_size=0, num_workers=0)


def test_distill_cli_reads_an_imagefolder_tree(tmp_path, capsys):
    from fxswap.cli import main

    root = _write_tree(tmp_path / "tree", classes=("a", "b"), per_class=4)
    argv = ["distill", "--teacher", "wrn-10-1", "--student", "G(N/4)", "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--no-progress", "--data", str(root), "--image-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ImageFolder" in out and "8 train / 8 val images, 2 classes" in out
    bad = argv[:-4] + ["--data", str(tmp_path / "tree" / "train")]
    assert main(bad) == 2
    assert "ROOT/train/<class>/<image>" in capsys.readouterr().err


_PNG_BYTES = {}


def _png(size):
    if size not in _PNG_BYTES:
        import io

        buf = io.BytesIO()
        Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
        _PNG_BYTES[size] = buf.getvalue()
    return _PNG_BYTES[size]


# mostly good trees with one thing wrong, so that both outcomes are common
_FILES = st.sampled_from(["png"] * 12 + ["tiny", "truncated", "junk", "txt", "empty"])
_TREE = st.fixed_dictionaries({
    "splits": st.sampled_from([("train", "val")] * 4 + [("train", "test"), ("train",), ("val",),
                                                        ("train", "val", "x")]),
    "classes": st.lists(st.sampled_from(["a", "b", "c", ".hidden"]), min_size=1, max_size=3, unique=True),
    "files": st.lists(_FILES, min_size=1, max_size=3),
    "val_extra": st.sampled_from([False] * 4 + [True]),
    "loose": st.sampled_from([False] * 4 + [True]),
})


def _content(kind):
    return {"png": _png((9, 7)), "tiny": _png((1, 1)), "truncated": _png((9, 7))[:40], "junk": b"\x00\x01junk",
            "txt": b"hello", "empty": b""}[kind]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_TREE)
def test_any_tree_loads_or_fails_with_a_data_error(tree, tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for split in tree["splits"]:
        (root / split).mkdir()
        classes = tree["classes"] + (["zzz"] if tree["val_extra"] and split != "train" else [])
        for c in classes:
            (root / split / c).mkdir()
            for i, kind in enumerate(tree["files"]):
                (root / split / c / (f"{i}.txt" if kind == "txt" else f"{i}.png")).write_bytes(_content(kind))
        if tree["loose"]:
            (root / split / "loose.png").write_bytes(_png((4, 4)))
    try:
        train, val = make_loaders(root, image_size=8, batch_size=2, num_workers=0, seed=0)
        for loader in (train, val):
            for x, y in loader:
                assert x.shape[1:] == (3, 8, 8) and bool(torch.isfinite(x).all())
                assert 0 <= int(y.min()) and int(y.max()) < train.dataset.num_classes
        event("loaded")
    except FxswapError as e:
        event(type(e).__name__)  # --hypothesis-show-statistics: how often each outcome is reached
        assert str(e)  # a typed, non-empty error; anything else fails the test
