"""The training loop: learning, history, atomic checkpoints, exact resume, NaN handling, presets, CLI."""
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fxswap
from fxswap.distillation import distill, fit, format_history, load_checkpoint, train
from fxswap.distillation.checkpoint import CHECKPOINT, HISTORY, STUDENT
from fxswap.distillation.presets import PRESETS, get_preset
from fxswap.errors import DistillError

try:
    from fxswap.distillation.distiller import Distiller
except ImportError:  # the other half of the package is written in parallel
    Distiller = None

needs_distiller = pytest.mark.skipif(Distiller is None, reason="fxswap.distillation.distiller not available")


class CEDistiller(nn.Module):
    """A stand-in with the Distiller interface: (x, y) -> (loss, logs), .student, .last_logits."""

    def __init__(self, student, scale=1.0):
        super().__init__()
        self.student = student
        self.scale = scale
        self.last_logits = None

    def forward(self, x, y):
        out = self.student(x)
        ce = F.cross_entropy(out, y)
        reg = out.pow(2).mean() * 1e-3 * self.scale
        self.last_logits = out.detach()
        loss = ce + reg
        return loss, {"ce": float(ce.detach()), "reg": float(reg.detach()), "loss": float(loss.detach())}


class NoisyImages(Dataset):
    """Label = brightest of the 4 quadrants of channel 0; per-sample noise from the global torch RNG
    (stands in for random augmentation, so the test sees whether every epoch is reseeded)."""

    def __init__(self, n=96, size=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        h = size // 2
        q = torch.stack([self.x[:, 0, :h, :h].mean((1, 2)), self.x[:, 0, :h, h:].mean((1, 2)),
                         self.x[:, 0, h:, :h].mean((1, 2)), self.x[:, 0, h:, h:].mean((1, 2))], 1)
        self.y = q.argmax(1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.05 * torch.randn(self.x[i].shape), int(self.y[i])


def tiny_cnn(classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))


def loaders(batch=16, workers=0, seed=None, n=96):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    train_ds, val_ds = NoisyImages(n), NoisyImages(48, seed=1)
    kw = dict(num_workers=workers, persistent_workers=workers > 0)
    return (DataLoader(train_ds, batch_size=batch, shuffle=True, generator=gen, **kw),
            DataLoader(val_ds, batch_size=32, **kw))


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip_time(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# ---------------------------------------------------------------------------


def test_loss_goes_down_and_history_is_written(tmp_path):
    tr, va = loaders()
    hist = fit(CEDistiller(tiny_cnn()), tr, va, epochs=4, preset="cosine", lr=0.05, out_dir=tmp_path,
               progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert {"lr", "train_ce", "train_reg", "train_acc", "val_acc", "seconds"} <= set(hist[0])
    lines = (tmp_path / HISTORY).read_text().splitlines()
    assert [json.loads(line) for line in lines] == hist
    assert hist[0]["lr"] == pytest.approx(0.05)
    assert hist[1]["lr"] < hist[0]["lr"]  # cosine per step
    table = format_history(hist)
    assert "val_acc" in table and len(table.splitlines()) == 5


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path, monkeypatch):
    tr, va = loaders()
    d = CEDistiller(tiny_cnn())
    fit(d, tr, None, epochs=1, out_dir=tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT, HISTORY, STUDENT]  # no temp files left
    raw = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert raw["epoch"] == 1 and same(raw["student"], d.student.state_dict())
    assert {"optimizer", "scheduler", "scaler", "rng", "history", "distiller"} <= set(raw)
    assert same(torch.load(tmp_path / STUDENT, weights_only=True), d.student.state_dict())
    before = (tmp_path / CHECKPOINT).read_bytes()

    # a crash in the middle of writing leaves the old checkpoint intact and no partial file
    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(CEDistiller(tiny_cnn()), tr, None, epochs=1, out_dir=tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1


class Interrupt(Exception):
    pass


class Crashing(nn.Module):
    """Wraps a distiller and raises on call number ``at`` (a kill in the middle of an epoch)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    @property
    def student(self):
        return self.inner.student

    @property
    def last_logits(self):
        return self.inner.last_logits

    def forward(self, x, y):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupt
        return self.inner(x, y)

    def state_dict(self, *a, **k):
        return self.inner.state_dict(*a, **k)

    def load_state_dict(self, *a, **k):
        return self.inner.load_state_dict(*a, **k)


def _resume_check(tmp_path, make, tr_kwargs, epochs=3, crash_at=None):
    tr, va = loaders(**tr_kwargs)
    full = make()
    h_full = fit(full, tr, va, epochs=epochs, out_dir=tmp_path / "full", seed=3, progress=False)

    tr, va = loaders(**tr_kwargs)
    steps = len(tr)
    crash_at = crash_at or steps + steps // 2 + 1  # in the middle of epoch 2
    first = make()
    with pytest.raises(Interrupt):
        fit(Crashing(first, crash_at), tr, va, epochs=epochs, out_dir=tmp_path / "cut", seed=3, progress=False)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["epoch"] == 1
    # a fresh process: new models (different init on purpose), new loaders
    tr, va = loaders(**tr_kwargs)
    torch.manual_seed(12345)
    resumed = make()
    h_res = fit(resumed, tr, va, epochs=epochs, out_dir=tmp_path / "cut", resume=True, seed=3, progress=False)
    assert strip_time(h_res) == strip_time(h_full)
    assert same(snapshot(resumed), snapshot(full))
    for p, q in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(p, q)
    lines = [json.loads(line) for line in (tmp_path / "cut" / HISTORY).read_text().splitlines()]
    assert strip_time(lines) == strip_time(h_full)


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    _resume_check(tmp_path, lambda: CEDistiller(tiny_cnn(seed=0)), {"seed": 7})


def test_resume_bit_identical_with_persistent_workers(tmp_path):
    _resume_check(tmp_path, lambda: CEDistiller(tiny_cnn(seed=0)), {"workers": 1, "n": 48}, epochs=2)


@needs_distiller
def test_resume_with_real_distiller_and_connectors(tmp_path):
    teacher = fxswap.models.wrn(10, 1, num_classes=4)

    def make():
        torch.manual_seed(0)
        student = fxswap.models.wrn(10, 1, num_classes=4)
        return Distiller(teacher, student, {"hint": 1.0, "at": 100.0, "kd": 0.9},
                         example_input=torch.zeros(2, 3, 8, 8))

    _resume_check(tmp_path, make, {"seed": 1, "n": 48}, epochs=2)


def test_nan_loss_names_the_term(tmp_path):
    class NaNAt(CEDistiller):
        def forward(self, x, y):
            loss, logs = super().forward(x, y)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 8:
                bad = loss * float("nan")
                logs.update(reg=float("nan"), loss=float("nan"))
                return bad, logs
            return loss, logs

    tr, _ = loaders()
    d = NaNAt(tiny_cnn())
    with pytest.raises(DistillError, match=r"epoch 2/3, step 2/6: loss term\(s\) 'reg' = nan") as e:
        fit(d, tr, epochs=3, out_dir=tmp_path, progress=False)
    assert "ce" in str(e.value) and str(tmp_path) in str(e.value)
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1  # the last good state is kept


def test_inf_total_without_logs_is_caught():
    class Inf(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = nn.Linear(4, 2)

        def forward(self, x, y):
            return self.student(x).sum() * float("inf"), {}

    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(DistillError, match="total 'loss' = inf"):
        fit(Inf(), data, epochs=1, progress=False)


@needs_distiller
def test_teacher_untouched_and_methods(tmp_path):
    tr, va = loaders(n=32)
    teacher = fxswap.models.wrn(10, 1, num_classes=4)
    before = snapshot(teacher)
    student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
    hist = distill(teacher, student, tr, va, method="at+kd", epochs=1, progress=False, out_dir=tmp_path)
    assert same(before, snapshot(teacher))
    assert {"train_at", "train_kd", "train_acc", "val_acc"} <= set(hist[0])
    assert math.isfinite(hist[0]["train_loss"])
    with pytest.raises(DistillError, match="unknown method"):
        distill(teacher, student, tr, method="nope", epochs=1)
    hist = distill(teacher, student, tr, method={"mimic": 1.0}, epochs=1, progress=False)
    assert "train_mimic" in hist[0]
    hist = train(student, tr, va, epochs=1, progress=False)
    assert "train_ce" in hist[0]


@needs_distiller
def test_lit_runs_both_stages(tmp_path):
    try:
        from fxswap.distillation.lit import LITDistiller  # noqa: F401
    except ImportError:
        pytest.skip("LITDistiller not available")
    tr, va = loaders(n=16)
    teacher = fxswap.models.cifar_resnet(14, num_classes=4)
    before = snapshot(teacher)
    student = fxswap.cheapen(teacher, {"layer*.1": "I"})
    hist = distill(teacher, student, tr, va, method="lit", epochs=1, finetune_epochs=1, progress=False,
                   out_dir=tmp_path)
    assert [h["stage"] for h in hist] == ["lit", "finetune"]
    assert "train_lit" in hist[0] and "train_lit_kd" in hist[1]
    assert (tmp_path / STUDENT).exists()
    assert hist[1]["lr"] == pytest.approx(0.01)
    assert (tmp_path / "lit" / CHECKPOINT).exists() and (tmp_path / "finetune" / CHECKPOINT).exists()
    assert same(before, snapshot(teacher))


@needs_distiller
def test_lit_fine_tunes_on_the_asked_schedule_and_its_options_are_refused_elsewhere():
    tr, va = loaders(batch=8, n=16)  # 2 steps per epoch
    teacher = fxswap.models.cifar_resnet(14, num_classes=4)
    student = fxswap.cheapen(teacher, {"layer*.1": "I"})
    hist = distill(teacher, student, tr, va, method="lit", epochs=2, finetune_epochs=2, preset="cosine",
                   lr=0.2, finetune_preset="cosine", finetune_lr=0.03, progress=False)
    lrs = [(h["stage"], h["lr"]) for h in hist]
    # cosine over each stage's own steps: epoch 2 of 2 starts halfway, at half its stage's first lr
    assert lrs == [("lit", pytest.approx(0.2)), ("lit", pytest.approx(0.1)),
                   ("finetune", pytest.approx(0.03)), ("finetune", pytest.approx(0.015))]
    # by default the fine-tune is LIT's own (lr 0.01, step), whatever stage 1 ran on
    hist = distill(teacher, fxswap.cheapen(teacher, {"layer*.1": "I"}), tr, va, method="lit", epochs=1,
                   finetune_epochs=1, preset="cosine", lr=0.2, progress=False)
    assert hist[1]["lr"] == pytest.approx(get_preset("lit-finetune").lr)
    for bad in ({"finetune_lr": 0.01}, {"finetune_preset": "cosine"}):
        with pytest.raises(DistillError, match="method='lit' only"):
            distill(teacher, fxswap.cheapen(teacher, "G(N/4)"), tr, va, method="kd", epochs=1, progress=False, **bad)


def test_bad_arguments():
    tr, _ = loaders(n=16)
    d = CEDistiller(tiny_cnn())
    with pytest.raises(DistillError, match="epochs"):
        fit(d, tr, epochs=0)
    with pytest.raises(DistillError, match="unknown preset"):
        fit(d, tr, epochs=1, preset="nope")
    with pytest.raises(DistillError, match="out_dir"):
        fit(d, tr, epochs=1, resume=True)
    with pytest.raises(DistillError, match=".student"):
        fit(nn.Linear(2, 2), tr, epochs=1)


def test_resume_without_checkpoint_warns_and_starts(tmp_path):
    tr, _ = loaders(n=16)
    with pytest.warns(UserWarning, match="no checkpoint.pt"):
        hist = fit(CEDistiller(tiny_cnn()), tr, epochs=1, out_dir=tmp_path, resume=True, progress=False)
    assert len(hist) == 1


def test_presets_match_the_papers():
    m = get_preset("moonshine")
    assert (m.lr, m.momentum, m.weight_decay, m.gamma) == (0.1, 0.9, 5e-4, 0.2)
    assert m.milestones_for(200) == [60, 120, 160]
    lit = get_preset("lit")
    assert (lit.weight_decay, lit.milestones_for(175), lit.gamma) == (1e-4, [60, 100, 125], 0.1)
    assert get_preset("lit-finetune").lr == 0.01
    bs = get_preset("blockswap")
    opt = bs.optimizer(nn.Linear(2, 2).parameters())
    sched = bs.scheduler(opt, epochs=4, steps_per_epoch=2)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = [1e-10 + (0.1 - 1e-10) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx([v for v in ref for _ in range(2)])
    assert set(PRESETS) >= {"moonshine", "blockswap", "lit", "lit-finetune", "cosine"}


def test_cli_distill_on_tiny_npz(tmp_path, capsys):
    from fxswap.cli import main

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 24),
             x_test=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 16))
    out = tmp_path / "run"
    argv = ["distill", "--teacher", "wrn-10-1", "--student", "G(N/4)", "--method", "at", "--data", str(npz),
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--out", str(out), "--no-progress",
            "--train-teacher-epochs", "1"]
    if Distiller is None:
        pytest.skip("fxswap.distillation.distiller not available")
    assert main(argv) == 0
    text = capsys.readouterr()
    assert "val_acc" in text.out and "untrained" not in text.err
    assert (out / "teacher" / CHECKPOINT).exists() and (out / "student" / CHECKPOINT).exists()
    # resume: nothing left to do, same table; a model name as --student; a teacher checkpoint
    assert main(argv + ["--resume"]) == 0
    argv2 = ["distill", "--teacher", "wrn-10-1", "--student", "wrn-10-1", "--method", "kd", "--data", str(npz),
             "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--limit", "8",
             "--teacher-checkpoint", str(out / "teacher" / CHECKPOINT)]
    assert main(argv2) == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda(tmp_path):
    tr, va = loaders(n=64, seed=0)
    d = CEDistiller(tiny_cnn())
    hist = fit(d, tr, va, epochs=2, device="cuda", out_dir=tmp_path, progress=False)
    assert next(d.student.parameters()).is_cuda
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in hist)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["scaler"] and "scale" in ckpt["scaler"]
    if Distiller is not None:
        teacher = fxswap.models.wrn(10, 1, num_classes=4)
        student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
        before = snapshot(teacher)
        hist = distill(teacher, student, tr, va, method="at+kd", epochs=1, device="cuda", progress=False)
        assert math.isfinite(hist[0]["train_loss"]) and same(before, snapshot(teacher))
        hist = fit(CEDistiller(tiny_cnn()), tr, va, epochs=1, device="cuda", amp_dtype=torch.bfloat16,
                   progress=False)
        assert math.isfinite(hist[0]["train_loss"])


# ---------------------------------------------------------------------------
# issue 12: nothing non-finite in a checkpoint, clear errors on bad data, crafted files and changed settings
# ---------------------------------------------------------------------------
from fxswap.distillation.checkpoint import checksum, non_finite  # noqa: E402
from fxswap.errors import FxswapError  # noqa: E402


def all_checkpoints_finite(root):
    for path in root.rglob(CHECKPOINT):
        assert non_finite(torch.load(path, weights_only=True)) == [], path


def test_a_poisoned_step_never_reaches_a_checkpoint(tmp_path):
    tr, _ = loaders(n=48)
    with pytest.raises(DistillError, match="non-finite"):
        fit(CEDistiller(tiny_cnn()), tr, epochs=3, lr=1e4, preset="cosine", out_dir=tmp_path, progress=False)
    all_checkpoints_finite(tmp_path)


@pytest.mark.parametrize("where", ["student", "optimizer"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_value_among_finite_ones_is_refused(tmp_path, where, value):
    from fxswap.distillation.checkpoint import save_checkpoint

    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"student": model.state_dict(), "optimizer": opt.state_dict()})
    good = path.read_bytes()
    state = {"student": model.state_dict(), "optimizer": opt.state_dict()}
    # one entry in the middle of a tensor whose other 11 entries are finite
    tensor, name = ((state["student"]["weight"], "/student/weight") if where == "student" else
                    (state["optimizer"]["state"][0]["exp_avg"], "/optimizer/state/0/exp_avg"))
    tensor = tensor.clone()
    tensor[1, 2] = value
    if where == "student":
        state["student"]["weight"] = tensor
    else:
        state["optimizer"]["state"][0]["exp_avg"] = tensor
    assert int(torch.isfinite(tensor).sum()) == tensor.numel() - 1
    assert non_finite(state) == [name]
    with pytest.raises(DistillError, match=f"non-finite values in {name}"):
        save_checkpoint(path, state)
    assert path.read_bytes() == good  # the previous checkpoint is kept


class Poisoned(Dataset):
    def __init__(self, value, index=5, n=32):
        self.x, self.y = torch.randn(n, 3, 8, 8), torch.arange(n) % 4
        self.x[index, 0, 0, 0] = value

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_a_huge_pixel_is_an_error_and_leaves_no_inf_in_a_checkpoint(tmp_path):
    tr = DataLoader(Poisoned(1e38), batch_size=8)
    with pytest.raises(DistillError, match="non-finite"):
        fit(CEDistiller(tiny_cnn()), tr, epochs=2, out_dir=tmp_path, progress=False)
    all_checkpoints_finite(tmp_path)


def test_nan_data_names_the_batch(tmp_path):
    tr = DataLoader(Poisoned(float("nan"), index=17), batch_size=8)
    with pytest.raises(DistillError, match=r"training batch 3"):
        fit(CEDistiller(tiny_cnn()), tr, epochs=1, progress=False)
    good = DataLoader(Poisoned(0.0), batch_size=8)
    with pytest.raises(DistillError, match=r"validation batch 2 of 4 has non-finite input"):
        fit(CEDistiller(tiny_cnn()), good, DataLoader(Poisoned(float("nan"), index=9), batch_size=8), epochs=1,
            out_dir=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT).exists()


def test_resume_applies_a_new_lr_and_refuses_another_preset(tmp_path):
    tr, _ = loaders(n=32, seed=0)
    full = fit(CEDistiller(tiny_cnn()), tr, epochs=2, lr=0.05, preset="cosine", progress=False)
    with pytest.raises(Interrupt):  # killed in epoch 2
        fit(Crashing(CEDistiller(tiny_cnn()), len(tr) + 1), tr, epochs=2, lr=0.05, preset="cosine", out_dir=tmp_path,
            progress=False)
    with pytest.warns(UserWarning, match="lr=0.01 .*applied"):
        res = fit(CEDistiller(tiny_cnn()), tr, epochs=2, lr=0.01, preset="cosine", out_dir=tmp_path, resume=True,
                  progress=False)
    assert res[1]["lr"] == pytest.approx(full[1]["lr"] * 0.2)
    assert load_checkpoint(tmp_path / CHECKPOINT)["lr"] == 0.01
    with pytest.raises(DistillError, match="preset 'cosine'.*'moonshine'"):
        fit(CEDistiller(tiny_cnn()), tr, epochs=3, preset="moonshine", out_dir=tmp_path, resume=True, progress=False)


@pytest.fixture()
def one_checkpoint(tmp_path):
    tr, _ = loaders(n=16)
    d = CEDistiller(tiny_cnn())
    fit(d, tr, epochs=1, out_dir=tmp_path, progress=False)
    return tmp_path / CHECKPOINT, d


def test_a_flipped_byte_in_tensor_data_is_caught(one_checkpoint):
    path, d = one_checkpoint
    raw = bytearray(path.read_bytes())
    needle = d.student[0].weight.detach().numpy().tobytes()[:16]
    at = bytes(raw).index(needle) + 5
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(DistillError, match="checksum"):
        load_checkpoint(path)


def _rewrite(path, change):
    raw = torch.load(path, weights_only=True)
    raw.pop("checksum")
    change(raw)
    raw["checksum"] = checksum(raw)
    torch.save(raw, path)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.pop("optimizer"), "lacks 'optimizer'"),
    (lambda c: c["rng"]["numpy"].__setitem__("keys", torch.zeros(5, dtype=torch.int64)), "RNG state"),
    (lambda c: c["rng"].pop("python"), "RNG state"),
    (lambda c: c.__setitem__("history", {"a": 1}), "'history' is dict"),
    (lambda c: c.__setitem__("epoch", "two"), "'epoch' is str"),
    (lambda c: c.__setitem__("epoch", -5), "inconsistent counters"),
    (lambda c: c.__setitem__("student", {"w": 3}), "state dict"),
])
def test_crafted_checkpoints_are_clear_errors(one_checkpoint, change, match):
    path, _ = one_checkpoint
    _rewrite(path, change)
    with pytest.raises(DistillError, match=match):
        load_checkpoint(path)
    tr, _ = loaders(n=16)
    with pytest.raises(DistillError):
        fit(CEDistiller(tiny_cnn()), tr, epochs=2, out_dir=path.parent, resume=True, progress=False)


def test_another_student_in_the_same_out_dir(one_checkpoint):
    path, _ = one_checkpoint
    tr, _ = loaders(n=16)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(DistillError, match="another student"):
        fit(CEDistiller(other), tr, epochs=2, out_dir=path.parent, resume=True, progress=False)


def test_checkpoint_fuzz_loads_or_raises_an_fxswap_error(one_checkpoint):
    path, _ = one_checkpoint
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(60):
        data = bytearray(good)
        kind = i % 4
        if kind == 0:  # flip a few bytes anywhere
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[at] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncate
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:  # garbage
            data = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 2000)), dtype=np.uint8).tobytes())
        else:  # a zip member's bytes overwritten by a block of zeros
            at = int(rng.integers(0, len(data) - 64))
            data[at: at + 64] = bytes(64)
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
            outcomes["loaded"] += 1
        except FxswapError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 30


def test_run_files_are_not_private(one_checkpoint):
    path, _ = one_checkpoint
    mask = os.umask(0)
    os.umask(mask)
    for f in path.parent.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


@needs_distiller
def test_hint_connectors_survive_resume_when_widths_differ(tmp_path):
    teacher = fxswap.models.wrn(10, 2, num_classes=4)

    def make():
        torch.manual_seed(0)
        return Distiller(teacher, fxswap.models.wrn(10, 1, num_classes=4), {"hint": 1.0},
                         example_input=torch.zeros(2, 3, 8, 8))

    assert sum(p.numel() for p in make().connectors.parameters()) > 0  # 16→32, 32→64, 64→128 1×1 convs
    _resume_check(tmp_path, make, {"seed": 1, "n": 32}, epochs=2)


def test_progress_bar_refreshes_early_in_an_epoch_and_shows_accuracy_in_percent(monkeypatch):
    """The bar's running loss/accuracy are refreshed after batches 1, 2, 4, 8, 16 and then every log_every
    steps (and on the last), not left on the first batch's values for log_every steps; accuracy shows as %."""
    import tqdm.auto

    shown, calls = [], []

    class Counting(CEDistiller):
        def forward(self, x, y):
            calls.append(1)
            return super().forward(x, y)

    class Recording(tqdm.auto.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            shown.append((len(calls) - 1, dict(ordered_dict)))  # the 0-based step just taken
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    tr, _ = loaders(batch=2, n=90)  # 45 steps
    fit(Counting(tiny_cnn()), tr, None, epochs=1, preset="cosine", log_every=20, progress=True)
    assert [n for n, _ in shown] == [0, 1, 3, 7, 15, 20, 40, 44]  # steps (0-based) the postfix was set at
    assert all(re.fullmatch(r"\d+\.\d{2}%", post["acc"]) and float(post["loss"]) > 0 for _, post in shown)
