"""fxswap plot: the Pareto front of a search and the training curves of a run (matplotlib optional)."""
import doctest
import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import fxswap.integrations.plotting as plotting
from fxswap.search.plans import BlockSwapResult, Candidate
from fxswap.cli import main
from fxswap.errors import FxswapError
from fxswap.integrations.plotting import load_history, load_search, pareto_front

PNG = b"\x89PNG\r\n\x1a\n"


def _dominated(i, costs, scores):
    return any(costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j] < costs[i] or scores[j] > scores[i])
               for j in range(len(costs)))


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_undominated_points(points):
    costs, scores = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(costs, scores)
    assert all(not _dominated(i, costs, scores) for i in front)
    kept = {(costs[i], scores[i]) for i in front}
    for i in range(len(points)):  # every undominated point is on the front (once per distinct value)
        if not _dominated(i, costs, scores):
            assert (costs[i], scores[i]) in kept
    assert len(kept) == len(front)
    assert [costs[i] for i in front] == sorted(costs[i] for i in front)


def _result(with_latency=False):
    cands = []
    for i, (params, fisher) in enumerate([(98, 0.9), (90, 0.7), (95, 0.95), (99, 0.6), (85, 0.5), (92, 0.8)]):
        c = Candidate({"layer1.0": f"G({i + 1})"}, params, params * 10 + i, fisher)
        cands.append(c)
    cands.sort(key=lambda c: -c.fisher)
    result = BlockSwapResult(cands, budget=100, model="wrn-10-1")
    data = result.to_dict()
    if with_latency:
        for j, c in enumerate(data["top"]):
            c["latency"] = 0.001 * (j + 1)
    return result, data


def test_load_search_checks_the_file(tmp_path):
    path = tmp_path / "s.json"
    result, _ = _result()
    result.to_json(path)
    assert [c["fisher"] for c in load_search(path)["top"]] == sorted([0.9, 0.7, 0.95, 0.6, 0.5, 0.8], reverse=True)
    for bad, says in [("[1, 2]", "not a dict"), ("{}", "no candidates"), ('{"top": [{"fisher": 1}]}', "no cost"),
                      ('{"top": [{"params": 1}]}', "'fisher'"), ("{", "not JSON")]:
        path.write_text(bad)
        with pytest.raises(FxswapError, match=says):
            load_search(path)


def test_load_history_reads_fit_output_and_refuses_other_files(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    hist = fxswap_fit(loader, tmp_path / "run")
    assert load_history(tmp_path / "run" / "history.jsonl") == hist
    assert load_history(tmp_path / "run") == hist  # a run folder
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1, "train_loss": 1}\nnot json\n')
    with pytest.raises(FxswapError, match="line 2 is not JSON"):
        load_history(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(FxswapError, match="empty"):
        load_history(tmp_path / "empty.jsonl")


def fxswap_fit(loader, out, stage=None):
    from fxswap.distillation import Distiller, fit

    torch.manual_seed(0)
    return fit(Distiller(None, torch.nn.Linear(4, 2)), loader, loader, epochs=2, preset="cosine", progress=False,
               out_dir=out, stage=stage)


def _labelled(ax, label):
    found = [a for a in ax.get_children() if getattr(a, "get_label", lambda: None)() == label]
    assert len(found) == 1, (label, [a.get_label() for a in ax.get_children()])
    return found[0]


def test_search_figure_draws_every_candidate_the_front_and_the_pick():
    pytest.importorskip("matplotlib")
    _, data = _result(with_latency=True)
    fig = plotting.search_figure(data)
    assert [ax.get_xlabel() for ax in fig.axes] == ["parameters", "MACs", "latency (ms)"]
    params_ax, _, latency_ax = fig.axes
    points = _labelled(params_ax, "candidates").get_offsets()
    assert sorted(map(tuple, points.tolist())) == sorted((c["params"], c["fisher"]) for c in data["top"])
    front = _labelled(params_ax, "Pareto front")
    # by hand: 85 (0.5) < 90 (0.7) < 92 (0.8) < 95 (0.95); 98 and 99 score lower than 95
    assert list(front.get_xdata()) == [85, 90, 92, 95] and list(front.get_ydata()) == [0.5, 0.7, 0.8, 0.95]
    assert _labelled(params_ax, "pick").get_offsets().tolist() == [[95, 0.95]]
    assert list(_labelled(params_ax, "budget").get_xdata()) == [100, 100]
    assert _labelled(latency_ax, "pick").get_offsets().tolist() == [[1.0, 0.95]]  # 1 ms: seconds shown in ms
    assert "wrn-10-1" in fig._suptitle.get_text()


def test_search_figure_shades_the_symmetric_tolerance_of_a_parameter_budget():
    """--budget 400k may pick 408,890: the figure shows why, a band budget ± tolerance on the budget's panel."""
    pytest.importorskip("matplotlib")
    _, data = _result()
    data["tolerance"] = 0.05
    params_ax, macs_ax = plotting.search_figure(data).axes
    band = _labelled(params_ax, "accepted: budget ±5.0%")
    if hasattr(band, "get_width"):  # a Rectangle (matplotlib >= 3.9)
        lo, hi = band.get_x(), band.get_x() + band.get_width()
    else:  # a Polygon
        xs = [x for x, _ in band.get_xy()]
        lo, hi = min(xs), max(xs)
    assert (lo, hi) == pytest.approx((95.0, 105.0))  # above the budget too
    assert not [a for a in macs_ax.get_children() if str(getattr(a, "get_label", lambda: "")()).startswith("accepted")]


def test_search_figure_skips_a_cost_the_candidates_lack():
    pytest.importorskip("matplotlib")
    result, _ = _result()
    result = BlockSwapResult([Candidate(c.plan, c.params, None, c.fisher) for c in result.candidates], budget=100)
    fig = plotting.search_figure(result)
    assert [ax.get_xlabel() for ax in fig.axes] == ["parameters"]
    with pytest.raises(FxswapError, match="carry params"):
        plotting.search_figure(result, metrics=["macs"])


def test_history_figure_plots_each_term_and_the_error_rates_over_both_stages(tmp_path):
    pytest.importorskip("matplotlib")
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    rows = fxswap_fit(loader, None, stage="one") + fxswap_fit(loader, None, stage="two")
    fig = plotting.history_figure(rows)
    loss_ax, err_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"train_loss", "train_ce", "val_loss"}
    assert list(lines["train_loss"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["train_loss"].get_ydata()) == [r["train_loss"] for r in rows]
    errors = {line.get_label(): line for line in err_ax.lines if not line.get_label().startswith("_")}
    assert list(errors["val error"].get_ydata()) == pytest.approx([100 * (1 - r["val_acc"]) for r in rows])
    assert list(errors["train error"].get_ydata()) == pytest.approx([100 * (1 - r["train_acc"]) for r in rows])
    assert [t.get_text() for t in loss_ax.texts] == ["one", "two"]
    stage_lines = [line for line in loss_ax.lines if line.get_label().startswith("_")]
    assert [line.get_xdata()[0] for line in stage_lines] == [0.5, 2.5]  # each stage starts at its first epoch


def test_cli_plot_writes_pngs_for_a_search_and_a_history(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result, _ = _result()
    search = result.to_json(tmp_path / "search.json")
    assert main(["plot", str(search)]) == 0
    assert (tmp_path / "search.png").read_bytes()[:8] == PNG
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    fxswap_fit(loader, tmp_path / "run")
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run" / "history.jsonl"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and str(out) in capsys.readouterr().out
    assert main(["plot", str(search), "--metrics", "macs", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv, says", [
    (["plot", "notes.txt"], "accepted are a search result .json"),
    (["plot", "missing.json"], "no such file"),
    (["plot", "missing.jsonl", "--out", "no/such/dir/x.png"], "does not exist"),
])
def test_cli_plot_bad_input_exits_2(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result, _ = _result()
    search = result.to_json(tmp_path / "search.json")
    assert main(["plot", str(search)]) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and "pip install -e '.[plot]'" in err and "fxswap[" not in err
    assert not (tmp_path / "search.png").exists()


def test_the_skipped_doc_examples_run_when_matplotlib_is_installed():
    """plotting's examples that draw are marked +SKIP for installs without matplotlib; run them here."""
    pytest.importorskip("matplotlib")
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    ran = 0
    for name in ("search_figure", "history_figure", "plot_search", "plot_history"):
        text = getattr(plotting, name).__doc__.replace("# doctest: +SKIP", "")
        test = parser.get_doctest(text, dict(vars(plotting)), name, None, 0)
        ran += len(test.examples)
        runner.run(test)
    assert runner.failures == 0 and ran >= 8


_JUNK = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.just(10**400),
                  st.none(), st.booleans(), st.text(max_size=6), st.just("$\\frac{$"), st.lists(st.integers(), max_size=2))


def _mostly(good):
    """``good`` three times in four, junk otherwise: most files get past the checks, some do not."""
    return st.one_of(good, good, good, _JUNK)


_NUM = st.floats(0, 1e6, allow_nan=False)
_CANDIDATE = st.fixed_dictionaries({"fisher": _mostly(_NUM), "params": _mostly(st.integers(1, 10**6))},
                                   optional={"macs": _mostly(st.integers(1, 10**9)), "latency": _mostly(_NUM),
                                             "plan": _JUNK})
_SEARCH = st.fixed_dictionaries({"top": st.lists(_CANDIDATE, min_size=0, max_size=5)},
                                optional={"metric": _mostly(st.sampled_from(["params", "macs", "latency"])),
                                          "budget": _mostly(_NUM), "model": _JUNK})
_ROW = st.fixed_dictionaries({"epoch": _mostly(st.integers(1, 5)), "train_loss": _mostly(st.floats(0, 10))},
                             optional={k: _mostly(st.floats(0, 1)) for k in ("train_kd", "train_acc", "val_acc",
                                                                             "val_loss", "lr", "seconds")}
                             | {"stage": _mostly(st.sampled_from(["lit", "finetune"]))})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(_SEARCH.map(lambda d: ("json", d)), st.lists(_ROW, max_size=4).map(lambda r: ("jsonl", r))))
def test_any_result_file_plots_or_fails_with_a_typed_error(data, tmp_path_factory):
    pytest.importorskip("matplotlib")
    suffix, content = data
    path = tmp_path_factory.mktemp("plot") / f"f.{suffix}"
    text = json.dumps(content) if suffix == "json" else "".join(json.dumps(r) + "\n" for r in content)
    path.write_text(text)
    try:
        out = plotting.plot(path)
    except FxswapError as e:
        event(type(e).__name__)
        assert str(e)
    else:
        event("plotted")
        assert out.read_bytes()[:8] == PNG
