"""BlockSwap Fisher scoring on CPU: fp32 vs bf16 autocast (+ channels_last), speed and agreement, in one run.

WRN-40-2 teacher, the paper's 21 candidate specs, plans sampled at a
``--budget`` (default 400K parameters), one minibatch of ``--batch`` (a real
CIFAR-10 minibatch from ``--data`` when the file exists, else random). The
public API only: :func:`fxswap.blockswap` with a prebuilt cost model, called
with ``precision="fp32"`` and in bf16 autocast (a :class:`fxswap.precision.Precision`),
on the same sampled plans (same ``seed``). ``benchmarks/precision.py`` is the
shorter WRN-16-2 version that ``precision="auto"`` was decided on. The plans are scored in chunks
of ``--chunk``, the precisions interleaved per chunk so that load drifting
on a shared machine hits them alike.

* speed: seconds per candidate (median over chunks) and minutes per 1000,
  at ``--batch``; ``channels_last`` is timed on the first ``--cl-chunks``
  chunks only;
* agreement: Spearman's ρ between the fp32 and bf16 Fisher potentials over
  all plans scored (``--samples`` more at ``--rho-batch``, plus the speed
  plans when the batches are equal), and whether both pick the same best plan.
  A smaller ``--rho-batch`` keeps the run short where bf16 is slow (CPUs
  without AMX / AVX512-BF16 emulate it).

    python benchmarks/blockswap_bf16.py --data ../shared/data/cifar10_subset.npz --speed-samples 4 --chunk 2 \
        --samples 100 --rho-batch 16 --rho-chunk 20
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import fxswap
from fxswap.search.plans import CostModel
from fxswap.data import CIFAR10_MEAN, CIFAR10_STD
from fxswap.models import wrn
from fxswap.precision import Precision

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


def minibatch(path: Path, batch: int, seed: int = 0):
    g = np.random.default_rng(seed)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            idx = np.sort(g.choice(len(z["y_train"]), batch, replace=False))
            x = torch.from_numpy(z["x_train"][idx]).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(z["y_train"][idx])
        mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        return (x - mean) / std, y, f"CIFAR-10 minibatch from {path.name}"
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen), "random"


def spearman(a, b) -> float:
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ranks of ties
            m = v == val
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def to_channels_last(cm: CostModel) -> CostModel:
    cm.base.to(memory_format=torch.channels_last)
    for variants in cm.variants.values():
        for mod in variants.values():
            mod.to(memory_format=torch.channels_last)
    return cm


def score(teacher, cm, budget, x, y, samples, seed, bf16: bool):
    # explicit: precision="auto" could be bf16 on a machine with native bf16; channels_last comes with x
    prec = Precision("bf16", torch.bfloat16, False, "benchmark") if bf16 else "fp32"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fxswap.blockswap(teacher, budget, (x, y), samples=samples, seed=seed, macs=False, cost_model=cm,
                             precision=prec)
    seconds = time.perf_counter() - t0
    return {tuple(sorted(c.plan.items())): c.fisher for c in r.candidates}, seconds / len(r.candidates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed-samples", type=int, default=20, help="plans timed in each precision at --batch")
    ap.add_argument("--samples", type=int, default=100, help="plans for rho in each precision, at --rho-batch")
    ap.add_argument("--rho-batch", type=int, default=None, help="minibatch for the rho plans (default --batch)")
    ap.add_argument("--chunk", type=int, default=10, help="plans per blockswap() call in the speed phase")
    ap.add_argument("--rho-chunk", type=int, default=20, help="plans per blockswap() call in the rho phase")
    ap.add_argument("--cl-chunks", type=int, default=2, help="chunks also timed with bf16 + channels_last")
    ap.add_argument("--budget", default="400k")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x, y, what = minibatch(args.data, args.batch)
    teacher = wrn(40, 2)
    cm = CostModel(teacher, macs=False, seed=0)
    cm_cl = to_channels_last(CostModel(teacher, macs=False, seed=0)) if args.cl_chunks else None
    x_cl = x.contiguous(memory_format=torch.channels_last)
    print(f"WRN-40-2, {len(cm.specs)} candidate specs, budget {args.budget}, batch {args.batch} ({what}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; cost models built in "
          f"{time.perf_counter() - start:.1f}s", flush=True)
    fp32, bf16 = {}, {}
    per = {"fp32": [], "bf16": [], "bf16+channels_last": []}
    chunks = -(-args.speed_samples // args.chunk)  # 0: agreement only
    rho_batch = args.rho_batch or args.batch
    for k in range(chunks):
        f, t = score(teacher, cm, args.budget, x, y, args.chunk, seed=k, bf16=False)
        fp32.update(f)
        per["fp32"].append(t)
        b, t = score(teacher, cm, args.budget, x, y, args.chunk, seed=k, bf16=True)
        bf16.update(b)
        per["bf16"].append(t)
        if k < args.cl_chunks:
            _, t = score(teacher, cm_cl, args.budget, x_cl, y, args.chunk, seed=k, bf16=True)
            per["bf16+channels_last"].append(t)
        print(f"chunk {k + 1}/{chunks}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in per.items() if len(v) > k),
              flush=True)
    if rho_batch != args.batch:
        fp32, bf16 = {}, {}
        x, y, _ = minibatch(args.data, rho_batch)
    rho_chunks = max(1, -(-args.samples // args.rho_chunk))
    for k in range(rho_chunks):
        seed = 1000 + k  # other plans than the speed chunks
        f, _ = score(teacher, cm, args.budget, x, y, args.rho_chunk, seed=seed, bf16=False)
        b, _ = score(teacher, cm, args.budget, x, y, args.rho_chunk, seed=seed, bf16=True)
        fp32.update(f)
        bf16.update(b)
        print(f"rho chunk {k + 1}/{rho_chunks} (batch {rho_batch}): {len(fp32)} plans", flush=True)
    plans = sorted(set(fp32) & set(bf16))
    a = [fp32[p] for p in plans]
    b = [bf16[p] for p in plans]
    rho = spearman(a, b)
    best_same = max(plans, key=lambda p: fp32[p]) == max(plans, key=lambda p: bf16[p])
    rel = float(np.median(np.abs(np.array(b) - np.array(a)) / np.abs(np.array(a))))
    print(f"\n{'path':20} {'s/candidate':>11} {'min/1000':>9} {'vs fp32':>8}")
    base = statistics.median(per["fp32"]) if per["fp32"] else float("nan")
    rows = {}
    for name, ts in per.items():
        if not ts:
            continue
        med = statistics.median(ts)
        rows[name] = {"s_per_candidate": med, "min_per_1000": med * 1000 / 60, "speedup": base / med,
                      "chunks": len(ts)}
        print(f"{name:20} {med:11.3f} {med * 1000 / 60:9.1f} {base / med:7.2f}x")
    print(f"\nSpearman rho (fp32 vs bf16 Fisher potential) over {len(plans)} plans, batch {rho_batch}: {rho:.4f}; "
          f"median |relative difference| {rel:.3%}; same best plan: {best_same}")
    print(f"total wall time {time.perf_counter() - start:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "spearman": rho, "plans": len(plans), "same_best": best_same,
                       "median_rel_diff": rel, "batch": args.batch, "rho_batch": rho_batch,
                       "budget": args.budget, "seconds": time.perf_counter() - start}, fh, indent=1)


if __name__ == "__main__":
    main()
