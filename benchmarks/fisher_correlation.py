"""Fisher potential vs trained validation error (BlockSwap, seed 003, Table 1).

BlockSwap's Table 1 reports the Spearman rank correlation between the Fisher
potential of 100 random WRN-40-2 configurations (one minibatch, random
initialisation) and their final CIFAR-10 error: about -0.6 to -0.7 (negative:
a higher Fisher potential goes with a lower error). This script measures the
same quantity, on a small scale that fits a CPU:

1. teacher WRN-16-2 (``fxswap.models.wrn(16, 2)``), one real training
   minibatch of 128 from the CIFAR-10 subset (with the training augmentation);
2. ``fxswap.blockswap(teacher, budget, batch, samples=S, seed=seed)``: S
   configurations within ``budget`` (±2.5 %), ranked by Fisher potential;
3. K of them at evenly spaced ranks (best, ..., worst), so the correlation
   covers the whole range of Fisher potentials, not just the top;
4. each trained from scratch (``fxswap.cheapen(teacher, plan, reinit=True)``,
   then ``fxswap.train``) with the same seed and schedule on the first
   ``--limit`` training images, evaluated on the first ``--val-limit`` test
   images;
5. Spearman's rho (ties get their average rank; numpy only) between Fisher
   potential and validation error, with a permutation p-value (exact for
   K <= 8).

    python benchmarks/fisher_correlation.py                       # defaults below
    python benchmarks/fisher_correlation.py --limit 256 --val-limit 256 --epochs 1 --configs 3   # smoke run

Results are written after every trained configuration when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import fxswap
from fxswap.data import ArrayDataset, cifar_transforms

DATA = Path("/work/shared/data/cifar10_subset.npz")


# ---------------------------------------------------------------------------
# statistics (numpy only)
# ---------------------------------------------------------------------------

def rankdata(values) -> np.ndarray:
    """Ranks 1..n; tied values share the average of their ranks.

    >>> rankdata([10, 20, 20, 5]).tolist()
    [2.0, 3.5, 3.5, 1.0]
    """
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=float)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float("nan") if den == 0 else float((a * b).sum()) / den


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3, 4], [4, 3, 2, 1])
    (1.0, -1.0)
    >>> round(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 4)
    0.9487
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D sequences of the same length, got {x.shape} and {y.shape}")
    return _pearson(rankdata(x), rankdata(y))


def permutation_p(x, y, *, exact_up_to: int = 8, draws: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of Spearman's rho under 'no association' (y's order random).

    Exact (all n! orders) for n <= ``exact_up_to``, else Monte Carlo.

    >>> permutation_p([1, 2, 3], [1, 2, 3])   # 2 of the 6 orders reach |rho| = 1
    0.3333333333333333
    """
    rx, ry = rankdata(x), rankdata(y)
    n = len(rx)
    observed = abs(_pearson(rx, ry)) - 1e-12
    rx_c = rx - rx.mean()
    ry_c = ry - ry.mean()
    den = math.sqrt(float((rx_c ** 2).sum()) * float((ry_c ** 2).sum()))
    if den == 0:
        return float("nan")
    if n <= exact_up_to:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((draws, n)), axis=1)
    rhos = (ry_c[perms] @ rx_c) / den
    return float(np.mean(np.abs(rhos) >= observed))


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def load_data(path: Path, limit: int, val_limit: int, batch_size: int, num_workers: int, seed: int):
    with np.load(path, allow_pickle=False) as z:
        x_train, y_train = z["x_train"][:limit], z["y_train"][:limit]
        x_test, y_test = z["x_test"][:val_limit], z["y_test"][:val_limit]
    train_ds = ArrayDataset(x_train, y_train, transform=cifar_transforms(True), source=f"{path} [train]")
    val_ds = ArrayDataset(x_test, y_test, transform=cifar_transforms(False), source=f"{path} [test]")
    common = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0)
    train_loader = DataLoader(train_ds, shuffle=True, generator=torch.Generator().manual_seed(seed), **common)
    val_loader = DataLoader(val_ds, shuffle=False, **common)
    return train_ds, train_loader, val_loader


def fisher_batch(train_ds, batch_size: int, seed: int):
    """One training minibatch (random images of the training subset, training augmentation), seeded."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen)
    x, y = next(iter(loader))
    return x, y


def spread(n: int, k: int) -> list[int]:
    """``k`` distinct indices evenly spaced over ``0 .. n-1`` (both ends included).

    >>> spread(100, 5), spread(3, 5)
    ([0, 25, 50, 74, 99], [0, 1, 2])
    """
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def short(plan: dict[str, str]) -> str:
    return " ".join(plan.values())


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="CIFAR-10 .npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--budget", default="0.5", help="parameter budget: fraction of WRN-16-2, or 350k etc.")
    ap.add_argument("--samples", type=int, default=100, help="configurations BlockSwap samples and ranks (Table 1: 100)")
    ap.add_argument("--configs", type=int, default=8, help="K: configurations trained, at evenly spaced ranks")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=5000, help="training images (the first N of x_train)")
    ap.add_argument("--val-limit", type=int, default=2000, help="validation images (the first N of x_test)")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch size = Fisher minibatch size")
    ap.add_argument("--preset", default="blockswap", help="fxswap.train preset (lr schedule rescaled to --epochs)")
    ap.add_argument("--seed", type=int, default=0, help="search, initialisation and training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="train in NCHW (default: channels_last, about 30%% faster on this CPU for WRN-16-2)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()

    teacher = fxswap.models.wrn(16, 2)
    train_ds, train_loader, val_loader = load_data(args.data, args.limit, args.val_limit, args.batch_size,
                                                   args.workers, args.seed)
    x, y = fisher_batch(train_ds, args.batch_size, args.seed)

    t = time.perf_counter()
    result = fxswap.blockswap(teacher, args.budget, (x, y), samples=args.samples, seed=args.seed)
    search_s = time.perf_counter() - t
    ranked = [c for c in result.candidates if math.isfinite(c.fisher)]
    picks = spread(len(ranked), args.configs)
    print(f"WRN-16-2 ({result.teacher_params:,} params), budget {result.budget:,} params ±{result.tolerance:.1%}: "
          f"{len(result.candidates)} configurations scored in {search_s:.1f} s; Fisher potential "
          f"{ranked[-1].fisher:.4g} .. {ranked[0].fisher:.4g}; training ranks {[i + 1 for i in picks]}")
    print(f"training: {len(train_ds)} images, {args.epochs} epochs, preset {args.preset!r}, batch {args.batch_size}, "
          f"seed {args.seed}, {'channels_last' if args.channels_last else 'NCHW'}; validation: {len(val_loader.dataset)} test images; {args.threads} threads",
          flush=True)

    rows: list[dict] = []

    def dump():
        if args.out is None:
            return
        fishers = [r["fisher"] for r in rows]
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "teacher": "wrn-16-2", "teacher_params": result.teacher_params, "budget": result.budget,
            "tolerance": result.tolerance, "samples_scored": len(result.candidates), "search_seconds": search_s,
            "fisher_range": [ranked[-1].fisher, ranked[0].fisher],
            "rows": rows,
            "spearman_fisher_val_error": spearman(fishers, [r["val_error"] for r in rows]) if len(rows) > 1 else None,
            "spearman_fisher_val_loss": spearman(fishers, [r["val_loss"] for r in rows]) if len(rows) > 1 else None,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")

    for n, i in enumerate(picks):
        cand = ranked[i]
        torch.manual_seed(args.seed)
        student = fxswap.cheapen(teacher, cand.plan, reinit=True)
        params = sum(p.numel() for p in student.parameters())
        assert params == cand.params, (params, cand.params)
        if args.channels_last:
            student = student.to(memory_format=torch.channels_last)
        t = time.perf_counter()
        hist = fxswap.train(student, train_loader, val_loader, epochs=args.epochs, preset=args.preset,
                            seed=args.seed, device="cpu", progress=False)
        secs = time.perf_counter() - t
        last = hist[-1]
        row = {"rank": i + 1, "plan": cand.plan, "params": cand.params, "macs": cand.macs, "fisher": cand.fisher,
               "val_error": 1.0 - last["val_acc"], "val_loss": last["val_loss"], "train_loss": last["train_loss"],
               "train_seconds": round(secs, 1), "history": hist}
        rows.append(row)
        print(f"[{n + 1}/{len(picks)}] rank {i + 1}: fisher {cand.fisher:.4g}, {cand.params:,} params, "
              f"val error {row['val_error']:.2%} (loss {row['val_loss']:.3f}), train loss {row['train_loss']:.3f}, "
              f"{secs:.0f} s  [{short(cand.plan)}]", flush=True)
        dump()

    print()
    print("| Fisher rank | params | MACs (M) | Fisher potential | val error | val loss | blocks (layer1.0 … layer3.1) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        macs = f"{r['macs'] / 1e6:.1f}" if r["macs"] is not None else "-"
        print(f"| {r['rank']} / {len(result.candidates)} | {r['params']:,} | {macs} | {r['fisher']:.4g} | "
              f"{r['val_error']:.2%} | {r['val_loss']:.3f} | {short(r['plan'])} |")
    print()
    if len(rows) > 1:
        fishers = [r["fisher"] for r in rows]
        errs = [r["val_error"] for r in rows]
        losses = [r["val_loss"] for r in rows]
        rho, p = spearman(fishers, errs), permutation_p(fishers, errs, seed=args.seed)
        rho_l, p_l = spearman(fishers, losses), permutation_p(fishers, losses, seed=args.seed)
        print(f"Spearman rho(Fisher potential, val error) = {rho:+.3f}  (two-sided permutation p = {p:.3f}, n = {len(rows)})")
        print(f"Spearman rho(Fisher potential, val loss)  = {rho_l:+.3f}  (two-sided permutation p = {p_l:.3f})")
        print("BlockSwap Table 1 (WRN-40-2, 100 random configurations, fully trained, 1 minibatch): "
              "-0.602 (200K), -0.685 (400K), -0.635 (800K)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
