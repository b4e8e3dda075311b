"""BlockSwap under a latency budget: budget strings, the measured table, the ceiling window, the error, the CLI.

Timings are replaced by a deterministic fake timer wherever a test checks a value (never a timed assert): the
fake "takes" one millisecond per thousand parameters of the module it is given, so the latency a plan should
have is known independently of the table (the built student's parameter count / 1000).
"""
import itertools
import json
import math
import random

import pytest
import torch

import fxswap
from fxswap.search.plans import BlockSwapResult, CostModel, blockswap, budget_metric, parse_budget, sample_plans
from fxswap.errors import BudgetError, FxswapError
from fxswap.testing import NetSpec, StageSpec, build
from fxswap.metrics.latency import block_latency_table

NET = NetSpec(stem=8, stages=(StageSpec(8, 2, 1), StageSpec(16, 1, 2)), order="post")
SPECS = ["S", "B(2)", "G(2)"]


def fake_timer(module, args, kwargs):
    return sum(p.numel() for p in module.parameters()) / 1000.0


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build(NET)


@pytest.fixture(scope="module")
def timed_cm(teacher):
    cm = CostModel(teacher, SPECS, input_shape=(3, 16, 16), macs=False)
    cm.measure_latency(2, timer=fake_timer)
    return cm


def _all_plans(cm):
    return [dict(zip(cm.names, combo)) for combo in itertools.product(*(cm.options(n) for n in cm.names))]


def _extreme_plan(cm, pick):
    """The plan taking, in every block, the spec with the fewest (``min``) or most (``max``) parameters."""
    return {n: pick(cm.table.params[n], key=cm.table.params[n].get) for n in cm.names}


# -- budget strings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, total, expected", [
    ("25ms", None, 25.0), ("0.1s", None, 100.0), ("800us", None, 0.8), (" 2.5 ms ", None, 2.5),
    ("60%latency", 40.0, 24.0), ("60% latency", 40.0, 24.0), ("60%", 40.0, 24.0), ("100%LATENCY", 40.0, 40.0),
    (0.5, 40.0, 20.0), ("0.25", 40.0, 10.0), ("0.25 latency", 40.0, 10.0),
])
def test_latency_budget_forms(text, total, expected):
    assert parse_budget(text, total, "latency") == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["25", 25, 2.5, "fast", "-5ms", "0ms", "150%latency", "0%", "25 mss", "nan",
                                 float("nan"), float("inf"), True, None, "", "25ms latency"])
def test_bad_latency_budget_is_a_budget_error_listing_the_accepted_forms(bad):
    with pytest.raises(BudgetError) as err:
        parse_budget(bad, 40.0, "latency")
    assert "'25ms'" in str(err.value) and "60%latency" in str(err.value)


def test_a_fraction_needs_the_measured_teacher():
    with pytest.raises(BudgetError, match="not been measured"):
        parse_budget("60%latency", None, "latency")


def test_the_metric_is_read_off_the_budget():
    assert [budget_metric(b) for b in ("25ms", "0.1s", "60%latency", "400k", "25%", 0.5)] == \
        ["latency", "latency", "latency", "params", "params", "params"]
    assert budget_metric(0.5, "latency") == "latency" and budget_metric("25ms", "latency") == "latency"
    with pytest.raises(BudgetError, match="latency budget but metric='macs'"):
        budget_metric("25ms", "macs")
    with pytest.raises(BudgetError, match="must be one of"):
        budget_metric("25ms", "flops")
    with pytest.raises(BudgetError, match="is a latency budget, not a params count"):
        parse_budget("25ms", 1000)


# -- the table ------------------------------------------------------------------------------------------------------

def test_every_block_and_candidate_has_a_latency_entry(timed_cm):
    table = timed_cm.table.latency
    assert set(table) == set(timed_cm.names)
    for name in timed_cm.names:
        assert set(table[name]) == set(timed_cm.options(name)) == set(timed_cm.table.params[name])
        assert all(isinstance(v, float) and v >= 0 for v in table[name].values())


def test_entries_are_the_block_variants_timed_on_their_block_input(timed_cm):
    # the fake timer turns parameters into ms: each entry is that variant module's parameters / 1000
    for name in timed_cm.names:
        for spec, ms in timed_cm.table.latency[name].items():
            assert ms == pytest.approx(timed_cm.table.params[name][spec] / 1000)


def test_plan_estimate_is_teacher_total_minus_teacher_blocks_plus_chosen_blocks(teacher, timed_cm):
    # with an additive (fake) timer the estimate must equal timing the built student as a whole
    assert timed_cm.total("latency") == pytest.approx(_params(teacher) / 1000)
    plans = _all_plans(timed_cm)
    for plan in [plans[0], plans[-1], *random.Random(0).sample(plans[1:-1], 4)]:
        student = fxswap.cheapen(teacher, plan)
        assert timed_cm.cost(plan, "latency") == pytest.approx(_params(student) / 1000), plan


def test_identical_variants_on_identical_inputs_are_timed_once(teacher):
    seen = []

    def counting(module, args, kwargs):
        seen.append((type(module).__name__, tuple(args[0].shape), module.training))
        return 1.0

    variants = {b.name: {"S": teacher.get_submodule(b.name)} for b in fxswap.find_blocks(teacher)}
    t = block_latency_table(teacher, variants, (3, 16, 16), 2, timer=counting)
    # the whole model, then layer1.0 == layer1.1 (same module, same input) and layer2.0: 3 timings, all in eval mode
    assert len(seen) == 3 and not any(training for *_, training in seen)
    assert seen[1][1] == (2, 8, 16, 16) and seen[2][1] == (2, 8, 16, 16)
    assert t.teacher == {"layer1.0": 1.0, "layer1.1": 1.0, "layer2.0": 1.0} and t.fixed_ms == -2.0
    assert teacher.training  # the caller's model is untouched


def test_rounds_time_everything_round_robin_and_keep_medians(teacher):
    calls = []

    def rising(module, args, kwargs):  # every call is slower than the last: a machine getting busier
        calls.append(type(module).__name__)
        return float(len(calls))

    variants = {b.name: {"S": teacher.get_submodule(b.name)} for b in fxswap.find_blocks(teacher)}
    t = block_latency_table(teacher, variants, (3, 16, 16), 2, timer=rising, rounds=3)
    # 3 distinct jobs (whole model, layer1.x, layer2.0) x 3 rounds; each job's median is its second-round time
    assert len(calls) == 9 and calls[0] == calls[3] == calls[6]
    assert t.total_ms == 4.0 and t.teacher == {"layer1.0": 5.0, "layer1.1": 5.0, "layer2.0": 6.0}
    with pytest.raises(FxswapError, match="rounds must be a positive integer"):
        block_latency_table(teacher, variants, (3, 16, 16), 2, timer=rising, rounds=0)


def test_the_real_timer_fills_the_table_with_finite_timings(teacher):
    cm = CostModel(teacher, ["S", "B(2)"], input_shape=(3, 16, 16), macs=False)
    before = {k: v.clone() for k, v in cm.base.state_dict().items()}
    measured = cm.measure_latency(2, warmup=1, min_run_time=0.002, num_threads=1)
    assert measured.total_ms > 0 and math.isfinite(measured.total_ms)
    assert all(math.isfinite(v) and v > 0 for row in cm.table.latency.values() for v in row.values())
    assert cm.table.fixed["latency"] == pytest.approx(measured.total_ms - sum(measured.teacher.values()))
    assert cm.table.measured_on == "(cpu, batch 2, input (3, 16, 16), 1 threads)"
    assert all(torch.equal(before[k], v) for k, v in cm.base.state_dict().items())


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "3ms"])
def test_a_timer_returning_nonsense_is_a_clear_error(teacher, value):
    cm = CostModel(teacher, ["S"], input_shape=(3, 16, 16), macs=False)
    with pytest.raises(FxswapError, match="finite number of milliseconds"):
        cm.measure_latency(1, timer=lambda *_: value)


def test_a_latency_budget_without_the_column_says_how_to_measure_it(teacher):
    cm = CostModel(teacher, SPECS, input_shape=(3, 16, 16), macs=False)
    with pytest.raises(BudgetError, match="measure_latency"):
        sample_plans(cm, 1.0, 1, metric="latency")


# -- the search -----------------------------------------------------------------------------------------------------

def test_latency_budget_is_a_ceiling(timed_cm):
    estimates = sorted(timed_cm.cost(p, "latency") for p in _all_plans(timed_cm))
    budget = estimates[len(estimates) // 2]
    plans = sample_plans(timed_cm, budget, 5, tolerance=0.2, metric="latency", seed=0)
    assert plans
    expected = sum(1 for e in estimates if 0.8 * budget <= e <= budget)
    assert len(plans) == min(5, expected)
    assert all(0.8 * budget <= timed_cm.cost(p, "latency") <= budget for p in plans)


def test_blockswap_with_a_duration_picks_a_plan_within_the_budget(teacher):
    budget_ms = 0.9 * _params(teacher) / 1000
    result = blockswap(teacher, f"{budget_ms}ms", _batch(), samples=4, candidates=SPECS, macs=False, tolerance=0.2,
                       latency_options={"timer": fake_timer})
    assert result.metric == "latency" and result.budget == pytest.approx(budget_ms)
    for c in result.candidates:
        assert c.latency_ms <= result.budget
        # the fake timer on the built student agrees with the table's estimate
        assert _params(fxswap.cheapen(teacher, c.plan)) / 1000 == pytest.approx(c.latency_ms)
    text = result.table()
    assert "latency ms" in text and f"{result.candidates[0].latency_ms:.2f}" in text
    assert result.teacher_latency_ms == pytest.approx(_params(teacher) / 1000)


def test_a_fraction_of_the_teacher_latency(teacher, timed_cm):
    result = blockswap(teacher, "80%latency", _batch(), samples=2, cost_model=timed_cm, tolerance=0.3)
    assert result.budget == pytest.approx(0.8 * _params(teacher) / 1000)
    assert all(c.latency_ms <= result.budget for c in result.candidates)


@pytest.mark.parametrize("side", ["too fast", "too slow"])
def test_an_unreachable_latency_budget_names_the_fastest_reachable(teacher, timed_cm, side):
    # the fake timer is additive in parameters: the fastest student takes the smallest variant everywhere
    fastest, slowest = (_params(fxswap.cheapen(teacher, _extreme_plan(timed_cm, pick))) / 1000 for pick in (min, max))
    # the window is [budget * 0.95, budget]: below the fastest plan, or entirely above the slowest
    budget = 0.9 * fastest if side == "too fast" else slowest / 0.9
    with pytest.raises(BudgetError) as err:
        blockswap(teacher, f"{budget}ms", _batch(), samples=2, tolerance=0.05, cost_model=timed_cm)
    msg = str(err.value)
    assert f"fastest reachable is {fastest:.4g} ms" in msg and f"slowest {slowest:.4g} ms" in msg
    assert "measured (cpu, batch 2" in msg and f"{budget:.4g} ms" in msg


def test_json_carries_the_latency(tmp_path, teacher, timed_cm):
    result = blockswap(teacher, "90%latency", _batch(), samples=3, cost_model=timed_cm, tolerance=0.3)
    data = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert data["metric"] == "latency" and data["latency_ms"] == result.candidates[0].latency_ms
    assert data["teacher_latency_ms"] == result.teacher_latency_ms and data["latency_measured_on"]
    assert [t["latency_ms"] for t in data["top"]] == [c.latency_ms for c in result.candidates]
    loaded = BlockSwapResult.from_json(tmp_path / "r.json")
    assert [c.latency_ms for c in loaded.candidates] == [c.latency_ms for c in result.candidates]
    assert "latency ms" in loaded.table()


def test_a_params_budget_can_show_the_latency_column(teacher):
    result = blockswap(teacher, 0.8, _batch(), samples=2, candidates=SPECS, macs=False, tolerance=0.2, latency=True,
                       latency_options={"timer": fake_timer})
    assert result.metric == "params" and all(c.latency_ms is not None for c in result.candidates)
    with pytest.raises(BudgetError, match="accepted: warmup"):
        blockswap(teacher, "25ms", _batch(), samples=2, candidates=SPECS, latency_options={"min_runtime": 1})


def test_cli_search_with_a_latency_budget(monkeypatch, capsys, tmp_path):
    real = CostModel.measure_latency
    batches = []

    def with_fake_timer(self, batch=1, **options):
        batches.append(batch)
        return real(self, batch, **{**options, "timer": fake_timer})

    monkeypatch.setattr(CostModel, "measure_latency", with_fake_timer)
    from fxswap.cli import main

    out = tmp_path / "best.json"
    teacher_ms = _params(fxswap.models.create_model("wrn-10-1")) / 1000
    budget = 0.9 * teacher_ms  # wrn-10-1 with G(N/4) in the middle block: 67.4 ms (fake timer)
    rc = main(["search", "wrn-10-1", "--budget", f"{budget}ms", "--samples", "2", "--batch-size", "4",
               "--latency-batch", "3", "--candidates", "S,B(2),G(N/4)", "--tolerance", "0.3", "--out", str(out),
               "--no-progress", "--no-macs", "--json"])
    assert rc == 0 and batches == [3]
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["metric"] == "latency" and printed["teacher_latency_ms"] == pytest.approx(teacher_ms)
    assert all(t["latency_ms"] <= budget for t in printed["top"])
    student = fxswap.cheapen(fxswap.models.create_model("wrn-10-1"), printed["plan"])
    assert _params(student) / 1000 == pytest.approx(printed["latency_ms"])
    assert main(["search", "wrn-10-1", "--budget", "1us", "--samples", "2", "--batch-size", "2", "--no-macs",
                 "--candidates", "S,B(2)", "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert "fastest reachable" in capsys.readouterr().err
    assert main(["search", "wrn-10-1", "--budget", "25", "--metric", "latency"]) == 2
    assert "'25ms'" in capsys.readouterr().err
