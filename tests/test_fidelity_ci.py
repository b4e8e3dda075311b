"""benchmarks/fidelity.py --scale ci runs every experiment end to end (so the script cannot rot)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_all_five_experiments_run_at_ci_scale(fidelity, tmp_path):
    dump = fidelity.main(["all", "--scale", "ci", "--out", str(tmp_path)])
    results = dump["results"]
    failed = {k: v["error_msg"] for k, v in results.items() if "error_msg" in v}
    assert not failed
    for exp in fidelity.EXPERIMENTS:
        runs = [v for k, v in results.items() if k.startswith(exp + "/")]
        assert runs, exp
        assert all(0.0 <= v["error"] <= 100.0 and v["params"] > 0 for v in runs)
    assert (tmp_path / "teacher.pt").is_file()
    md = (tmp_path / "results.md").read_text()
    for title in ("Moonshine", "BlockSwap", "LIT", "SRRL", "Urban"):
        assert f"### {title}" in md
    assert "5.31" in md  # the paper's G(N/4) AT error printed beside ours
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiments"] == list(fidelity.EXPERIMENTS)
    assert dump["blockswap_scoring"]["top"]  # plans were scored
    progress = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert len(progress) == len(results) + 1  # every finished job left a line (+ the BlockSwap scoring)


def test_urban_students_have_the_asked_parameters_and_conv_layers(fidelity):
    import torch

    for k in range(4):
        m = fidelity.urban_student(k, 30_000, image=32)
        n = sum(p.numel() for p in m.parameters())
        assert abs(n - 30_000) <= (3 * 32 * 32 + 11) / 2  # within half a hidden unit of the MLP (the coarsest)
        assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == k
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lit_plan_keeps_the_first_block_of_each_stage(fidelity):
    import fxswap

    plan = fidelity.lit_plan(fxswap.models.wrn(40, 2))  # 6 blocks per stage: 1, 3, 5 go
    assert sorted(plan) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in (1, 3, 5)]
    assert set(plan.values()) == {"I"}


def test_spearman_matches_hand_values(fidelity):
    assert fidelity.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert fidelity.spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert math.isnan(fidelity.spearman([1, 2], [2, 1]))
