"""fxswap.latency and the latency column of compare: structure and sanity, never timing thresholds."""
import json
import math

import pytest
import torch
from torch import nn

import fxswap
from fxswap.metrics.counting import BlockCost, Comparison, CostReport
from fxswap.errors import FxswapError
from fxswap.models import wrn
from fxswap.metrics.latency import _block_inputs, parse_duration

# one thread: on a shared, oversubscribed CI machine multi-threaded timing calls wait on the scheduler
FAST = {"min_run_time": 0.005, "warmup": 1, "num_threads": 1}


def _finite_positive(t):
    return t.median_ms > 0 and math.isfinite(t.median_ms) and t.iqr_ms >= 0 and t.runs >= 7


def test_report_has_a_row_per_block_and_a_sane_total():
    model = wrn(10, 1)
    r = fxswap.latency(model, (3, 16, 16), batch=2, **FAST)
    assert [b.name for b in r.blocks] == [b.name for b in fxswap.find_blocks(model)]
    assert _finite_positive(r.total) and all(_finite_positive(b.timing) for b in r.blocks)
    assert (r.device, r.batch, r.input_shape, r.threads) == ("cpu", 2, (3, 16, 16), 1)
    text = str(r)
    assert all(b.name in text for b in r.blocks) and "total" in text and "batch 2" in text
    d = json.loads(json.dumps(r.to_dict()))
    assert d["total"]["median_ms"] == r.total.median_ms and len(d["blocks"]) == 3
    assert r.block("layer2.0") == r.blocks[1].timing and r.block("nope") is None


def test_per_block_false_and_model_without_blocks_time_only_the_total():
    assert fxswap.latency(wrn(10, 1), (3, 16, 16), per_block=False, **FAST).blocks == ()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    r = fxswap.latency(plain, (3, 8, 8), **FAST)
    assert r.blocks == () and _finite_positive(r.total)


def test_each_block_is_timed_on_the_input_it_gets_in_the_model():
    model = wrn(10, 2).eval()
    inputs = _block_inputs(model, ["layer1.0", "layer2.0", "layer3.0"], torch.randn(3, 3, 32, 32))
    shapes = {name: tuple(args[0].shape) for name, (args, _) in inputs.items()}
    # WRN-10-2: stem 16 channels at 32x32, then stages of 32, 64, 128 channels; stride 2 at stages 2 and 3
    assert shapes == {"layer1.0": (3, 16, 32, 32), "layer2.0": (3, 32, 32, 32), "layer3.0": (3, 64, 16, 16)}


def test_latency_never_mutates_the_model():
    model = wrn(10, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = sum(len(m._forward_pre_hooks) for m in model.modules())
    fxswap.latency(model, (3, 8, 8), **FAST)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before


@pytest.mark.parametrize("kwargs, words", [
    ({"input_shape": (3, 0, 8)}, "input_shape"),
    ({"input_shape": "3x32x32"}, "input_shape"),
    ({"input_shape": (3, 8, 8), "batch": 0}, "batch"),
    ({"input_shape": (3, 8, 8), "device": "potato"}, "device"),
    ({"input_shape": (5, 8, 8)}, "failed on an input"),
])
def test_bad_input_is_a_clear_fxswap_error(kwargs, words):
    with pytest.raises(FxswapError, match=words):
        fxswap.latency(wrn(10, 1), **kwargs, **FAST)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(FxswapError, match="no CUDA device"):
        fxswap.latency(wrn(10, 1), (3, 8, 8), device="cuda", **FAST)


def test_compare_adds_a_latency_column_only_when_asked():
    t = wrn(10, 1)
    s = fxswap.cheapen(t, "B(2)")
    plain = fxswap.compare(t, s, (3, 16, 16))
    assert not plain.has_latency and "-> ms" not in plain.table() and "teacher_latency" not in plain.to_dict()
    timed = fxswap.compare(t, s, (3, 16, 16), latency=True, batch=2, **FAST)
    assert timed.has_latency and timed.student_latency.batch == 2
    header, _, *rows = timed.table().splitlines()
    assert header.split()[-4:] == ["ms", "->", "ms", "ratio"]
    assert [r.split()[0] for r in rows[:3]] == ["layer1.0", "layer2.0", "layer3.0"]
    d = json.loads(json.dumps(timed.to_dict()))
    assert d["ratios"]["latency"] > 0 and len(d["student_latency"]["blocks"]) == 3
    assert d["ratios"]["params"] == round(s_params(s) / s_params(t), 3)


def s_params(m):
    return sum(p.numel() for p in m.parameters())


def test_a_block_that_costs_more_than_the_teachers_is_marked():
    shape = (3, 32, 32)
    teacher = CostReport(1000, 1000, 9000, shape, (BlockCost("a", 400, 400, 3000), BlockCost("b", 600, 600, 6000)))
    student = CostReport(1100, 1100, 8000, shape, (BlockCost("a", 500, 500, 2000), BlockCost("b", 600, 600, 6000)))
    rows = Comparison(teacher, student).table().splitlines()
    row_a = next(r for r in rows if r.startswith("a "))
    row_b = next(r for r in rows if r.startswith("b "))
    assert "1.250*" in row_a and "0.667" in row_a and "*" not in row_b
    assert rows[-1].startswith("*")
    cheaper = CostReport(500, 500, 4000, shape, (BlockCost("a", 200, 200, 1000), BlockCost("b", 300, 300, 3000)))
    assert "*" not in Comparison(teacher, cheaper).table()


def test_compare_table_is_ascii():
    t = wrn(10, 1)
    fxswap.compare(t, fxswap.cheapen(t, "G(N/4)"), (3, 8, 8)).table().encode("ascii")


def test_parse_duration():
    assert parse_duration("25ms") == 25.0 and parse_duration("0.5s") == 500.0 and parse_duration("250us") == 0.25
    for bad in ("fast", "25", "-3ms", "0ms", 0, -1.0):
        with pytest.raises(FxswapError):
            parse_duration(bad)


_MEASURE = ("import fxswap, torch; fxswap.latency(torch.nn.Linear(4, 2), (4,), batch=1, per_block=False, "
            "min_run_time=0.001, warmup=1, num_threads=1)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch logs the note only where CUDA is unavailable")
def test_latency_does_not_print_torchs_no_cuda_runtime_note(tmp_path):
    """torch.utils.benchmark imports cpp_extension, which logs 'No CUDA runtime is found' on a CPU-only
    machine with a CUDA toolkit (CUDA_HOME set): fxswap's timings drop that one line and nothing else."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = lambda code: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,  # noqa: E731
                                      text=True, timeout=300, check=True).stderr
    assert "No CUDA runtime is found" in run("from torch.utils import benchmark")  # the note torch prints
    assert "No CUDA runtime is found" not in run(_MEASURE)
    # other records from that logger still get through after the import
    shown = run(_MEASURE + "; import logging; logging.getLogger('torch.utils.cpp_extension').warning('other note')")
    assert "other note" in shown
