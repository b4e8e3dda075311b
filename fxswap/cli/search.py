"""``fxswap search``: BlockSwap on the command line.

    fxswap search wrn-40-2 --budget 400k --data cifar10_subset.npz --samples 1000
    fxswap search wrn-40-2 --budget 25ms --latency-batch 32 --samples 200

samples configurations within ``--tolerance`` of the budget (either side of it for a
parameter or MAC budget: ``--budget 400k`` may pick 408,890), scores each by Fisher potential on
one random minibatch of ``--data`` (an ``.npz`` read by
:class:`fxswap.data.NpzDataset`, normalised with the reference CIFAR-10
mean/std of :mod:`fxswap.data`), writes the result as JSON (which ``fxswap
cheapen MODEL plan.json`` accepts), then prints the top candidates. Without
``--data`` the minibatch is random noise with random labels (said so on stderr).

A latency budget (``25ms``, ``0.1s``, ``60%latency``, or ``--metric latency``
with a fraction) first times every block × candidate variant on this
machine (:meth:`fxswap.search.plans.CostModel.measure_latency`) at
``--latency-batch`` (default ``--batch-size``); the budget is a ceiling:
samples are kept when their estimated latency is within ``--tolerance``
below it. ``--latency`` adds the measured column to a parameter or MAC
search. ``--json`` prints the result (every scored candidate, with
``latency_ms`` when measured) on stdout instead of the table.

>>> from fxswap.cli.main import build_parser
>>> args = build_parser().parse_args(["search", "wrn-40-2", "--budget", "400k"])
>>> args.budget, args.samples, args.batch_size, args.tolerance, args.metric
('400k', 1000, 128, 0.025, None)
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from ..errors import FxswapError
from ..process_group import join
from .common import (check_writable, echo, forwarded_warnings, model_from_args, non_negative_int, parse_shape,
                     positive_float, positive_int, print_json)

__all__ = ["add_parsers", "run_search", "split_specs", "load_batch"]


def split_specs(text: str) -> list[str]:
    """Split a candidate list on commas or semicolons outside parentheses.

    >>> split_specs("S, G(N/4), BG(2,M/4); B(2)")
    ['S', 'G(N/4)', 'BG(2,M/4)', 'B(2)']
    """
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch in ",;" and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def load_batch(path: str | None, batch_size: int, input_shape: tuple[int, ...], num_classes: int, seed: int = 0):
    """One minibatch ``(x, y, description)``: ``batch_size`` random training
    images of an ``.npz`` (:class:`fxswap.data.NpzDataset`, 3-channel images
    normalised with :data:`fxswap.data.CIFAR10_MEAN` / ``CIFAR10_STD``), or
    random noise and labels when ``path`` is None.

    >>> x, y, what = load_batch(None, 4, (3, 32, 32), 10)
    >>> tuple(x.shape), tuple(y.shape), what
    ((4, 3, 32, 32), (4,), 'random noise (no --data)')
    """
    from ..data.datasets import CIFAR10_MEAN, CIFAR10_STD, Normalize, NpzDataset

    if batch_size < 1:
        raise FxswapError(f"--batch-size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    if path is None:
        x = torch.randn((batch_size, *input_shape), generator=gen)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        return x, y, "random noise (no --data)"
    data = NpzDataset(path, "train")
    if len(data) < batch_size:
        raise FxswapError(f"--data {path}: {len(data)} images, fewer than --batch-size {batch_size}")
    idx = torch.randperm(len(data), generator=gen)[:batch_size]
    x = data.images[idx].float() / 255.0
    if x.shape[1] == 3:
        x = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
    return x, data.targets[idx].clone(), f"{batch_size} random images of {Path(path).name} ({len(data)} in all)"


def add_parsers(subparsers, model: argparse.ArgumentParser) -> None:
    """Add ``search`` to ``subparsers``; ``model`` is the shared model parent parser."""
    p = subparsers.add_parser("search", parents=[model],
                              help="BlockSwap: sample students within a budget, rank by Fisher potential")
    p.add_argument("--budget", required=True,
                   help="parameters (400000, 400k, 1.2M), a fraction of the teacher (0.25) or a percentage (25%%), "
                        "met within --tolerance either way (400k picks from 390,000-410,000); or a latency on this "
                        "machine: 25ms, 0.1s, 800us, 60%%latency, a ceiling (within --tolerance below it)")
    p.add_argument("--metric", choices=("params", "macs", "latency"), default=None,
                   help="what the budget counts (default: latency for a duration or ...latency, else params)")
    p.add_argument("--tolerance", type=positive_float, default=0.025,
                   help="accepted distance from the budget as a fraction of it (default 0.025): symmetric for "
                        "params/MACs (400k +-2.5%%: 390,000 to 410,000, so 408,890 qualifies), below only for "
                        "latency")
    p.add_argument("--samples", type=positive_int, default=1000, help="configurations to score (paper: 1000)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="minibatch size (paper: the training batch, 128)")
    p.add_argument("--data", default=None, help=".npz with x_train (N,H,W,C uint8) and y_train; default: random data")
    p.add_argument("--candidates", default=None,
                   help='specs a block may become, e.g. "S,G(N/4),B(2),BG(2,M/4)", or a set: "paper" (the '
                        'default, the paper\'s 21) or "reference" (the reference code\'s 23)')
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed for the minibatch, the sampling and the initialisation")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="scoring precision; auto (default): bf16 + channels_last only where bf16 is native and its "
                        "ranking agreement with fp32 was measured (rho >= 0.98), else fp32; recorded in the JSON")
    p.add_argument("--top", type=positive_int, default=10, help="candidates to print (the JSON keeps all scored)")
    p.add_argument("--out", default=None, help="JSON path for the result (default: blockswap-MODEL-BUDGET.json)")
    p.add_argument("--no-macs", action="store_true", help="do not count MACs (faster set-up)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--latency", action="store_true",
                   help="also measure the latency column for a params/MACs budget (a latency budget always does)")
    p.add_argument("--latency-batch", type=positive_int, default=None,
                   help="batch size the latency is measured at (default: --batch-size)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for the latency timings (default: torch's; 1 on a busy machine)")
    p.add_argument("--min-run-time", type=positive_float, default=0.2,
                   help="seconds of timed calls per latency measurement (default 0.2)")
    p.add_argument("--latency-rounds", type=positive_int, default=1,
                   help="time the latency table this many times round-robin, keeping medians (a busy machine)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (every scored candidate) instead of the table")
    p.add_argument("--allow-larger", action="store_true",
                   help="also sample specs that make a block larger than the teacher's (never sampled by default, "
                        "as fxswap cheapen refuses them); build the result with fxswap cheapen --allow-larger")
    p.set_defaults(run=run_search)


def run_search(args: argparse.Namespace) -> int:
    """Run ``fxswap search`` from parsed arguments; returns the exit status."""
    from ..precision import resolve_precision
    from ..search.plans import CostModel, blockswap, budget_metric, candidate_specs, parse_budget, share_latency

    out = Path(args.out) if args.out else Path(f"blockswap-{_slug(args.model)}-{_slug(str(args.budget))}.json")
    check_writable(out, "--out")
    where = join()  # torchrun: the samples are scored in shares, rank 0 prints and writes
    say = echo if where.writer else _silent
    metric = budget_metric(args.budget, args.metric)
    parse_budget(args.budget, 1, metric)  # its form, before any work; the teacher's total comes with the cost table
    model = model_from_args(args)
    shape = parse_shape(args.input, model)
    num_classes = args.num_classes or getattr(model, "num_classes", None) or _out_features(model) or 10
    x, y, what = load_batch(args.data, args.batch_size, shape, num_classes, args.seed)
    if args.data is None:
        say("fxswap: note: no --data given: scoring on random noise with random labels; pass --data "
              "cifar10_subset.npz for the paper's setting (one real training minibatch)", file=sys.stderr)
    candidates = candidate_specs(split_specs(args.candidates)) if args.candidates else None
    start = time.perf_counter()
    say(f"building the cost table ({len(candidates) if candidates else 21} candidate specs) ...", file=sys.stderr)
    cm = CostModel(model, candidates, input_shape=shape, macs=not args.no_macs or metric == "macs",
                   seed=args.seed, allow_larger=args.allow_larger)
    if (metric == "latency" or args.latency) and where.writer:  # blockswap gives rank 0's timings to the others
        batch = args.latency_batch or args.batch_size
        say(f"measuring the latency table (batch {batch}, {args.min_run_time:g} s per timing) ...", file=sys.stderr)
        cm.measure_latency(batch, min_run_time=args.min_run_time, num_threads=args.threads,
                           rounds=args.latency_rounds)
    share_latency(cm, where)
    budget = parse_budget(args.budget, cm.total(metric), metric)
    cheapest, dearest = cm.reachable(metric)
    if metric == "latency":
        costs = (f"latency {cm.table.measured_on}: teacher {cm.total(metric):.4g} ms, estimates reachable "
                 f"[{cheapest:.4g}, {dearest:.4g}] ms, budget {budget:.4g} ms (-{args.tolerance:.1%})")
    else:
        costs = (f"{metric}: teacher {cm.total(metric):,}, reachable [{cheapest:,}, {dearest:,}], budget {budget:,} "
                 f"±{args.tolerance:.1%}")
    say(f"{len(cm.names)} blocks; {costs}; minibatch: {what}", file=sys.stderr)
    say(f"precision: {resolve_precision(args.precision, x.device, purpose='score').describe()}", file=sys.stderr)
    with forwarded_warnings():
        result = blockswap(model, args.budget, (x, y), args.samples, tolerance=args.tolerance, metric=metric,
                           seed=args.seed, progress=not args.no_progress, cost_model=cm, precision=args.precision)
    if not where.writer:
        return 0
    scoring = result.seconds
    result.seconds = time.perf_counter() - start
    result.model = args.model
    result.to_json(out)
    best = result.candidates[0]
    per = scoring / max(result.samples, 1)
    cost = getattr(best, metric, None) if metric != "latency" else None
    summary = (f"\nbest plan ({best.params:,} params"
               + (f", {cost / budget - 1:+.1%} of the {budget:,} {metric} budget (tolerance ±{args.tolerance:.1%}: "
                  "either side)" if isinstance(cost, (int, float)) and budget else "")
               + (f", estimated {best.latency_ms:.4g} ms" if best.latency_ms is not None else "")
               + f", Fisher {best.fisher:.5g}) saved to {out}\n{result.samples} samples scored in {scoring:.1f} s "
               f"({per:.2f} s each, {per * 1000 / 60:.1f} min per 1000); {result.seconds:.1f} s in all with the cost "
               f"table\nbuild it: fxswap cheapen {args.model} {out}{' --allow-larger' if args.allow_larger else ''}")
    if args.json:
        print_json(result.to_dict())
        say(summary, file=sys.stderr)
        return 0
    say(result.table(args.top))
    say(summary)
    return 0


def _silent(*args, **kwargs) -> None:
    """What a rank other than 0 prints: nothing."""


def _out_features(model) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last.out_features if last is not None else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")
