"""benchmarks/zoo_coverage.py's report files: merging re-runs into the results file they came from."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_coverage.py"


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_merge_into_one_of_the_reported_files_keeps_its_other_rows(zoo, tmp_path, capsys):
    sweep, rerun = tmp_path / "sweep.jsonl", tmp_path / "rerun.jsonl"
    _write(sweep, [{"model": "timm:a", "commit": "old", "specs": {"I": {"outcome": "ok", "ratio": 0.5}}},
                   {"model": "timm:b", "commit": "old", "specs": {"I": {"outcome": "crash", "why": "timed out"}}}])
    _write(rerun, [{"model": "timm:b", "commit": "new", "specs": {"I": {"outcome": "ok", "ratio": 0.4}}}])
    zoo.main(["--report", str(sweep), str(rerun), "--merge-into", str(sweep)])
    rows = {r["model"]: r for r in map(json.loads, sweep.read_text().splitlines())}
    assert set(rows) == {"timm:a", "timm:b"}           # the sweep's own row survives the rewrite
    assert rows["timm:a"]["commit"] == "old" and rows["timm:b"]["commit"] == "new"
    assert "Models tried: 2" in capsys.readouterr().out


def _ok(ratio, **checks):
    return {"outcome": "ok", "ratio": ratio, "kept": {}, **checks}


def test_report_counts_the_checks_of_ok_students(zoo, tmp_path):
    clean = dict(wrong_mode=0, wrong_mode_names=[], dead_params=0, dead_names=[], roundtrip="ok")
    rows = [
        {"model": "timm:a", "params": 10, "blocks": 2, "kinds": {"basic": 2}, "commit": "new", "specs": {
            "B(2)": _ok(0.5, **{**clean, "wrong_mode": 7, "wrong_mode_names": ["layer1.0.down", "layer1.0.bn1"]}),
            "I": _ok(0.2, **clean),
            "S-2x2": _ok(0.6, **{**clean, "dead_params": 2, "dead_names": ["layer1.0.conv1.weight"],
                                 "roundtrip": "FxswapError: the weights are not those of cheapen(...)"}),
            "G(N/4)": {"outcome": "error", "why": "SpecError: ..."}}},
        {"model": "torchvision:b", "params": 10, "blocks": 1, "kinds": {"bottleneck": 1}, "commit": "old",
         "specs": {"B(2)": _ok(0.7)}},  # measured before the checks existed
    ]
    path = tmp_path / "rows.jsonl"
    _write(path, rows)
    text = zoo.report(str(path))
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in text.splitlines() if line.startswith("| ") and "checked" not in line}
    header = next(line for line in text.splitlines() if "| checked |" in line)
    assert [c.strip() for c in header.split("|")[1:-1]] == ["spec", "ok", "checked", "wrong mode", "dead params",
                                                            "round trip fails"]
    # ok, checked, wrong mode, dead params, round trip fails
    assert table["B(2)"][-5:] == ["2", "1", "1", "0", "0"]
    assert table["I"][-5:] == ["1", "1", "0", "0", "0"]
    assert table["S-2x2"][-5:] == ["1", "1", "0", "1", "1"]
    assert table["**all**"][-5:] == ["**4**", "**3**", "**1**", "**1**", "**1**"]
    assert "Check findings (2):" in text
    assert "timm:a B(2): 7 modules in the wrong mode (layer1.0.down, layer1.0.bn1, ...)" in text
    assert ("timm:a S-2x2: 2 parameters no forward reaches (layer1.0.conv1.weight, ...); save/load: FxswapError"
            in text)


def test_mode_and_reach_checks_on_hand_made_students(zoo):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.body(x).mean((2, 3))

    teacher, student = Net().eval(), Net().eval()
    student.body[1].train()
    student.body.add_module("extra", nn.ReLU().eval())  # new in the student: compared with its ancestor `body` (eval)
    assert zoo._wrong_modes(teacher, student) == ["body.1"]
    student.body.extra.train()
    assert zoo._wrong_modes(teacher, student) == ["body.1", "body.extra"]
    x = torch.randn(1, 3, 8, 8)
    assert zoo._unreached(teacher, x) == {"unused.weight", "unused.bias"}
    assert all(p.grad is None for p in teacher.parameters())  # the check leaves no gradients behind
