"""The device-resident pipeline draws from the same distributions as data.py's per-sample transforms."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fxswap
from fxswap.data import CIFAR10_MEAN, CIFAR10_STD, ArrayDataset, cifar_transforms
from fxswap.data.device import DeviceLoader, augment_batch, device_cifar_loaders
from fxswap.errors import FxswapError

H = W = 32


def _position_image() -> np.ndarray:
    """One image whose pixels name their place: R = row + 1, G = col + 1, B = 255 (0 only where padded/cut)."""
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = (np.arange(H) + 1)[:, None]
    img[..., 1] = (np.arange(W) + 1)[None, :]
    img[..., 2] = 255
    return img


def _decode(x: torch.Tensor, padding: int = 4) -> tuple[int, int, bool, int]:
    """(row offset, col offset, flipped, zeroed pixels) of one augmented position image (mean 0, std 1)."""
    vals = (x * 255).round().long()
    visible = vals[2] == 255
    r, c = torch.nonzero(visible, as_tuple=True)
    src_r = vals[0][r, c] - 1
    src_c = vals[1][r, c] - 1
    row = int((src_r - r)[0]) + padding
    d = src_c - c
    flipped = not bool((d == d[0]).all())
    col = int((src_c + c)[0]) - (W - 1) + padding if flipped else int(d[0]) + padding
    return row, col, flipped, int((~visible).sum())


def _stats(batches) -> dict:
    rows, cols, flips, zeros = [], [], [], []
    for x in batches:
        for img in x:
            r, c, f, z = _decode(img)
            rows.append(r), cols.append(c), flips.append(f), zeros.append(z)
    return {"row": np.array(rows), "col": np.array(cols), "flip": np.array(flips), "zeros": np.array(zeros)}


def _chi2_uniform(values: np.ndarray, k: int) -> float:
    counts = np.bincount(values, minlength=k)
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


N_SAMPLES = 3000


@pytest.fixture(scope="module")
def both_pipelines():
    images = np.repeat(_position_image()[None], N_SAMPLES, axis=0)
    torch.manual_seed(0)
    per_sample = ArrayDataset(images, np.zeros(N_SAMPLES, np.int64),
                              transform=cifar_transforms(True, cutout=16, mean=(0, 0, 0), std=(1, 1, 1)))
    reference = _stats([torch.stack([per_sample[i][0] for i in range(N_SAMPLES)])])
    loader = DeviceLoader(images, np.zeros(N_SAMPLES, np.int64), batch_size=500, cutout=16, mean=(0, 0, 0),
                          std=(1, 1, 1), device="cpu", seed=1)
    device = _stats(x for x, _ in loader)
    return reference, device


def test_crop_offsets_uniform_over_the_same_81_cells(both_pipelines):
    reference, device = both_pipelines
    for stats in (reference, device):
        cells = stats["row"] * 9 + stats["col"]
        assert cells.min() >= 0 and cells.max() <= 80
        assert set(cells.tolist()) == set(range(81))
        # chi-square with 80 degrees of freedom: the 99.9 % quantile is about 124.8
        assert _chi2_uniform(cells, 81) < 125


def test_flip_rate_is_one_half_in_both(both_pipelines):
    tol = 4 * math.sqrt(0.25 / N_SAMPLES)
    for stats in both_pipelines:
        assert abs(stats["flip"].mean() - 0.5) < tol
    # flips are independent of the crop in both
    reference, device = both_pipelines
    for stats in (reference, device):
        left = stats["flip"][stats["col"] < 4].mean()
        right = stats["flip"][stats["col"] > 4].mean()
        assert abs(left - right) < 0.1


def test_zeroed_area_padding_plus_cutout_has_the_same_distribution(both_pipelines):
    reference, device = both_pipelines
    a, b = reference["zeros"].astype(float), device["zeros"].astype(float)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se
    assert abs(a.std() - b.std()) < 0.1 * a.std()
    # the clipped cutout: never more than a full 16x16 square plus the padding of a crop
    assert b.max() <= 256 + 2 * 4 * 32 and b.max() > 200


def test_same_images_exactly_without_crop_flip_or_cutout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, H, W, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(20), transform=cifar_transforms(False))
    expected = torch.stack([ds[i][0] for i in range(20)])
    val = DeviceLoader(images, np.arange(20), batch_size=7, train=False, device="cpu")
    x = torch.cat([b[0] for b in val])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    # training mode with padding 0 and no flip: the same images, shuffled (the label names the image)
    train = DeviceLoader(images, np.arange(20), batch_size=8, padding=0, flip=False, device="cpu", seed=3)
    xs, ys = zip(*train)
    y = torch.cat(ys)
    assert sorted(y.tolist()) == list(range(20)) and y.tolist() != list(range(20))
    torch.testing.assert_close(torch.cat(xs), expected[y], rtol=0, atol=1e-6)


def _per_image_reference(img_u8: torch.Tensor, row: int, col: int, flip: bool, cy: int, cx: int, cutout: int,
                         padding: int) -> torch.Tensor:
    """data.py's steps with the random choices given: pad, crop, flip, Normalize, Cutout."""
    x = F.pad(img_u8.float() / 255, (padding,) * 4)[:, row:row + H, col:col + W]
    if flip:
        x = x.flip(-1)
    x = (x - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    if cutout:
        y0, y1 = max(0, cy - cutout // 2), min(H, cy - cutout // 2 + cutout)
        x0, x1 = max(0, cx - cutout // 2), min(W, cx - cutout // 2 + cutout)
        x = x.clone()
        x[:, y0:y1, x0:x1] = 0
    return x


@settings(max_examples=30, deadline=None)
@given(padding=st.integers(0, 6), cutout=st.sampled_from([0, 1, 8, 16, 33]), seed=st.integers(0, 2**31))
def test_batch_equals_per_image_steps_for_the_same_draws(padding, cutout, seed):
    g = torch.Generator().manual_seed(seed)
    b = 6
    images = torch.randint(0, 256, (b, 3, H, W), generator=g, dtype=torch.uint8)
    draws = {"row": torch.randint(0, 2 * padding + 1, (b,), generator=g),
             "col": torch.randint(0, 2 * padding + 1, (b,), generator=g),
             "flip": torch.rand(b, generator=g) < 0.5,
             "cy": torch.randint(0, H, (b,), generator=g), "cx": torch.randint(0, W, (b,), generator=g)}
    out = augment_batch(images, draws, torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD), padding=padding,
                        cutout=cutout)
    for i in range(b):
        ref = _per_image_reference(images[i], int(draws["row"][i]), int(draws["col"][i]), bool(draws["flip"][i]),
                                   int(draws["cy"][i]), int(draws["cx"][i]), cutout, padding)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)


def test_seeded_streams_and_channels_last():
    images = np.random.default_rng(1).integers(0, 256, (40, H, W, 3), dtype=np.uint8)
    a = DeviceLoader(images, np.arange(40), batch_size=16, cutout=8, device="cpu", seed=5)
    b = DeviceLoader(images, np.arange(40), batch_size=16, cutout=8, device="cpu", seed=5, channels_last=True)
    c = DeviceLoader(images, np.arange(40), batch_size=16, cutout=8, device="cpu", seed=6)
    for (xa, ya), (xb, yb), (xc, _) in zip(a, b, c):
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
    # a second pass continues the stream: a new shuffle
    first, second = next(iter(a))[1], next(iter(a))[1]
    assert not torch.equal(first, second)
    assert len(a) == 3 and len(DeviceLoader(images, np.arange(40), batch_size=16, drop_last=True)) == 2


def test_train_and_distill_consume_it_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)  # small images: a fast test
    labels = rng.integers(0, 10, 48)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images[:16], y_test=labels[:16])

    def run():
        torch.manual_seed(0)
        model = fxswap.models.wrn(10, 1)
        train, val = device_cifar_loaders(path, batch_size=16, cutout=8, device="cpu", seed=0)
        hist = fxswap.train(model, train, val, epochs=1, preset="cosine", progress=False, seed=4)
        return model, hist

    m1, h1 = run()
    m2, h2 = run()
    assert h1[0]["epoch"] == 1 and 0.0 <= h1[0]["val_acc"] <= 1.0
    assert h1[0]["train_loss"] == h2[0]["train_loss"]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    # fit reseeds the loader's generator from its own seed: another loader seed changes nothing
    torch.manual_seed(0)
    m3 = fxswap.models.wrn(10, 1)
    train3, _ = device_cifar_loaders(path, batch_size=16, cutout=8, device="cpu", seed=123)
    h3 = fxswap.train(m3, train3, epochs=1, preset="cosine", progress=False, seed=4)
    assert h3[0]["train_loss"] == h1[0]["train_loss"]
    teacher = fxswap.models.wrn(10, 1)
    hist = fxswap.distill(teacher, fxswap.cheapen(teacher, "G(N/4)"), train3, epochs=1, method="at",
                          progress=False)
    assert math.isfinite(hist[0]["train_loss"])


@pytest.mark.parametrize("bad", [np.zeros((4, 32, 32, 3), np.float32), np.zeros((4, 32, 32), np.uint8),
                                 torch.zeros(4, 3, 32, 32)])
def test_bad_images_are_a_clear_error(bad):
    with pytest.raises(FxswapError, match="uint8"):
        DeviceLoader(bad, [0, 1, 2, 3], device="cpu")


def test_bad_labels_and_sizes_are_clear_errors():
    imgs = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(FxswapError, match="one label per image"):
        DeviceLoader(imgs, [0, 1], device="cpu")
    with pytest.raises(FxswapError, match="integers"):
        DeviceLoader(imgs, [0.5, 1, 2, 3], device="cpu")
    with pytest.raises(FxswapError, match="batch_size"):
        DeviceLoader(imgs, [0, 1, 2, 3], batch_size=0, device="cpu")
    with pytest.raises(FxswapError, match="mean"):
        DeviceLoader(imgs, [0, 1, 2, 3], mean=(0.5,), std=(0.5,), device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_without_host_syncs_match_the_cpu_function():
    images = np.random.default_rng(2).integers(0, 256, (512, H, W, 3), dtype=np.uint8)
    loader = DeviceLoader(images, np.arange(512) % 10, batch_size=128, cutout=16, device="cuda", seed=0,
                          channels_last=True)
    it = iter(loader)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [next(it) for _ in range(len(loader))]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    g = torch.Generator(device="cuda").manual_seed(0)
    imgs = loader.images[:64]
    from fxswap.data.device import draw_augmentation

    draws = draw_augmentation(64, H, W, padding=4, flip=True, cutout=16, generator=g, device=imgs.device)
    on_gpu = augment_batch(imgs, draws, loader.mean, loader.std, cutout=16)
    on_cpu = augment_batch(imgs.cpu(), {k: v.cpu() for k, v in draws.items()}, loader.mean.cpu(), loader.std.cpu(),
                           cutout=16)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-6)
