"""Logging hooks on fit: the CSV logger, TensorBoard and W&B callbacks, step logs, resume and LIT stages."""
import csv
import math
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fxswap.distillation import Distiller, fit
from fxswap.distillation.callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger
from fxswap.errors import DistillError, FxswapError


def _loader(n=32, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch)


def _distiller(seed=0):
    torch.manual_seed(seed)
    return Distiller(None, torch.nn.Linear(6, 2))


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_rows_match(rows, history):
    assert len(rows) == len(history)
    for row, h in zip(rows, history):
        for key, value in h.items():
            if isinstance(value, float):
                assert math.isfinite(float(row[key])), key
                assert float(row[key]) == value, key  # full precision: the same float back
            else:
                assert row[key] == str(value), key


def test_csv_logger_writes_one_row_per_epoch_matching_the_history(tmp_path):
    path = tmp_path / "logs" / "run.csv"  # the folder is made
    loader = _loader()
    history = fit(_distiller(), loader, loader, epochs=3, preset="cosine", progress=False, callbacks=[CSVLogger(path)])
    rows = _read(path)
    _assert_rows_match(rows, history)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for column in ("lr", "train_loss", "train_ce", "val_loss", "val_acc", "seconds"):
        assert column in rows[0]
    assert float(rows[0]["lr"]) > float(rows[-1]["lr"])  # the cosine schedule, as logged


def test_csv_logger_after_resume_holds_every_epoch_once(tmp_path):
    loader, out, path = _loader(), tmp_path / "run", tmp_path / "run.csv"
    fit(_distiller(), loader, epochs=3, preset="cosine", progress=False, out_dir=out, callbacks=[CSVLogger(path)])
    first = _read(path)
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resuming with more epochs warns that the schedule changes
        history = fit(_distiller(), loader, epochs=5, preset="cosine", progress=False, out_dir=out, resume=True,
                      callbacks=[CSVLogger(path)])  # a new logger, as after a restart
    rows = _read(path)
    _assert_rows_match(rows, history)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[:3] == first


def test_one_logger_over_two_stages_keeps_both_and_the_union_of_columns(tmp_path):
    loader, path = _loader(), tmp_path / "run.csv"
    log = CSVLogger(path)
    h1 = fit(_distiller(), loader, epochs=2, preset="cosine", progress=False, stage="a", callbacks=[log])
    h2 = fit(_distiller(1), loader, loader, epochs=1, preset="cosine", progress=False, stage="b", callbacks=log)
    rows = _read(path)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1")]
    assert rows[0]["val_acc"] == "" and float(rows[2]["val_acc"]) == h2[0]["val_acc"]
    _assert_rows_match(rows, h1 + h2)


class Recorder(Callback):
    log_steps = True

    def __init__(self):
        self.calls = []

    def on_fit_start(self, info):
        self.calls.append(("start", info))

    def on_train_log(self, info):
        self.calls.append(("step", info))

    def on_epoch_end(self, row):
        self.calls.append(("epoch", row))

    def on_fit_end(self, history):
        self.calls.append(("end", history))


def test_hooks_are_called_in_order_and_step_logs_every_log_every_steps():
    rec = Recorder()
    history = fit(_distiller(), _loader(n=40), epochs=2, preset="cosine", progress=False, log_every=2,
                  callbacks=[rec])
    kinds = [k for k, _ in rec.calls]
    # 5 steps an epoch, log_every=2: steps 1, 3, 5 (the last step always)
    assert kinds == ["start"] + (["step"] * 3 + ["epoch"]) * 2 + ["end"]
    start = rec.calls[0][1]
    assert start["epochs"] == 2 and start["steps_per_epoch"] == 5 and start["history"] == []
    steps = [info for k, info in rec.calls if k == "step"]
    assert [(s["epoch"], s["step"], s["global_step"]) for s in steps] == \
           [(1, 1, 1), (1, 3, 3), (1, 5, 5), (2, 1, 6), (2, 3, 8), (2, 5, 10)]
    # at an epoch's last step the running means are the epoch's means
    assert steps[2]["means"]["loss"] == pytest.approx(history[0]["train_loss"], rel=1e-12)
    assert steps[5]["means"]["ce"] == pytest.approx(history[1]["train_ce"], rel=1e-12)
    assert [row for k, row in rec.calls if k == "epoch"] == history and rec.calls[-1][1] == history


def test_without_step_logging_no_step_hook_is_called():
    class Quiet(Recorder):
        log_steps = False

    rec = Quiet()
    fit(_distiller(), _loader(), epochs=1, preset="cosine", progress=False, log_every=1, callbacks=[rec])
    assert [k for k, _ in rec.calls] == ["start", "epoch", "end"]


@pytest.mark.parametrize("bad, says", [([print], "none of the hooks"), ([object()], "none of the hooks"),
                                       (["log.csv"], "none of the hooks"), ([CSVLogger], "pass an instance")])
def test_a_callback_without_hooks_is_refused_before_training(bad, says):
    d = _distiller()
    before = {k: v.clone() for k, v in d.state_dict().items()}
    with pytest.raises(DistillError, match=says):
        fit(d, _loader(), epochs=1, preset="cosine", progress=False, callbacks=bad)
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())


def test_csv_logger_refuses_a_folder(tmp_path):
    with pytest.raises(FxswapError, match="is a folder"):
        CSVLogger(tmp_path)


class FakeWriter:
    def __init__(self):
        self.scalars, self.flushed, self.closed = [], 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed = True


def test_tensorboard_logger_writes_each_epoch_value_at_a_running_epoch_step():
    writer = FakeWriter()
    loader = _loader()
    with TensorBoardLogger(writer=writer, log_steps=True) as tb:
        h1 = fit(_distiller(), loader, loader, epochs=2, preset="cosine", progress=False, stage="a", callbacks=[tb])
        h2 = fit(_distiller(), loader, epochs=1, preset="cosine", progress=False, stage="b", callbacks=[tb])
    assert writer.closed and writer.flushed == 2
    epoch = {(tag, step): value for tag, value, step in writer.scalars if tag.startswith("epoch/")}
    for step, row in enumerate(h1 + h2, start=1):  # stage b continues at step 3
        assert epoch[("epoch/train_loss", step)] == row["train_loss"]
        assert epoch[("epoch/lr", step)] == row["lr"]
    assert epoch[("epoch/val_acc", 2)] == h1[1]["val_acc"] and ("epoch/val_acc", 3) not in epoch
    assert any(tag == "step/loss" for tag, _, _ in writer.scalars)


def test_tensorboard_for_real_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    tb = TensorBoardLogger(tmp_path / "tb")
    fit(_distiller(), _loader(), epochs=1, preset="cosine", progress=False, callbacks=[tb])
    tb.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_wandb_logger_logs_each_epoch_and_the_config():
    class Config(dict):
        def update(self, other, allow_val_change=False):
            super().update(other)

    class Run:
        def __init__(self):
            self.logged, self.config = [], Config()

        def log(self, data):
            self.logged.append(data)

    run = Run()
    history = fit(_distiller(), _loader(), epochs=2, preset="cosine", progress=False, seed=3,
                  callbacks=[WandbLogger(run=run)])
    assert [d["epoch"] for d in run.logged] == [1, 2]
    assert [d["train_loss"] for d in run.logged] == [h["train_loss"] for h in history]
    assert run.config["epochs"] == 2 and run.config["seed"] == 3 and run.config["preset"] == "cosine"


@pytest.mark.parametrize("make, module, package", [
    (lambda tmp: TensorBoardLogger(tmp), "torch.utils.tensorboard", "tensorboard"),
    (lambda tmp: WandbLogger("proj"), "wandb", "wandb"),
])
def test_a_missing_package_is_named(make, module, package, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(FxswapError, match=f"pip install {package}"):
        fit(_distiller(), _loader(), epochs=1, preset="cosine", progress=False, callbacks=[make(tmp_path)])
