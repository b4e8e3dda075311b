"""Figures of a search and of a training run: the BlockSwap Pareto front and training curves (matplotlib).

* :func:`plot_search`: a saved search (``fxswap search --out r.json``,
  :meth:`fxswap.BlockSwapResult.to_json`) as Fisher potential against each cost
  the candidates carry (``params``, ``macs``, ``latency``), one panel each: every
  scored candidate, the Pareto front (no other candidate is as cheap *and*
  scores higher) and the pick (the highest Fisher potential, what ``best`` is)
  highlighted, the budget as a dashed line on its metric's panel, shaded where
  candidates were accepted (``budget ± tolerance`` for params and MACs, so the
  pick may cost a little more than the budget; below it only for latency);
* :func:`plot_history`: a run's ``history.jsonl`` (:func:`fxswap.fit` with
  ``out_dir``) as the training loss terms and the error rates (100 % − accuracy,
  training and validation) per epoch; LIT's stages are marked;
* :func:`plot`: either, chosen by the file (``.json`` or ``.jsonl``), as ``fxswap plot FILE``.

matplotlib is an optional dependency (``pip install matplotlib``, or in a
checkout ``pip install -e '.[plot]'``: fxswap is not on the package index); without
it these functions raise :class:`~fxswap.errors.FxswapError` saying so.
:func:`pareto_front`, :func:`load_search` and :func:`load_history` need no
matplotlib. The figures are drawn with matplotlib's object API (no ``pyplot``),
so nothing changes the backend of the caller's session.

>>> pareto_front([10, 12, 11, 9], [0.5, 0.9, 0.4, 0.2])  # (cost, score): index 2 is dearer and worse than 0
[3, 0, 1]
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import FxswapError

__all__ = ["pareto_front", "load_search", "load_history", "search_figure", "history_figure", "plot_search",
           "plot_history", "plot"]

#: The cost columns a search result's candidates may carry, with axis labels (latency in seconds, shown in ms).
COSTS = {"params": "parameters", "macs": "MACs", "latency": "latency (ms)"}
SEARCH_FORMAT = ("a BlockSwap result saved as JSON (fxswap search --out, BlockSwapResult.to_json): a dict with "
                 "'top', a list of candidates each with 'fisher' and at least one of 'params', 'macs', 'latency'")
HISTORY_FORMAT = ("a training history as JSON lines (history.jsonl, written by fit(out_dir=...)): one object per "
                  "epoch with 'epoch' and 'train_loss'")


def _plain(text: Any) -> str:
    """Text from a file, shown as written: matplotlib would parse ``$...$`` as maths (and fail on bad maths)."""
    return str(text).replace("$", r"\$")


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FxswapError("plotting needs matplotlib, which is not installed: pip install matplotlib (or, in a "
                          "checkout of fxswap, pip install -e '.[plot]')") from None
    return Figure


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (cost ≤ and score ≥, one of them strictly), by cost.

    Lower cost and higher score are better (BlockSwap: fewer parameters, higher
    Fisher potential). Of points with equal cost and score, the first is kept.

    >>> pareto_front([1, 2, 3], [1, 2, 3])  # each pays more for a higher score
    [0, 1, 2]
    >>> pareto_front([1, 2, 3], [3, 2, 1])  # the cheapest also scores highest
    [0]
    >>> pareto_front([1, 1, 2], [1, 2, 3])
    [1, 2]
    """
    if len(costs) != len(scores):
        raise FxswapError(f"pareto_front needs one score per cost, got {len(costs)} costs and {len(scores)} scores")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FxswapError(f"no such file: {str(path)!r}; expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FxswapError(f"{path} is not JSON ({e}); expected {what}") from None


def _number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # a JSON integer beyond any float
        return False


def load_search(source: str | os.PathLike | Mapping[str, Any] | Any) -> dict[str, Any]:
    """A search result as a dict (:meth:`~fxswap.BlockSwapResult.to_dict`'s form), checked: a path to its
    JSON, the dict itself, or a :class:`~fxswap.BlockSwapResult`.

    >>> from fxswap.search.plans import BlockSwapResult, Candidate
    >>> r = BlockSwapResult([Candidate({"a": "S"}, 100, None, 0.5)], budget=100)
    >>> [c["params"] for c in load_search(r)["top"]]
    [100]
    >>> load_search({"plan": {}})
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: the search result has no candidates ('top' is missing or empty); expected ...
    """
    if hasattr(source, "to_dict") and hasattr(source, "candidates"):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = _read_json(Path(source), SEARCH_FORMAT)
    if not isinstance(data, dict):
        raise FxswapError(f"the search result is a {type(data).__name__}, not a dict; expected {SEARCH_FORMAT}")
    top = data.get("top")
    if not isinstance(top, list) or not top:
        raise FxswapError(f"the search result has no candidates ('top' is missing or empty); expected {SEARCH_FORMAT}")
    for i, c in enumerate(top):
        if not isinstance(c, dict) or not _number(c.get("fisher")):
            raise FxswapError(f"candidate {i} of the search result has no numeric 'fisher'; expected {SEARCH_FORMAT}")
    if not any(all(_number(c.get(m)) for c in top) for m in COSTS):
        raise FxswapError(f"the search result's candidates share no cost column; expected {SEARCH_FORMAT}")
    return data


def load_history(source: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A training history: a ``history.jsonl`` path (or a run folder holding one, or ``student/history.jsonl``),
    or the list :func:`fxswap.fit` returned; every row checked for ``epoch`` and ``train_loss``.

    >>> load_history([{"epoch": 1, "lr": 0.1, "train_loss": 2.0}])
    [{'epoch': 1, 'lr': 0.1, 'train_loss': 2.0}]
    >>> load_history([{"lr": 0.1}])
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: history row 1 lacks 'epoch', 'train_loss'; expected a training history ...
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = next((p for p in (path / "history.jsonl", path / "student" / "history.jsonl") if p.is_file()),
                        path / "history.jsonl")
        if not path.is_file():
            raise FxswapError(f"no such file: {str(path)!r}; expected {HISTORY_FORMAT}")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as e:
                raise FxswapError(f"{path} line {n} is not JSON ({e}); expected {HISTORY_FORMAT}") from None
    else:
        rows = list(source)
    if not rows:
        raise FxswapError(f"the history is empty (no epoch finished yet?); expected {HISTORY_FORMAT}")
    for n, row in enumerate(rows, start=1):
        missing = [k for k in ("epoch", "train_loss") if not isinstance(row, dict) or k not in row]
        if missing:
            raise FxswapError(f"history row {n} lacks {', '.join(map(repr, missing))}; expected {HISTORY_FORMAT}")
    return [dict(r) for r in rows]


def _scale(metric: str, values: list[float]) -> list[float]:
    return [v * 1000.0 for v in values] if metric == "latency" else values  # seconds → ms


def search_figure(source, metrics: Sequence[str] | None = None):
    """The Pareto-front figure of a search (see the module doc): a matplotlib ``Figure``, one panel per cost.

    ``metrics``: which costs to draw (default: every one all candidates have).
    Each panel holds three artists with labels ``"candidates"``, ``"Pareto front"``
    and ``"pick"`` (plus ``"budget"`` on the budget's metric).

    >>> from fxswap.search.plans import BlockSwapResult, Candidate
    >>> r = BlockSwapResult([Candidate({"a": "B(2)"}, 90, 900, 0.6), Candidate({"a": "G(2)"}, 80, 950, 0.4)],
    ...                     budget=100)
    >>> fig = search_figure(r)  # doctest: +SKIP
    >>> [ax.get_xlabel() for ax in fig.axes]  # doctest: +SKIP
    ['parameters', 'MACs']
    """
    data = load_search(source)
    top = data["top"]
    have = [m for m in COSTS if all(_number(c.get(m)) for c in top)]
    metrics = list(metrics) if metrics is not None else have
    unknown = [m for m in metrics if m not in have]
    if unknown or not metrics:
        raise FxswapError(f"cannot plot {', '.join(unknown) or 'nothing'}: this search's candidates carry "
                          f"{', '.join(have)}")
    figure = _matplotlib_figure()(figsize=(5.0 * len(metrics), 4.2), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    fisher = [float(c["fisher"]) for c in top]
    for ax, metric in zip(axes, metrics):
        cost = _scale(metric, [float(c[metric]) for c in top])
        ax.scatter(cost, fisher, s=12, color="0.6", alpha=0.7, label="candidates")
        front = pareto_front(cost, fisher)
        ax.plot([cost[i] for i in front], [fisher[i] for i in front], "-o", color="C0", ms=4, label="Pareto front")
        ax.scatter([cost[0]], [fisher[0]], marker="*", s=220, color="C3", zorder=5, label="pick")
        if data.get("metric") == metric and _number(data.get("budget")):
            budget = _scale(metric, [float(data["budget"])])[0]
            ax.axvline(budget, ls="--", color="0.3", lw=1, label="budget")
            _tolerance_band(ax, metric, budget, data.get("tolerance"))
        ax.set_xlabel(COSTS[metric])
        ax.set_ylabel("Fisher potential")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = f"BlockSwap: {len(top)} candidates" + (f", {data['model']}" if data.get("model") else "")
    figure.suptitle(_plain(title))
    return figure


def _tolerance_band(ax, metric: str, budget: float, tolerance: Any) -> None:
    """Shade where the search accepted candidates: ``budget ± tolerance`` (params, MACs: a candidate may
    cost more than the budget), ``[budget·(1 − tolerance), budget]`` for a latency ceiling."""
    if not _number(tolerance):
        return
    tol = float(tolerance)
    if metric == "latency":
        ax.axvspan(budget * (1 - tol), budget, color="0.5", alpha=0.15, lw=0, label=f"accepted: budget -{tol:.1%}")
    else:
        ax.axvspan(budget * (1 - tol), budget * (1 + tol), color="0.5", alpha=0.15, lw=0,
                   label=f"accepted: budget ±{tol:.1%}")


def _error(acc: Any) -> float:
    return 100.0 * (1.0 - float(acc)) if _number(acc) else math.nan


def history_figure(source):
    """The training-curve figure of a history (see the module doc): two panels, losses and error rates.

    The x axis counts epochs over the whole run (LIT's second stage continues
    after the first; each stage's start is a dotted line with its name). The
    loss panel has one line per ``train_*`` loss term and ``val_loss`` (label =
    the history key); the error panel ``train error`` and ``val error`` in %.

    >>> fig = history_figure([{"epoch": 1, "lr": 0.1, "train_loss": 2.0, "val_acc": 0.25}])  # doctest: +SKIP
    >>> [line.get_label() for line in fig.axes[1].lines]  # doctest: +SKIP
    ['val error']
    """
    rows = load_history(source)
    x = list(range(1, len(rows) + 1))
    figure = _matplotlib_figure()(figsize=(10.0, 4.2), layout="constrained")
    loss_ax, err_ax = figure.subplots(1, 2)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    losses = [k for k in keys if (k.startswith("train_") and k != "train_acc") or k == "val_loss"]
    for k in losses:
        loss_ax.plot(x, [float(r[k]) if _number(r.get(k)) else math.nan for r in rows], marker="o", ms=3,
                     label=_plain(k), ls="--" if k == "val_loss" else "-")
    loss_ax.set_ylabel("loss")
    for key, label in (("train_acc", "train error"), ("val_acc", "val error")):
        if key in keys:
            err_ax.plot(x, [_error(r.get(key)) for r in rows], "-o", ms=3, label=label)
    err_ax.set_ylabel("error (%)")
    stages = [(i, r["stage"]) for i, r in enumerate(rows) if r.get("stage") is not None
              and (i == 0 or rows[i - 1].get("stage") != r["stage"])]
    for ax in (loss_ax, err_ax):
        for i, name in stages:
            ax.axvline(x[i] - 0.5, ls=":", color="0.4", lw=1)
            ax.annotate(_plain(name), (x[i] - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", fontsize=8, va="top", ha="left", color="0.3")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if any(not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=8)
    figure.suptitle(f"training: {len(rows)} epoch(s)")
    return figure


def _save(figure, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.is_dir():
        raise FxswapError(f"{out} is a folder; give the PNG file to write (e.g. {out / 'plot.png'})")
    if not out.parent.is_dir():
        raise FxswapError(f"cannot write {out}: the folder {out.parent} does not exist")
    with warnings.catch_warnings():
        # extreme values in a file can squeeze the panels; the figure is still drawn, without the tidy layout
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        figure.savefig(out, dpi=120)
    return out


def plot_search(source, out: str | os.PathLike, metrics: Sequence[str] | None = None) -> Path:
    """Draw :func:`search_figure` of ``source`` (a search JSON path, its dict, or a result) to ``out``
    (``.png``, or any format matplotlib writes); returns the path written.

    >>> import os, tempfile
    >>> from fxswap.search.plans import BlockSwapResult, Candidate
    >>> r = BlockSwapResult([Candidate({"a": "B(2)"}, 90, None, 0.6), Candidate({"a": "S"}, 99, None, 0.7)], 100)
    >>> plot_search(r, os.path.join(tempfile.mkdtemp(), "front.png")).name  # doctest: +SKIP
    'front.png'
    """
    return _save(search_figure(source, metrics), out)


def plot_history(source, out: str | os.PathLike) -> Path:
    """Draw :func:`history_figure` of ``source`` (a ``history.jsonl`` path, a run folder, or a history list)
    to ``out``; returns the path written.

    >>> import os, tempfile
    >>> rows = [{"epoch": e, "train_loss": 2.0 / e, "val_acc": 0.2 * e} for e in (1, 2, 3)]
    >>> plot_history(rows, os.path.join(tempfile.mkdtemp(), "curves.png")).suffix  # doctest: +SKIP
    '.png'
    """
    return _save(history_figure(source), out)


def plot(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``fxswap plot``: a search result (``.json``) or a history (``.jsonl``, or a run folder) drawn to
    ``out`` (default: ``path`` with the suffix ``.png``; ``DIR/history.png`` for a folder).

    >>> plot("notes.txt")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: cannot plot notes.txt: accepted are a search result .json (fxswap search --out) and ...
    """
    path = Path(path)
    if path.is_dir():
        return plot_history(path, out if out is not None else path / "history.png")
    default = path.with_suffix(".png")
    if path.suffix.lower() == ".jsonl":
        return plot_history(path, out if out is not None else default)
    if path.suffix.lower() == ".json":
        return plot_search(path, out if out is not None else default)
    raise FxswapError(f"cannot plot {path}: accepted are a search result .json (fxswap search --out) and a "
                      "history.jsonl (fit(out_dir=...), fxswap distill --out DIR: DIR/student/history.jsonl), "
                      "or a run folder holding one")
