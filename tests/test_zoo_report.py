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
