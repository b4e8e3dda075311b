"""fp32 vs bf16 on this machine: training speed, BlockSwap scoring speed and ranking agreement, in one run.

What ``precision="auto"`` (:func:`fxswap.precision.resolve_precision`) decides
is measured here, on the machine the script runs on; the header names its CPU
(``lscpu`` model name and bf16 flags), threads and load.

* training: WRN-16-2, ``--batch`` (128) random CIFAR-sized images, the step
  :func:`fxswap.fit` runs (``Distiller`` with cross-entropy, Moonshine's SGD),
  images/s in fp32, bf16 autocast (NCHW), bf16 + channels_last inputs (what
  ``fit`` does) and bf16 + channels_last model and inputs; ``--repeats``
  passes of ``--warmup`` + ``--steps`` steps, the configurations interleaved
  in every repeat so that a shared machine's drifting load hits them alike;
  medians and ratios to fp32 side by side;
* scoring: a randomly initialised WRN-16-2 (``--score-model``), the paper's
  21 candidate specs, plans within ``--budget``, one CIFAR-10 minibatch of
  ``--batch`` (random when ``--data`` is missing): :func:`fxswap.blockswap`
  with ``precision="fp32"`` and ``"bf16"`` on the same sampled plans, in
  chunks of ``--chunk`` (interleaved); seconds per candidate (median over
  chunks) and Spearman's ρ of the Fisher potentials over all ``--plans``.
  ``auto`` keeps bf16 for scoring only where ρ ≥ 0.98;
* with ``--train-epochs N`` (and ``--data``): one WRN-16-2 training run per
  precision (:func:`fxswap.train`, preset ``--preset``) and its final accuracy.

The JSON (``--json``) is written before the table is printed.

    PYTHONPATH=. python benchmarks/precision.py --threads 1 --repeats 5 --plans 100 \\
        --json docs/results/precision.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fxswap  # noqa: E402
from blockswap_bf16 import minibatch, spearman  # noqa: E402
from fxswap.distillation import Distiller  # noqa: E402
from fxswap.distillation.presets import get_preset  # noqa: E402
from fxswap.precision import Precision, cpu_flags, resolve_precision  # noqa: E402
from fxswap.search.plans import CostModel  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"

FP32 = Precision("fp32", torch.float32, False, "benchmark")
BF16 = Precision("bf16", torch.bfloat16, False, "benchmark")
BF16_CL = Precision("bf16", torch.bfloat16, True, "benchmark")
TRAIN_CONFIGS = {"fp32": (FP32, False), "bf16": (BF16, False), "bf16 + channels_last inputs": (BF16_CL, False),
                 "bf16 + channels_last model+inputs": (BF16_CL, True)}


def machine(threads: int) -> dict:
    """The CPU the numbers belong to: lscpu's model name, the bf16-related flags, threads, load."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    flags = cpu_flags() or frozenset()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"cpu": model, "flags": [f for f in wanted if f in flags], "cpus": os.cpu_count(), "threads": threads, "loadavg": load,
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "auto_train": resolve_precision("auto", "cpu").describe(),
            "auto_score": resolve_precision("auto", "cpu", purpose="score").describe()}


def trained_model(student: str | None) -> torch.nn.Module:
    """WRN-16-2, or its ``student`` spec (``cheapen(..., reinit=True)``): grouped convolutions may not gain
    what dense ones gain from bf16 units (AMX computes dense bf16 matrix products)."""
    torch.manual_seed(0)
    teacher = fxswap.models.wrn(16, 2)
    return fxswap.cheapen(teacher, student, reinit=True) if student else teacher


def train_step(prec: Precision, model_cl: bool, student: str | None = None):
    d = Distiller(None, trained_model(student), {"ce": 1.0})
    if model_cl:
        d = d.to(memory_format=torch.channels_last)
    p = get_preset("moonshine")
    opt = torch.optim.SGD(d.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                          nesterov=p.nesterov)
    d.train()

    def step(x, y):
        with prec.autocast("cpu"):
            loss, _ = d(prec.inputs(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_training(args) -> dict:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    steps = {name: train_step(prec, cl, args.student) for name, (prec, cl) in TRAIN_CONFIGS.items()}
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.repeats):
        for name, step in steps.items():
            for _ in range(args.warmup):
                step(x, y)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
        print(f"training repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()),
              flush=True)
    base = statistics.median(rates["fp32"])
    return {name: {"img_s": statistics.median(v), "vs_fp32": statistics.median(v) / base, "runs": v}
            for name, v in rates.items()}


def score_chunk(teacher, cm, budget, batch, samples, seed, precision):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fxswap.blockswap(teacher, budget, batch, samples=samples, seed=seed, macs=False, cost_model=cm,
                             precision=precision)
    per = (time.perf_counter() - t0) / len(r.candidates)
    return {tuple(sorted(c.plan.items())): c.fisher for c in r.candidates}, per


def bench_scoring(args) -> dict:
    x, y, what = minibatch(args.data, args.batch)
    teacher = fxswap.models.create_model(args.score_model)
    cm = CostModel(teacher, macs=False, seed=0)
    values = {"fp32": {}, "bf16": {}}
    per = {"fp32": [], "bf16": [], "bf16 NCHW": []}
    chunks = -(-args.plans // args.chunk)
    for k in range(chunks):
        for name, prec in (("fp32", "fp32"), ("bf16", "bf16")):  # "bf16" = bf16 + channels_last inputs
            f, t = score_chunk(teacher, cm, args.budget, (x, y), args.chunk, k, prec)
            values[name].update(f)
            per[name].append(t)
        if k < args.nchw_chunks:
            _, t = score_chunk(teacher, cm, args.budget, (x, y), args.chunk, k, BF16)
            per["bf16 NCHW"].append(t)
        print(f"scoring chunk {k + 1}/{chunks}: {len(values['fp32'])} plans; "
              + ", ".join(f"{n} {v[-1]:.3f} s/cand" for n, v in per.items() if len(v) > k), flush=True)
    plans = sorted(set(values["fp32"]) & set(values["bf16"]))
    a, b = [values["fp32"][p] for p in plans], [values["bf16"][p] for p in plans]
    base = statistics.median(per["fp32"])
    return {"model": args.score_model, "budget": args.budget, "batch": args.batch, "data": what,
            "plans": len(plans), "spearman": spearman(a, b),
            "same_best": max(plans, key=values["fp32"].get) == max(plans, key=values["bf16"].get),
            "median_rel_diff": float(np.median(np.abs(np.array(b) - np.array(a)) / np.abs(np.array(a)))),
            "speed": {n: {"s_per_candidate": statistics.median(v), "vs_fp32": base / statistics.median(v),
                          "chunks": len(v)} for n, v in per.items() if v}}


def bench_accuracy(args) -> dict:
    from fxswap.data.device import device_cifar_loaders

    out = {}
    for name in ("fp32", "bf16"):
        prec = resolve_precision(name, "cpu")
        train, val = device_cifar_loaders(args.data, args.batch, device="cpu", channels_last=prec.channels_last,
                                          seed=0, limit=args.train_limit)
        t0 = time.perf_counter()
        hist = fxswap.train(fxswap.models.wrn(16, 2), train, val, epochs=args.train_epochs, preset=args.preset,
                            precision=name, progress=False, seed=0)
        out[name] = {"val_acc": hist[-1]["val_acc"], "seconds": time.perf_counter() - t0,
                     "precision": hist[-1]["precision"]}
        print(f"{name}: val acc {out[name]['val_acc']:.4f} after {args.train_epochs} epochs, "
              f"{out[name]['seconds']:.0f}s", flush=True)
    return out


def report(res: dict) -> str:
    m = res["machine"]
    lines = [f"CPU: {m['cpu']} ({m['cpus']} CPUs), flags: {' '.join(m['flags'])}; torch {m['torch']} "
             f"({m['capability']}), {m['threads']} thread(s), load average at start {' '.join(m['loadavg'])}",
             f"auto → training: {m['auto_train']}; scoring: {m['auto_score']}", ""]
    if "training" in res:
        what = "WRN-16-2" + (f" {res['args']['student']}" if res["args"].get("student") not in (None, "None") else "")
        lines += [f"| training, {what}, batch {res['args']['batch']} | images/s (median) | vs fp32 |",
                  "|---|---:|---:|"]
        lines += [f"| {n} | {r['img_s']:.1f} | {r['vs_fp32']:.2f}× |" for n, r in res["training"].items()]
        lines.append("")
    if "scoring" in res:
        s = res["scoring"]
        lines += [f"| scoring, {s['model']}, batch {s['batch']} | s / candidate (median) | vs fp32 |", "|---|---:|---:|"]
        lines += [f"| {n} | {r['s_per_candidate']:.3f} | {r['vs_fp32']:.2f}× |" for n, r in s["speed"].items()]
        lines += ["", f"Spearman ρ (fp32 vs bf16 Fisher potential) over {s['plans']} plans at batch {s['batch']}: "
                      f"**{s['spearman']:.4f}**; median |relative difference| {s['median_rel_diff']:.3%}; "
                      f"same best plan: {s['same_best']}"]
    if "accuracy" in res:
        lines += [""] + [f"{n}: final val acc {r['val_acc']:.4f} ({r['seconds']:.0f} s)"
                         for n, r in res["accuracy"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per configuration and repeat")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--plans", type=int, default=100, help="plans scored in each precision (rho and speed)")
    ap.add_argument("--chunk", type=int, default=10, help="plans per blockswap() call")
    ap.add_argument("--nchw-chunks", type=int, default=2, help="chunks also timed in bf16 without channels_last")
    ap.add_argument("--budget", default="0.5", help="BlockSwap budget (default: half the teacher's parameters)")
    ap.add_argument("--score-model", default="wrn-16-2")
    ap.add_argument("--student", default=None, help="time the training of this spec's student of WRN-16-2 "
                    "(e.g. 'G(N/4)') instead of WRN-16-2 itself")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--skip", nargs="*", default=[], choices=["training", "scoring"])
    ap.add_argument("--train-epochs", type=int, default=0, help="also train WRN-16-2 this long in fp32 and bf16")
    ap.add_argument("--train-limit", type=int, default=None, help="first N images of each split for --train-epochs")
    ap.add_argument("--preset", default="cosine")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    res: dict = {"machine": machine(args.threads), "args": {k: str(v) for k, v in vars(args).items()}}
    res["args"]["batch"] = args.batch
    print(report({"machine": res["machine"], "args": res["args"]}), flush=True)
    if "training" not in args.skip:
        res["training"] = bench_training(args)
    if "scoring" not in args.skip:
        res["scoring"] = bench_scoring(args)
    if args.train_epochs:
        res["accuracy"] = bench_accuracy(args)
    res["seconds"] = time.perf_counter() - start
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print("\n" + report(res) + f"\n\ntotal wall time {res['seconds']:.0f}s", flush=True)
    return res


if __name__ == "__main__":
    main()
