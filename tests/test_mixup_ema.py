"""Issue 20 item 3: timm Mixup/CutMix and ModelEmaV3 in fit, transforms.v2 auto-augment for ImageFolder data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader, TensorDataset

import fxswap
from fxswap.cli.main import main
from fxswap.distillation import Distiller
from fxswap.distillation.augment import mix_batch, resolve_mixup
from fxswap.distillation.checkpoint import CHECKPOINT, EMA_STUDENT, load_checkpoint
from fxswap.distillation.loop import fit
from fxswap.errors import DistillError, FxswapError
from fxswap.losses import kd_loss

MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)


def _data(n=24, classes=10, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _linear_student(classes=10, size=16):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes))


class Recording(Distiller):
    """Keeps every batch it is given, the student's state before each step and the closed-form soft CE."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.states, self.expected = [], [], []

    def forward(self, x, y):
        self.seen.append((x.detach().clone(), y.detach().clone()))
        self.states.append({k: v.detach().clone() for k, v in self.student.state_dict().items()})
        with torch.no_grad():
            if y.ndim == 2:
                self.expected.append(SoftTargetCrossEntropy()(self.student(x), y))
        return super().forward(x, y)


def test_mixup_changes_the_batches_and_ce_takes_the_soft_targets():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    d = Recording(None, _linear_student())
    logged = []
    fit(d, loader, epochs=1, preset="cosine", precision="fp32", progress=False, log_every=1, mixup=MIX,
        callbacks=[type("C", (fxswap.distillation.callbacks.Callback,), {
            "log_steps": True, "on_train_log": lambda self, r: logged.append(r["means"]["ce"])})()])
    assert len(d.seen) == 3
    for i, (xm, ym) in enumerate(d.seen):
        assert ym.shape == (8, 10) and ym.dtype == torch.float32
        assert torch.allclose(ym.sum(1), torch.ones(8))
        assert float(ym.min()) >= 0.1 / 10 - 1e-6  # label smoothing puts e/C on every class
        assert not torch.equal(xm, x[8 * i:8 * i + 8])  # mixed or cut
    assert torch.equal(loader.dataset.tensors[0], x)  # the data itself is not mixed in place
    # the logged ce of the first step (log_every=1: the first mean is that step's value) is timm's soft CE
    assert logged and abs(logged[0] - float(d.expected[0])) < 1e-5


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 6), alpha=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_label_terms_take_soft_targets_in_closed_form(n, c, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    y = torch.softmax(torch.randn(n, c, generator=g), 1)
    soft_ce = SoftTargetCrossEntropy()(s, y)
    soft_kd = kd_loss(s, t, None, alpha=1.0)
    assert torch.allclose(kd_loss(s, t, y, alpha=alpha), alpha * soft_kd + (1 - alpha) * soft_ce, atol=1e-5)
    d = Distiller(None, torch.nn.Identity())
    assert torch.allclose(d(s, y)[1]["ce"], soft_ce, atol=1e-6)
    with pytest.raises(FxswapError, match="class probabilities"):
        kd_loss(s, t, y[:, :1], alpha=alpha)


def test_kd_and_at_train_under_mixup_with_finite_loss_and_odd_batches():
    x, y = _data(n=21)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # odd: the last sample of each batch is unmixed
    teacher = fxswap.models.wrn(10, 1)
    d = Distiller(teacher, fxswap.cheapen(teacher, "G(N/2)"), {"at": 1000.0, "kd": 0.9})
    hist = fit(d, loader, loader, epochs=1, preset="cosine", precision="fp32", progress=False, mixup=MIX)
    assert all(np.isfinite(hist[0][k]) for k in ("train_loss", "train_at", "train_kd", "val_loss"))
    assert 0 <= hist[0]["train_acc"] <= 1  # against the argmax of the soft targets


def test_mixup_odd_batch_keeps_the_last_sample():
    mixer = resolve_mixup(dict(mixup_alpha=1.0, label_smoothing=0.0), torch.nn.Linear(2, 4))
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 3])
    xm, ym = mix_batch(mixer, x, y)
    assert torch.equal(xm[2], x[2]) and torch.equal(ym[2], F.one_hot(y[2], 4).float())


@pytest.mark.parametrize("bad, says", [(dict(mixup_alpha=-1.0), "mixup_alpha"), (dict(label_smoothing=1.0), "[0, 1)"),
                                       (dict(nope=1.0), "accepted"), ("yes", "timm.data.Mixup")])
def test_bad_mixup_is_a_clear_error(bad, says):
    x, y = _data(n=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(DistillError, match=None if says is None else says.replace("[", r"\[").replace(")", r"\)")):
        fit(Distiller(None, _linear_student()), loader, epochs=1, progress=False, precision="fp32", mixup=bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, True, "0.9"])
def test_bad_ema_is_a_clear_error(bad):
    x, y = _data(n=8)
    with pytest.raises(DistillError, match="decay in"):
        fit(Distiller(None, _linear_student()), DataLoader(TensorDataset(x, y), batch_size=4), epochs=1,
            progress=False, ema=bad)


def test_ema_is_the_closed_form_average_and_written(tmp_path):
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    d, decay = Recording(None, _linear_student()), 0.7
    hist = fit(d, loader, loader, epochs=2, preset="cosine", precision="fp32", progress=False, out_dir=tmp_path,
               ema=decay)
    states = d.states[1:] + [d.student.state_dict()]  # the student after each of the 6 steps
    ema = {k: v.clone() for k, v in d.states[0].items()}  # the copy made before the first step
    for s in states:
        ema = {k: decay * ema[k] + (1 - decay) * s[k] for k in ema}
    saved = torch.load(tmp_path / EMA_STUDENT, weights_only=True)
    for k in ema:
        assert torch.allclose(saved[k], ema[k], atol=1e-6), k
    assert not torch.allclose(saved["1.weight"], d.student.state_dict()["1.weight"])  # the student stays as trained
    assert {"val_acc_ema", "val_loss_ema"} <= set(hist[-1])
    assert "ema" in load_checkpoint(tmp_path / CHECKPOINT)


class _Interrupt(Exception):
    pass


def _stop_after_first(row):
    if row["epoch"] == 1:
        raise _Interrupt


def test_ema_and_mixup_resume_exactly(tmp_path):
    def run(out, **kw):
        x, y = _data()
        torch.manual_seed(1)
        teacher = fxswap.models.wrn(10, 1)
        d = Distiller(teacher, fxswap.cheapen(teacher, "G(N/2)"), {"at": 1000.0, "kd": 0.9})
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
        return d, fit(d, loader, loader, epochs=2, preset="cosine", precision="fp32", progress=False, out_dir=out,
                      seed=3, mixup=MIX, ema=0.9, **kw)

    _, full = run(tmp_path / "full")
    with pytest.raises(_Interrupt):
        run(tmp_path / "cut", on_epoch=_stop_after_first)
    d, resumed = run(tmp_path / "cut", resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip
    a = torch.load(tmp_path / "full" / EMA_STUDENT, weights_only=True)
    b = torch.load(tmp_path / "cut" / EMA_STUDENT, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_the_checkpoints_ema_is_refused(tmp_path):
    x, y = _data(n=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    fit(Distiller(None, _linear_student()), loader, epochs=1, progress=False, out_dir=tmp_path)
    with pytest.raises(DistillError, match="without an EMA"):
        fit(Distiller(None, _linear_student()), loader, epochs=2, progress=False, out_dir=tmp_path, resume=True,
            ema=0.9)


def _tree(root, size=(20, 20)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("policy, kind", [("randaugment", "RandAugment"), ("trivialaugment", "TrivialAugmentWide")])
def test_auto_augment_is_applied_to_imagefolder_training(tmp_path, policy, kind, monkeypatch):
    from torchvision.transforms import v2

    root = _tree(tmp_path)
    train, val = fxswap.data.imagefolder_loaders(root, image_size=16, batch_size=4, num_workers=0, seed=0,
                                                 auto_augment=policy)
    names = [type(t).__name__ for t in train.dataset.transform.transforms]
    assert kind in names and kind not in [type(t).__name__ for t in val.dataset.transform.transforms]
    calls = []
    cls = getattr(v2, kind)
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a: calls.append(1) or original(self, *a))
    xb, _ = next(iter(train))
    assert len(calls) == 4 and xb.shape == (4, 3, 16, 16) and torch.isfinite(xb).all()


def test_auto_augment_refuses_unknown_names_and_cifar(tmp_path):
    with pytest.raises(FxswapError, match="randaugment, trivialaugment"):
        fxswap.data.imagefolder_transforms(True, 16, auto_augment="autoaugment")
    path = tmp_path / "c.npz"
    imgs = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(path, x_train=imgs, y_train=np.arange(4), x_test=imgs, y_test=np.arange(4))
    with pytest.raises(FxswapError, match="applies to an ImageFolder"):
        fxswap.data.make_loaders(path, batch_size=2, num_workers=0, auto_augment="randaugment")


DISTILL = ["distill", "--teacher", "wrn-10-1", "--student", "G(N/4)", "--epochs", "1", "--batch-size", "8",
           "--workers", "0", "--no-progress"]


def test_cli_flags_reach_fit_and_ema_export(tmp_path, capsys):
    root = _tree(tmp_path / "data", size=(24, 24))
    out = tmp_path / "run"
    argv = DISTILL + ["--data", str(root), "--image-size", "16", "--precision", "fp32", "--mixup", "0.8", "--cutmix",
                      "1.0", "--label-smoothing", "0.1", "--ema", "0.5", "--ema-export", "--auto-augment",
                      "trivialaugment", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    row = json.loads((out / "student" / "history.jsonl").read_text().splitlines()[-1])
    assert "val_acc_ema" in row
    ema = torch.load(out / "student" / EMA_STUDENT, weights_only=True)
    student = fxswap.load_student(out / "student.pt")
    assert all(torch.equal(student.state_dict()[k], v) for k, v in ema.items())


@pytest.mark.parametrize("extra, says", [(["--ema", "1.5"], "decay in"), (["--label-smoothing", "1"], "[0, 1)"),
                                         (["--ema-export"], "needs --ema and --out")])
def test_cli_bad_regularisers_exit_2(extra, says, capsys, tmp_path):
    assert main(DISTILL + ["--data", str(tmp_path / "x.npz"), *extra]) == 2
    assert says in capsys.readouterr().err
