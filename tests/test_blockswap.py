"""BlockSwap: exact per-block costs, sampling within the budget, reproducibility, errors, JSON and CLI."""
import json
import random

import numpy as np
import pytest
import torch

import fxswap
from fxswap.search.plans import (PAPER_CANDIDATES, BlockSwapResult, CostModel, blockswap, parse_budget,
                              sample_plans)
from fxswap.cli.search import load_batch, split_specs
from fxswap.errors import BudgetError
from fxswap.search.fisher import fisher_potential
from fxswap.models import cifar_resnet, wrn

SPECS = ["S", "G(4)", "G(N/4)", "G(N)", "B(2)", "BG(2,M/4)", "BG(2,16)", "S-2x2"]


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def wrn_cm():
    return CostModel(wrn(16, 1), SPECS, input_shape=(3, 32, 32), macs=True)


@pytest.fixture(scope="module")
def resnet_cm():
    return CostModel(cifar_resnet(8), ["S", "G(N/2)", "B(2)", "BG(2,M/2)"], input_shape=(3, 32, 32), macs=True)


def _random_plans(cm, k, seed=0):
    rnd = random.Random(seed)
    return [{n: rnd.choice(cm.options(n)) for n in cm.names} for _ in range(k)]


@pytest.mark.parametrize("which", ["wrn_cm", "resnet_cm"])
def test_cost_model_is_exact(which, request):
    cm = request.getfixturevalue(which)
    teacher = wrn(16, 1) if which == "wrn_cm" else cifar_resnet(8)
    for plan in _random_plans(cm, 3):
        report = fxswap.count(fxswap.cheapen(teacher, plan), (3, 32, 32))
        assert cm.cost(plan) == report.params, plan
        assert cm.cost(plan, "macs") == report.macs, plan


def test_inapplicable_specs_are_left_out(wrn_cm):
    # stage 1 of WRN-16-1 has M = 16/2 = 8 channels: 16 groups do not divide them
    assert "BG(2,16)" not in wrn_cm.options("layer1.0")
    assert "BG(2,16)" in wrn_cm.options("layer3.0")
    assert "layer1.0" in wrn_cm.skipped


def test_paper_candidates():
    assert len(PAPER_CANDIDATES) == 21
    assert {"S", "B(2)", "B(4)", "G(N)", "BG(2,M)", "G(16)", "BG(2,M/16)"} <= set(PAPER_CANDIDATES)


@pytest.mark.parametrize("metric, budget", [("params", 100_000), ("params", 0.3), ("macs", 0.5)])
def test_samples_within_budget(wrn_cm, metric, budget):
    absolute = parse_budget(budget, wrn_cm.total(metric))
    plans = sample_plans(wrn_cm, absolute, 50, metric=metric, seed=3)
    assert len(plans) == 50 and len({tuple(p.values()) for p in plans}) == 50
    for plan in plans:
        assert abs(wrn_cm.cost(plan, metric) - absolute) <= 0.025 * absolute


def test_sampler_draws_every_candidate_of_every_block_including_the_last(wrn_cm):
    # a window holding every configuration: each block's spec is then uniform over its options, so 400
    # distinct plans miss a given option of a block with probability (7/8)^400; an upper bound of
    # rng.integers one short would never draw the last candidate (BG(2,16), or S-2x2 where it is left out)
    cheapest, dearest = wrn_cm.reachable()
    budget = (cheapest + dearest) // 2
    tolerance = min(0.999, 1.001 * max(dearest - budget, budget - cheapest) / budget)
    plans = sample_plans(wrn_cm, budget, 400, tolerance=tolerance, seed=0)
    assert len(plans) == 400
    for name in wrn_cm.names:
        assert {p[name] for p in plans} == set(wrn_cm.options(name)), name
    assert {p[name] for p in plans for name in wrn_cm.names} == set(SPECS)


def test_narrow_budget_uses_exact_fallback(wrn_cm):
    cheapest, _ = wrn_cm.reachable()
    budget = int(cheapest * 1.02)  # the window barely holds a few cheap configurations
    plans = sample_plans(wrn_cm, budget, 5, tolerance=0.01, seed=0, max_draws=1)
    assert plans
    assert all(abs(wrn_cm.cost(p) - budget) <= 0.01 * budget for p in plans)


@pytest.mark.parametrize("budget", [1000, 10_000_000])
def test_impossible_budget(wrn_cm, budget):
    cheapest, dearest = wrn_cm.reachable()
    with pytest.raises(BudgetError) as err:
        sample_plans(wrn_cm, budget, 10)
    assert f"{cheapest:,}" in str(err.value) and f"{dearest:,}" in str(err.value)


def test_budget_parsing():
    assert parse_budget("400k", 10) == 400_000
    assert parse_budget("1.2M", 10) == 1_200_000
    assert parse_budget(0.25, 2_000_000) == 500_000
    assert parse_budget("25%", 2_000_000) == 500_000
    assert parse_budget(400_000, 10) == 400_000
    for bad in ("lots", -3, 0, "0"):
        with pytest.raises(BudgetError):
            parse_budget(bad, 100)


def test_score_equals_fisher_of_built_network(wrn_cm):
    batch = _batch()
    for plan in _random_plans(wrn_cm, 3, seed=1):
        total, blocks = wrn_cm.score(plan, batch)
        ref = fisher_potential(wrn_cm.build(plan), batch)
        assert total == pytest.approx(ref.total, rel=1e-5)
        for n in blocks:
            assert blocks[n] == pytest.approx(ref.blocks[n], rel=1e-5)


def test_same_seed_same_plan():
    batch = _batch()
    kwargs = dict(samples=4, candidates=["S", "G(N/4)", "B(2)", "BG(2,M/2)"], macs=False)
    a = blockswap(wrn(16, 1), 0.5, batch, seed=7, **kwargs)
    b = blockswap(wrn(16, 1), 0.5, batch, seed=7, **kwargs)
    assert a.best == b.best
    assert [c.fisher for c in a.candidates] == [c.fisher for c in b.candidates]
    fishers = [c.fisher for c in a.candidates]
    assert fishers == sorted(fishers, reverse=True)
    assert all(abs(c.params - a.budget) <= 0.025 * a.budget for c in a.candidates)


def test_json_round_trip_through_cheapen(tmp_path, wrn_cm):
    teacher = wrn(16, 1)
    result = blockswap(teacher, 90_000, _batch(), samples=5, cost_model=wrn_cm)
    path = result.to_json(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert {"plan", "params", "fisher", "budget"} <= set(data)
    assert data["plan"] == result.best
    student = fxswap.cheapen(teacher, data)
    assert sum(p.numel() for p in student.parameters()) == data["params"]
    loaded = BlockSwapResult.from_json(path)
    assert loaded.best == result.best and loaded.budget == result.budget
    assert "rank" in result.table() and "MACs" in result.table()
    from fxswap.cli import main

    assert main(["cheapen", "wrn-16-1", str(path)]) == 0


def test_cli_search(tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, 20))
    from fxswap.cli import main

    out = tmp_path / "best.json"
    rc = main(["search", "wrn-16-1", "--budget", "50%", "--data", str(npz), "--samples", "3",
                              "--batch-size", "8", "--candidates", "S,G(N/4),B(2),BG(2,M/2)", "--out", str(out),
                              "--no-progress", "--no-macs", "--top", "1"])
    assert rc == 0
    data = json.loads(out.read_text())
    teacher = sum(p.numel() for p in wrn(16, 1).parameters())
    assert abs(data["params"] - teacher / 2) <= 0.025 * teacher / 2
    assert len(data["top"]) == 3  # every scored candidate is kept, not just the printed ones
    assert "best plan" in capsys.readouterr().out
    assert main(["cheapen", "wrn-16-1", str(out)]) == 0


def test_cli_impossible_budget(capsys):
    from fxswap.cli import main

    rc = main(["search", "wrn-10-1", "--budget", "1k", "--samples", "2", "--batch-size", "4", "--no-macs",
               "--candidates", "S,G(N/4)", "--no-progress"])
    assert rc == 2
    assert "cheapest reachable" in capsys.readouterr().err


def test_load_batch_normalises(tmp_path):
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=np.full((4, 32, 32, 3), 255, dtype=np.uint8), y_train=np.arange(4))
    x, y, _ = load_batch(str(npz), 2, (3, 32, 32), 10)
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.int64
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.4914) / 0.2023, rel=1e-4)
    assert split_specs("BG(2,M/4),S") == ["BG(2,M/4)", "S"]


@pytest.mark.parametrize("budget", ["150%", "101%", "1.5", 1.5, float("nan"), float("inf"), "nan", "-5", "0%", 0])
def test_bad_budgets_say_what_is_accepted(budget):
    with pytest.raises(BudgetError, match=r"fraction of the teacher in \(0, 1\]"):
        parse_budget(budget, 1000)


def test_cost_table_is_plain_data_with_room_for_latency(wrn_cm):
    from fxswap.search.costs import CostTable

    table = wrn_cm.table
    assert isinstance(table, CostTable) and table.latency is None
    plan = {n: wrn_cm.options(n)[-1] for n in wrn_cm.names}
    assert table.cost(plan) == wrn_cm.cost(plan)
    table.latency = {n: {s: 1.0 for s in table.options(n)} for n in table.names}
    table.fixed["latency"] = 0.5
    assert table.cost(plan, "latency") == 0.5 + len(table.names)
    table.latency = None
