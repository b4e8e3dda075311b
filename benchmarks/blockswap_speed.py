"""BlockSwap scoring speed: candidates scored per second, fxswap vs a straightforward reference.

WRN-40-2, one minibatch of 128 (a real CIFAR-10 minibatch when
../shared/data/cifar10_subset.npz exists, else random), the paper's 21
candidate specs, plans sampled at a 400K-parameter budget. For each plan, in
one run, interleaved:

* ``reference``: what the paper's code does per candidate: build the network
  (``cheapen`` of a freshly initialised teacher), count its parameters on the
  built model, forward hooks on the last conv of each block, a full
  ``loss.backward()`` (weight gradients included), Δ per channel;
* ``build+act-grads``: build the network as above, but probe with graph
  outputs and take gradients for the probed activations only
  (``fxswap.fisher_potential``);
* ``fxswap``: ``CostModel.score``: no build (cached block variants swapped
  into one working network, each probed once), activation-only gradients;
  costs from the per-block table.

Reports medians over plans (and repeats), the ratio reference / fxswap and
minutes for 1000 samples (fxswap: the one-off cost table included).

    python benchmarks/blockswap_speed.py --samples 8 --repeats 1 [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import fxswap
from fxswap.blocks import find_blocks
from fxswap.search.plans import CostModel, sample_plans
from fxswap.cli.search import load_batch
from fxswap.search.fisher import channel_fisher, fisher_potential, random_init
from fxswap.models import wrn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


def reference_score(teacher, plan, batch, seed):
    """Build, count, hooks, full backward: the straightforward way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = fxswap.cheapen(random_init(teacher, seed), plan)
    params = sum(p.numel() for p in model.parameters())
    acts = {}
    handles = []
    for b in find_blocks(model):
        def hook(mod, inp, out, name=b.name):
            out.retain_grad()
            acts[name] = out
        handles.append(model.get_submodule(b.last_conv).register_forward_hook(hook))
    model.train()
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    total = sum(float(channel_fisher(a, a.grad).sum()) for a in acts.values())
    return total, params


def build_then_act_grads(teacher, plan, batch, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = fxswap.cheapen(random_init(teacher, seed), plan)
    params = sum(p.numel() for p in model.parameters())
    return fisher_potential(model, batch).total, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8, help="plans timed per method")
    ap.add_argument("--repeats", type=int, default=1, help="passes over the plans")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--budget", type=int, default=400_000)
    ap.add_argument("--macs", action="store_true", help="count MACs in the cost table (slower set-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = wrn(40, 2)
    data = str(DATA) if DATA.exists() else None
    x, y, what = load_batch(data, args.batch, (3, 32, 32), 10, seed=0)
    batch = (x, y)
    print(f"WRN-40-2, minibatch: {what}, batch {args.batch}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    cm = CostModel(teacher, None, input_shape=(3, 32, 32), macs=args.macs, seed=0)
    setup = time.perf_counter() - t0
    plans = sample_plans(cm, args.budget, args.samples, seed=0)
    t0 = time.perf_counter()
    for n in cm.names:  # one-off probing of every (block, spec) variant, as 1000 samples would need
        for s in cm.options(n):
            cm.scorer.tap(n, s)
    taps = time.perf_counter() - t0
    print(f"cost table: {len(cm.specs)} specs x {len(cm.names)} blocks in {setup:.1f} s; "
          f"probing all {sum(len(cm.options(n)) for n in cm.names)} block variants once: {taps:.1f} s")

    # warm-up (first-call allocations)
    cm.score(plans[0], batch)
    reference_score(teacher, plans[0], batch, 0)

    times = {"reference": [], "build+act-grads": [], "fxswap": []}
    agree = []
    for _ in range(args.repeats):
        for i, plan in enumerate(plans):
            t = time.perf_counter()
            reference_score(teacher, plan, batch, i)
            times["reference"].append(time.perf_counter() - t)
            t = time.perf_counter()
            build_then_act_grads(teacher, plan, batch, i)
            times["build+act-grads"].append(time.perf_counter() - t)
            t = time.perf_counter()
            total, _ = cm.score(plan, batch)
            cm.cost(plan)
            times["fxswap"].append(time.perf_counter() - t)
            # same weights, both formulas: the scores must agree
            ref_total = fisher_potential(cm.build(plan), batch).total
            agree.append(abs(total - ref_total) / abs(ref_total))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{len(plans)} plans at {args.budget:,} params (x{args.repeats}); max relative difference between "
          f"CostModel.score and fisher_potential on the same weights: {max(agree):.1e}")
    print("| method | median s / candidate | candidates / s | ratio to reference | min per 1000 samples |")
    print("|---|---:|---:|---:|---:|")
    for k, v in med.items():
        extra = (setup + taps) if k == "fxswap" else 0.0
        minutes = (1000 * v + extra) / 60
        print(f"| {k} | {v:.3f} | {1 / v:.2f} | {med['reference'] / v:.2f} | {minutes:.1f} |")
    print(f"\nspeed-up of fxswap over the reference: {med['reference'] / med['fxswap']:.2f}x "
          f"(activation-only gradients alone: {med['reference'] / med['build+act-grads']:.2f}x)")


if __name__ == "__main__":
    main()
