"""``fxswap search``: BlockSwap on the command line.

    fxswap search wrn-40-2 --budget 400k --data cifar10_subset.npz --samples 1000

samples configurations within the budget, scores each by Fisher potential on
one random minibatch of ``--data`` (an ``.npz`` with ``x_train`` uint8 NHWC
and ``y_train``; normalised with the CIFAR mean/std), prints the top
candidates and saves the result as JSON, which ``fxswap cheapen MODEL
plan.json`` accepts. Without ``--data`` the minibatch is random noise with
random labels (said so on stderr).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="fxswap")
>>> add_search_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["search", "wrn-40-2", "--budget", "400k"])
>>> args.budget, args.samples, args.batch_size, args.tolerance
('400k', 1000, 128, 0.025)
"""
from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import FxswapError

__all__ = ["add_search_parser", "run_search", "split_specs", "load_batch"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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
    """One minibatch ``(x, y)``: random images from an ``.npz`` (``x_train`` uint8
    NHWC, ``y_train``), normalised with the CIFAR mean/std; or random noise and
    labels when ``path`` is None. Returns ``(x, y, description)``.

    >>> x, y, what = load_batch(None, 4, (3, 32, 32), 10)
    >>> tuple(x.shape), tuple(y.shape), what
    ((4, 3, 32, 32), (4,), 'random noise (no --data)')
    """
    gen = torch.Generator().manual_seed(seed)
    if path is None:
        x = torch.randn((batch_size, *input_shape), generator=gen)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        return x, y, "random noise (no --data)"
    p = Path(path)
    if not p.exists():
        raise FxswapError(f"--data {path}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            if "x_train" not in data or "y_train" not in data:
                raise FxswapError(f"--data {path}: expected arrays x_train (N,H,W,C uint8) and y_train; "
                                  f"found {sorted(data.files)}")
            xs, ys = data["x_train"], data["y_train"]
    except (OSError, ValueError) as exc:
        raise FxswapError(f"--data {path}: cannot read it as an .npz ({exc})") from None
    if xs.ndim != 4:
        raise FxswapError(f"--data {path}: x_train must be N,H,W,C; got shape {xs.shape}")
    if len(xs) < batch_size:
        raise FxswapError(f"--data {path}: {len(xs)} images, fewer than --batch-size {batch_size}")
    idx = torch.randperm(len(xs), generator=gen)[:batch_size].numpy()
    x = torch.from_numpy(np.ascontiguousarray(xs[idx])).permute(0, 3, 1, 2).float()
    if xs.dtype == np.uint8:
        x = x / 255.0
    if x.shape[1] == 3:
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    y = torch.from_numpy(np.asarray(ys[idx]).reshape(-1).astype(np.int64))
    return x, y, f"{batch_size} random images of {p.name} ({len(xs)} in all)"


def add_search_parser(subparsers) -> None:
    """Add the ``search`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("search", help="BlockSwap: sample students within a budget, rank by Fisher potential")
    p.add_argument("model", help="wrn-40-2, resnet-20, a timm name or tv:<torchvision name>")
    p.add_argument("--budget", required=True,
                   help="parameters (400000, 400k, 1.2M), a fraction of the teacher (0.25) or a percentage (25%%)")
    p.add_argument("--metric", choices=("params", "macs"), default="params", help="what the budget counts")
    p.add_argument("--tolerance", type=float, default=0.025, help="accepted distance from the budget (default 0.025)")
    p.add_argument("--samples", type=int, default=1000, help="configurations to score (paper: 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (paper: the training batch, 128)")
    p.add_argument("--data", default=None, help=".npz with x_train (N,H,W,C uint8) and y_train; default: random data")
    p.add_argument("--candidates", default=None,
                   help='specs a block may become, e.g. "S,G(N/4),B(2),BG(2,M/4)" (default: the paper\'s 21)')
    p.add_argument("--seed", type=int, default=0, help="seed for the minibatch, the sampling and the initialisation")
    p.add_argument("--top", type=int, default=10, help="candidates to print and save")
    p.add_argument("--out", default=None, help="JSON path for the result (default: blockswap-MODEL-BUDGET.json)")
    p.add_argument("--no-macs", action="store_true", help="do not count MACs (faster set-up)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--input", default=None, help="input shape C,H,W (default: the model's)")


def run_search(args) -> int:
    """Run ``fxswap search`` from parsed arguments; returns the exit status."""
    from .blockswap import CostModel, blockswap, parse_budget
    from .cli import _shape
    from .models.registry import create_model

    model = create_model(args.model, args.num_classes)
    shape = _shape(args.input, model)
    num_classes = args.num_classes or getattr(model, "num_classes", None) or _out_features(model) or 10
    x, y, what = load_batch(args.data, args.batch_size, shape, num_classes, args.seed)
    if args.data is None:
        print("fxswap: note: no --data given: scoring on random noise with random labels; pass --data "
              "cifar10_subset.npz for the paper's setting (one real training minibatch)", file=sys.stderr)
    candidates = split_specs(args.candidates) if args.candidates else None
    start = time.perf_counter()
    print(f"building the cost table ({len(candidates) if candidates else 21} candidate specs) ...", file=sys.stderr)
    cm = CostModel(model, candidates, input_shape=shape, macs=not args.no_macs or args.metric == "macs",
                   seed=args.seed)
    budget = parse_budget(args.budget, cm.total(args.metric))
    cheapest, dearest = cm.reachable(args.metric)
    print(f"{len(cm.names)} blocks; {args.metric}: teacher {cm.total(args.metric):,}, reachable "
          f"[{cheapest:,}, {dearest:,}], budget {budget:,} ±{args.tolerance:.1%}; minibatch: {what}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = blockswap(model, budget, (x, y), args.samples, tolerance=args.tolerance, metric=args.metric,
                           seed=args.seed, progress=not args.no_progress, cost_model=cm)
    for w in caught:
        print(f"fxswap: warning: {w.message}", file=sys.stderr)
    scoring = result.seconds
    result.seconds = time.perf_counter() - start
    result.model = args.model
    print(result.table(args.top))
    out = Path(args.out) if args.out else Path(f"blockswap-{_slug(args.model)}-{_slug(str(args.budget))}.json")
    result.to_json(out, args.top)
    per = scoring / max(result.samples, 1)
    print(f"\nbest plan ({result.candidates[0].params:,} params, Fisher {result.candidates[0].fisher:.5g}) saved to "
          f"{out}\n{result.samples} samples scored in {scoring:.1f} s ({per:.2f} s each, {per * 1000 / 60:.1f} min per "
          f"1000); {result.seconds:.1f} s in all with the cost table\nbuild it: fxswap cheapen {args.model} {out}")
    return 0


def _out_features(model) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last.out_features if last is not None else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")
