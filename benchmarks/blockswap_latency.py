"""BlockSwap under a latency budget, end to end: search, build the pick, measure it again.

For one teacher (default WRN-40-2, 32×32 inputs) the script

1. builds the BlockSwap cost table for a short candidate list and measures its
   latency column (:meth:`fxswap.search.plans.CostModel.measure_latency`: every
   block × candidate variant timed on the input its block gets, at ``--batch``);
2. for each budget (default 60% and 75% of the teacher's measured latency)
   runs :func:`fxswap.blockswap` (``--samples`` plans, Fisher potential on one
   ``--fisher-batch`` minibatch of the CIFAR-10 subset if present, else noise);
3. builds the pick and the next ``--recheck - 1`` candidates with
   :func:`fxswap.cheapen` and times each whole student with :func:`fxswap.latency`
   (same batch, threads and measurement as the table), alternating with the
   teacher ``--rounds`` times (medians), so student and teacher see the same
   load;
4. prints a markdown table: budget, estimated latency, re-measured latency,
   estimate error, whether the re-measurement meets the budget, the same as
   fractions of the teacher (the table's estimate over the table's teacher
   total; the re-measured student over the teacher re-measured beside it:
   robust to the machine's load drifting between the table and the re-check),
   and the estimate errors over every re-measured plan.

    PYTHONPATH=. python benchmarks/blockswap_latency.py [--model wrn-40-2] [--budgets 60%latency 75%latency]
        [--batch 32] [--samples 8] [--threads 1] [--min-run-time 0.5] [--recheck 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import fxswap
from fxswap.search.plans import CostModel, blockswap
from fxswap.cli.search import load_batch, split_specs
from fxswap.errors import BudgetError
from fxswap.models import create_model

CANDIDATES = "S, B(2), B(4), G(N/4), BG(2,M/4)"
CIFAR = Path("/work/shared/data/cifar10_subset.npz")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def measure(model, shape, batch, threads, min_run_time) -> float:
    return fxswap.latency(model, shape, "cpu", batch, per_block=False, num_threads=threads,
                          min_run_time=min_run_time).total.median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wrn-40-2")
    parser.add_argument("--budgets", nargs="+", default=["60%latency", "75%latency"])
    parser.add_argument("--candidates", default=CANDIDATES)
    parser.add_argument("--batch", type=int, default=32, help="batch the latency is measured at")
    parser.add_argument("--fisher-batch", type=int, default=32, help="minibatch the Fisher potential is scored on")
    parser.add_argument("--samples", type=int, default=8, help="plans scored per budget")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timed calls per measurement")
    parser.add_argument("--recheck", type=int, default=2, help="candidates per budget built and measured again")
    parser.add_argument("--rounds", type=int, default=3,
                        help="round-robin repetitions of the table's timings and of each teacher/student re-check")
    args = parser.parse_args()
    shape = (3, 32, 32)
    teacher = create_model(args.model)
    print(f"torch {torch.__version__}, {platform.machine()}, cpu, batch {args.batch}, {args.threads} threads; "
          f"{load()} at the start")
    start = time.perf_counter()
    cm = CostModel(teacher, split_specs(args.candidates), input_shape=shape, macs=False)
    built = time.perf_counter()
    cm.measure_latency(args.batch, min_run_time=args.min_run_time, num_threads=args.threads, rounds=args.rounds)
    timed = time.perf_counter()
    fastest, slowest = cm.reachable("latency")
    print(f"cost table: {time.perf_counter() - start:.0f} s ({built - start:.0f} s building the variants, "
          f"{timed - built:.0f} s timing them); teacher {cm.total('latency'):.1f} ms, fixed part "
          f"{cm.table.fixed['latency']:.1f} ms, estimates reachable [{fastest:.1f}, {slowest:.1f}] ms "
          f"{cm.table.measured_on}\n")
    data = str(CIFAR) if CIFAR.exists() else None
    x, y, what = load_batch(data, args.fisher_batch, shape, 10)
    rows, errors, rel_errors = [], [], []
    teacher_ms = cm.total("latency")
    for budget in args.budgets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = blockswap(teacher, budget, (x, y), args.samples, tolerance=args.tolerance, cost_model=cm)
        except BudgetError as exc:
            print(f"  {budget}: {exc}", flush=True)
            continue
        for rank, cand in enumerate(result.candidates[: args.recheck], 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                student = fxswap.cheapen(teacher, cand.plan)
            pairs = [(measure(teacher, shape, args.batch, args.threads, args.min_run_time),
                      measure(student, shape, args.batch, args.threads, args.min_run_time)) for _ in range(args.rounds)]
            teacher_now = statistics.median(t for t, _ in pairs)
            again = statistics.median(s for _, s in pairs)
            error = cand.latency_ms / again - 1
            est_frac, again_frac = cand.latency_ms / teacher_ms, again / teacher_now
            errors.append(error)
            rel_errors.append(est_frac / again_frac - 1)
            rows.append((budget, result.budget, rank, cand.latency_ms, again, error, again <= result.budget,
                         teacher_now, est_frac, again_frac, again_frac <= result.budget / teacher_ms,
                         " ".join(cand.plan.values())))
            print(f"  {budget} rank {rank}: estimated {cand.latency_ms:.1f} ms, measured {again:.1f} ms "
                  f"(teacher now {teacher_now:.1f} ms)", flush=True)
    print(f"\nminibatch: {what}; {args.samples} samples per budget, tolerance {args.tolerance:.0%} below the budget; "
          f"{load()} at the end; {time.perf_counter() - start:.0f} s in all\n")
    print("| budget | budget ms | rank | estimated ms | re-measured ms | estimate error | meets budget (ms) | "
          "teacher re-measured ms | estimated ÷ teacher | re-measured ÷ teacher | meets budget (fraction) | "
          "plan (block order) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|")
    for budget, ms, rank, est, again, err, ok, t_now, est_frac, again_frac, ok_frac, plan in rows:
        print(f"| {budget} | {ms:.1f} | {rank} | {est:.1f} | {again:.1f} | {err:+.1%} | {'yes' if ok else 'NO'} | "
              f"{t_now:.1f} | {est_frac:.3f} | {again_frac:.3f} | {'yes' if ok_frac else 'NO'} | `{plan}` |")
    if not errors:
        return
    absolute = [abs(e) for e in errors]
    relative = [abs(e) for e in rel_errors]
    print(f"\nestimate error over {len(errors)} re-measured plans: in ms, median |error| "
          f"{statistics.median(absolute):.1%}, max {max(absolute):.1%}, mean signed {statistics.mean(errors):+.1%}; "
          f"as a fraction of the teacher, median |error| {statistics.median(relative):.1%}, max {max(relative):.1%}, "
          f"mean signed {statistics.mean(rel_errors):+.1%} (positive: the estimate is slower than the student "
          f"measured)")


if __name__ == "__main__":
    main()
