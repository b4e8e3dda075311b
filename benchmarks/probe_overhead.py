"""Cost of a distillation step with graph probes vs forward hooks vs no probes at all.

One attention-transfer + KD step (teacher forward under no_grad, student forward and backward, SGD step)
on WRN-40-2 → G(N/4) with CIFAR-sized batches, three ways, interleaved in one run:

* plain:  teacher and student forward/backward, CE + KD only (no intermediate features);
* hooks:  the same plus AT, features collected with ``register_forward_hook`` on the stage modules;
* probes: the same plus AT, features returned by ``fxswap.probe`` graph outputs (what ``Distiller`` uses).

    python benchmarks/probe_overhead.py [--batch 64] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fxswap
from fxswap import losses as L


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--depth", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = fxswap.models.wrn(args.depth, 2).eval()
    student = fxswap.cheapen(teacher, "G(N/4)")
    stages = [f"layer{i}.{(args.depth - 4) // 6 - 1}" for i in (1, 2, 3)]
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def step_plain():
        with torch.no_grad():
            t = teacher(x)
        loss = L.kd_loss(student(x), t, y)
        opt.zero_grad(); loss.backward(); opt.step()

    def hooked(model, store):
        return [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
                for n in stages]

    t_store, s_store = {}, {}
    hooked(teacher, t_store)
    hooked(student, s_store)

    def step_hooks():
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        loss = L.kd_loss(s, t, y) + L.attention_transfer([s_store[n] for n in stages], [t_store[n] for n in stages])
        opt.zero_grad(); loss.backward(); opt.step()

    t_probe = fxswap.probe(teacher, stages).eval()
    s_probe = fxswap.probe(student, stages).train()

    def step_probes():
        with torch.no_grad():
            t, tf = t_probe(x)
        s, sf = s_probe(x)
        loss = L.kd_loss(s, t, y) + L.attention_transfer(sf, tf)
        opt.zero_grad(); loss.backward(); opt.step()

    runs = {"plain": step_plain, "hooks": step_hooks, "probes": step_probes}
    times = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for k, fn in runs.items():  # interleaved, so drift hits all three alike
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"WRN-{args.depth}-2 teacher, G(N/4) student, batch {args.batch}, median of {args.repeats} steps")
    print("| step | median (ms) | ratio to plain |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.1f} | {v / med['plain']:.3f} |")
    print(f"\nprobes / hooks = {med['probes'] / med['hooks']:.3f}")


if __name__ == "__main__":
    main()
