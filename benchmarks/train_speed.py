"""Training throughput (images/s): the per-sample DataLoader vs the device-resident pipeline, in one run.

Two tasks, the step :func:`fxswap.fit` runs (``Distiller`` forward under
autocast, backward, SGD step with the Moonshine preset's settings):

* ``teacher``: WRN-16-2 trained alone with cross-entropy;
* ``distill``: a WRN-40-2 teacher's forward + the ``G(N/4)`` student's
  forward/backward with attention transfer (β = 1000).

Each is fed by (a) ``DataLoader(ArrayDataset(..., cifar_transforms(True)))``
— per-sample augmentation on CPU workers, as :func:`fxswap.data.cifar_loaders`
— and (b) :class:`fxswap.data.device.DeviceLoader` (uint8 images on the device,
augmentation per batch there). For every device (``cpu``; ``cuda`` when
available) and configuration (fp32 / bf16 autocast, ``channels_last``,
``torch.compile``) it times ``--steps`` steps after ``--warmup`` steps, in
``--repeats`` fresh passes, and prints the median images/s and the ratio
device-resident / per-sample. The images are random uint8 (the content does
not change the speed), so no data file is needed.

    python benchmarks/train_speed.py --devices cpu --steps 3 --warmup 1 --repeats 3 --bf16 --channels-last
    python benchmarks/train_speed.py --devices cuda --steps 50 --warmup 10 --repeats 3 --bf16 --channels-last --compile
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import fxswap
from fxswap.data import ArrayDataset, cifar_transforms
from fxswap.data.device import DeviceLoader
from fxswap.distillation import Distiller
from fxswap.distillation.presets import get_preset


def build(task: str, device: torch.device, channels_last: bool) -> Distiller:
    torch.manual_seed(0)
    if task == "teacher":
        d = Distiller(None, fxswap.models.wrn(16, 2), {"ce": 1.0})
    else:
        teacher = fxswap.models.wrn(40, 2)
        d = Distiller(teacher, fxswap.cheapen(teacher, "G(N/4)"), {"at": 1000.0})
    d = d.to(device)
    if channels_last:
        d = d.to(memory_format=torch.channels_last)
    return d


def optimizer_for(params, device: torch.device) -> torch.optim.Optimizer:
    p = get_preset("moonshine")
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                           nesterov=p.nesterov, **extra)


def loaders(images: np.ndarray, labels: np.ndarray, batch: int, device: torch.device, channels_last: bool,
            workers: int, cutout: int) -> dict:
    per_sample = DataLoader(ArrayDataset(images, labels, transform=cifar_transforms(True, cutout=cutout)),
                            batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            generator=torch.Generator().manual_seed(0))
    resident = DeviceLoader(images, labels, batch, cutout=cutout, device=device, channels_last=channels_last,
                            drop_last=True, seed=0)
    return {"per-sample": per_sample, "device": resident}


def time_pass(step, loader, device: torch.device, channels_last: bool, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` steps after ``warmup`` steps, on one fresh pass of ``loader``."""
    it = iter(loader)

    def one():
        x, y = next(it)
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        step(x, y.to(device, non_blocking=True))

    for _ in range(warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def make_step(distiller: Distiller, device: torch.device, bf16: bool, compile_: bool):
    opt = optimizer_for([p for p in distiller.parameters() if p.requires_grad], device)
    forward = torch.compile(distiller) if compile_ else distiller
    distiller.train()

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--tasks", nargs="+", default=["teacher", "distill"], choices=["teacher", "distill"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per pass")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each pass")
    ap.add_argument("--repeats", type=int, default=3, help="passes per cell (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-sample loader")
    ap.add_argument("--cutout", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="also rows with bf16 autocast")
    ap.add_argument("--channels-last", action="store_true", help="also rows with channels_last (with bf16 if on)")
    ap.add_argument("--compile", action="store_true", help="also rows with torch.compile(distiller)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    configs = [(False, False, False)]
    if args.bf16:
        configs.append((True, False, False))
    if args.channels_last:
        configs.append((args.bf16, True, False))
    if args.compile:
        configs.append((args.bf16, args.channels_last, True))
    n = args.batch * (args.warmup + args.steps)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    rows = []
    print(f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps per pass, median of "
          f"{args.repeats} passes, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'device':6} {'task':8} {'precision':9} {'layout':13} {'compile':7} {'per-sample img/s':>16} "
          f"{'device img/s':>12} {'ratio':>6}")
    for dev_name, task, (bf16, cl, comp) in itertools.product(devices, args.tasks, configs):
        device = torch.device(dev_name)
        distiller = build(task, device, cl)
        step = make_step(distiller, device, bf16, comp)
        feeds = loaders(images, labels, args.batch, device, cl, args.workers, args.cutout)
        rates = {name: [] for name in feeds}
        for _ in range(args.repeats):
            for name, loader in feeds.items():  # interleaved, so drifting load hits both alike
                seconds = time_pass(step, loader, device, cl, args.warmup, args.steps)
                rates[name].append(args.steps * args.batch / seconds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        row = {"device": dev_name, "task": task, "precision": "bf16" if bf16 else "fp32",
               "layout": "channels_last" if cl else "NCHW", "compile": comp, "batch": args.batch,
               "per_sample_img_s": med["per-sample"], "device_img_s": med["device"],
               "ratio": med["device"] / med["per-sample"], "runs": rates}
        rows.append(row)
        print(f"{dev_name:6} {task:8} {row['precision']:9} {row['layout']:13} {str(comp):7} "
              f"{med['per-sample']:16.0f} {med['device']:12.0f} {row['ratio']:6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
