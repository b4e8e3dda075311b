"""Time of fxswap.cheapen vs a bare torch.fx.symbolic_trace of the same model, as a ratio.

Both are measured side by side in one run, median over repeats. cheapen does
more than a trace (its own trace + block analysis + deep copy + substitutes +
retracing the owners of branch-level rewrites), so the ratio says what the
surgery costs in units of "one fx trace".

    python benchmarks/rewrite_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch.fx as fx

import fxswap
from fxswap.models import create_model

ZOO = [
    ("wrn-40-2", "G(N/4)"), ("wrn-40-2", "B(2)"), ("resnet-56", "BG(2,M/4)"),
    ("tv:resnet18", "G(N/4)"), ("tv:resnet50", "B(2)"), ("tv:mobilenet_v2", "B(2)"),
    ("tv:regnet_x_400mf", "S-2x2"), ("resnet26d", "G(N/4)"), ("seresnext26d_32x4d", "B(2)"),
    ("regnetx_002", "BG(2,M/4)"), ("convnext_atto", "S-2x2"), ("efficientnet_b0", "I"),
]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"| model | spec | blocks | symbolic_trace (ms) | cheapen (ms) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    ratios = []
    for name, spec in ZOO:
        model = create_model(name)
        n_blocks = len(fxswap.find_blocks(model))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_trace = median_time(lambda: fx.symbolic_trace(model), args.repeats)
            t_cheap = median_time(lambda: fxswap.cheapen(model, spec), args.repeats)
        ratios.append(t_cheap / t_trace)
        print(f"| {name} | {spec} | {n_blocks} | {t_trace * 1e3:.1f} | {t_cheap * 1e3:.1f} | {t_cheap / t_trace:.1f} |")
    print(f"\nmedian ratio cheapen / symbolic_trace over {len(ZOO)} models: {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
