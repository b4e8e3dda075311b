"""fxswap distill's outputs: --csv (one row per epoch, as the history), --out DIR/student.pt (load_student)."""
import csv
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import fxswap
from fxswap.cli import main
from fxswap.distillation.checkpoint import STUDENT


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 16),
             x_test=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 8))
    return str(path)


BASE = ["distill", "--teacher", "wrn-10-1", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--no-progress"]


def test_csv_rows_are_the_history_and_out_holds_a_student_load_student_rebuilds(tmp_path, tiny_npz, capsys):
    out, log, logdir = tmp_path / "run", tmp_path / "log.csv", tmp_path / "tb"
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # one run checks both loggers when it can
    argv = BASE + ["--student", "G(N/4)", "--data", tiny_npz, "--out", str(out), "--csv", str(log)]
    assert main(argv + (["--tensorboard", str(logdir)] if tensorboard else [])) == 0
    text = capsys.readouterr().out
    history = [json.loads(line) for line in (out / "student" / "history.jsonl").read_text().splitlines()]
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(history) == 2
    for row, h in zip(rows, history):
        assert all(row[k] == v if isinstance(v, str)  # the precision the run used
                   else math.isfinite(float(row[k])) and float(row[k]) == pytest.approx(v, rel=1e-12)
                   for k, v in h.items())
    student = fxswap.load_student(out / "student.pt")
    record = fxswap.read_record(out / "student.pt")
    assert record["model"] == "wrn-10-1" and set(record["plan"].values()) == {"G(N/4)"}
    assert record["num_classes"] == 10 and record["input_shape"] == [3, 32, 32]
    trained = torch.load(out / "student" / STUDENT, weights_only=True)  # fit's bare state dict
    assert trained.keys() == student.state_dict().keys()
    assert all(torch.equal(trained[k], v) for k, v in student.state_dict().items())
    assert sorted(out.rglob("student.pt")) == [out / "student.pt"]  # the one student.pt is load_student's
    assert str(out / "student.pt") in text.strip().splitlines()[-1] and str(log) in text
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(logdir))
        events.Reload()
        logged = events.Scalars("epoch/train_loss")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)


def test_a_named_student_model_is_saved_as_itself(tmp_path, tiny_npz):
    out = tmp_path / "run"
    assert main(BASE[:4] + ["1"] + BASE[5:] + ["--student", "wrn-10-1", "--data", tiny_npz, "--out", str(out)]) == 0
    assert fxswap.read_record(out / "student.pt")["model"] == "wrn-10-1"
    student = fxswap.load_student(out / "student.pt")
    trained = torch.load(out / "student" / STUDENT, weights_only=True)
    assert all(torch.equal(trained[k], v) for k, v in student.state_dict().items())


def test_tensorboard_without_its_package_fails_before_any_work(tmp_path, tiny_npz, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = BASE + ["--student", "G(N/4)", "--data", tiny_npz, "--tensorboard", str(tmp_path / "tb")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "pip install tensorboard" in captured.err and "teacher" not in captured.out


def test_csv_naming_a_folder_is_bad_input(tmp_path, tiny_npz, capsys):
    assert main(BASE + ["--student", "G(N/4)", "--data", tiny_npz, "--csv", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err



def test_out_in_a_missing_folder_a_resume_note_and_accuracy_in_percent(tmp_path, tiny_npz, capsys):
    """A new user's run: --out runs/a without runs/ (made), --resume on a fresh folder (one 'fxswap: note:'
    line, no raw UserWarning), and accuracy printed as a percentage with its sign everywhere."""
    import re

    out = tmp_path / "runs" / "a"
    argv = BASE + ["--student", "G(N/4)", "--data", tiny_npz, "--out", str(out), "--resume"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (out / "student.pt").is_file() and (out / "student" / "history.jsonl").is_file()
    notes = [line for line in captured.err.splitlines() if "no checkpoint.pt" in line]
    assert len(notes) == 1 and notes[0].startswith("fxswap: note: resume=True but there is no checkpoint.pt")
    assert "UserWarning" not in captured.err and "warnings.warn" not in captured.err
    printed = re.findall(r"\bacc (\S+)", captured.out)  # the teacher's line and one line per epoch
    assert len(printed) == 1 + 2 * 2 and all(re.fullmatch(r"\d+\.\d{2}%,?", a) for a in printed), printed
    table = captured.out[captured.out.index("epoch  "):].splitlines()
    header = table[0].split()
    for row in table[1:3]:
        cells = dict(zip(header, row.split()))
        assert all(re.fullmatch(r"\d+\.\d{2}%", cells[k]) for k in ("train_acc", "val_acc")), row
    rows = [json.loads(line) for line in (out / "student" / "history.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in rows)  # the file keeps fractions
