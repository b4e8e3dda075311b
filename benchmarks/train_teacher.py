"""Train the seeds' CIFAR-10 teacher once, resumably, and keep it with its record (issue 19, point 2).

A WRN-16-2 on all 40,000 training images of ``../shared/data/cifar10_subset.npz``,
evaluated on its 10,000 test images. ``--precision auto`` (default) is
:func:`fxswap.precision.resolve_precision`: bf16 autocast and channels_last
where the CPU computes bf16 natively (``avx512_bf16`` or AMX in
``/proc/cpuinfo``) or on CUDA, fp32 elsewhere: on an AVX2-only CPU bf16 is
3.5–5× slower (``docs/benchmarks.md``). Every epoch is checkpointed in ``--out``;
``--resume`` continues a killed run exactly. At the end the student is written
with :func:`fxswap.save_student` (model name, epochs, preset, accuracy, command)
to ``--keep``. ``--init`` starts from an earlier stage's ``--keep`` (a second,
regularised stage: Cutout and a lower lr, as below).

    python benchmarks/train_teacher.py --data ../shared/data/cifar10_subset.npz \\
        --out /work/fxswap-runs/teacher-wrn16-2 --epochs 40 --threads 2 --resume \\
        --keep /work/fxswap-runs/teacher_wrn-16-2.pt
    python benchmarks/train_teacher.py --data ../shared/data/cifar10_subset.npz \
        --out /work/fxswap-runs/teacher-wrn16-2-stage2 --init /work/fxswap-runs/teacher_wrn-16-2.pt \
        --epochs 30 --lr 0.04 --cutout 16 --threads 2 --resume --keep docs/results/teacher_wrn-16-2.pt
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import fxswap
from fxswap.data.device import device_cifar_loaders
from fxswap.distillation.checkpoint import EMA_STUDENT
from fxswap.distillation.evaluation import resolve_device
from fxswap.precision import resolve_precision


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="run folder (checkpoint.pt, history.jsonl)")
    ap.add_argument("--model", default="wrn-16-2")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--preset", default="cosine")
    ap.add_argument("--cutout", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--lr", type=float, help="initial lr (default: the preset's)")
    ap.add_argument("--ema", type=float, help="also keep an EMA of the weights (a decay, e.g. 0.999); the kept "
                    "teacher is the EMA (its test accuracy is val_acc_ema in the history)")
    ap.add_argument("--init", help="start from this teacher (a save_student file, e.g. an earlier stage's --keep)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--keep", help="where the finished teacher goes (save_student format)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prec = resolve_precision(args.precision, resolve_device(None))
    print(f"precision: {prec.describe()}; cpu: {platform.processor() or platform.machine()}, {args.threads} threads",
          flush=True)
    train, val = device_cifar_loaders(args.data, args.batch, cutout=args.cutout, device="cpu",
                                      channels_last=prec.channels_last, seed=args.seed)
    teacher = fxswap.load_student(args.init) if args.init else fxswap.models.create_model(args.model)
    if prec.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    t0 = time.time()
    hist = fxswap.train(teacher, train, val, epochs=args.epochs, preset=args.preset, lr=args.lr, precision=prec,
                        out_dir=args.out, resume=args.resume, seed=args.seed, progress=False, ema=args.ema)
    last = hist[-1]
    if args.ema:  # the EMA is what is kept: its weights (BN statistics included) replace the last step's
        ema = torch.load(Path(args.out, EMA_STUDENT), map_location="cpu", weights_only=True)
        teacher.load_state_dict(ema)
        last = {**last, "val_acc_last_step": last.get("val_acc"), "val_acc": last.get("val_acc_ema")}
    record = {"model": args.model, "init": args.init, "lr": args.lr, "ema": args.ema, "epochs": args.epochs,
              "preset": args.preset, "val_acc_last_step": last.get("val_acc_last_step"),
              "cutout": args.cutout,
              "batch": args.batch, "seed": args.seed, "precision": prec.name,
              "val_acc": last.get("val_acc"), "train_images": len(train.dataset) if hasattr(train, "dataset") else None,
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "wall_s_this_process": round(time.time() - t0, 1)}
    Path(args.out, "teacher_record.json").write_text(json.dumps(record, indent=1))
    if args.keep:
        # plan "S": the teacher is its own identity student, so load_student rebuilds it
        fxswap.save_student(teacher.to(memory_format=torch.contiguous_format), args.keep, model=args.model, plan="S")
        Path(args.keep).with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
