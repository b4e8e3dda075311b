"""Parameters, MACs and measured latency side by side for the Moonshine specs.

For each teacher and each spec (Moonshine Table 1), the student is built with
``fxswap.cheapen`` and measured with ``fxswap.latency`` (eval mode, no_grad,
median of 7 timed blocks with IQR). Prints a markdown table for
docs/benchmarks.md. MACs are for one image; latency is for the whole batch.

    python benchmarks/latency_table.py [--models wrn-16-2 wrn-40-2] [--batch 32] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import platform
import warnings

import torch

import fxswap
from fxswap.models import create_model

SPECS = ["S", "S-2x2", "G(N/4)", "G(N/16)", "B(2)", "B(4)", "BG(2,M/4)"]


def rows_for(model_name: str, specs: list[str], batch: int, device: str, threads: int, min_run_time: float):
    teacher = create_model(model_name)
    shape = (3, 32, 32)
    base = None
    for spec in specs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = teacher if spec == "S" else fxswap.cheapen(teacher, spec)
        cost = fxswap.count(student, shape)
        lat = fxswap.latency(student, shape, device, batch, per_block=False, num_threads=threads,
                             min_run_time=min_run_time)
        if base is None:
            base = (cost.params, cost.macs, lat.total.median_ms)
        yield (model_name, spec, cost.params, cost.params / base[0], cost.macs, base[1] / cost.macs,
               lat.total.median_ms, lat.total.iqr_ms, lat.total.median_ms / base[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["wrn-16-2", "wrn-40-2"])
    parser.add_argument("--specs", nargs="+", default=SPECS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed calls per model")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
          f"batch {args.batch}, {threads} threads\n")
    print("| model | spec | params | params ratio | MACs / image | MACs cut | latency ms (IQR) | latency ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        for name, spec, params, p_ratio, macs, cut, ms, iqr, l_ratio in rows_for(
                model_name, args.specs, args.batch, args.device, threads, args.min_run_time):
            print(f"| {name} | `{spec}` | {params:,} | {p_ratio:.3f} | {macs:,} | {cut:.1f}x | "
                  f"{ms:.1f} ({iqr:.1f}) | {l_ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
