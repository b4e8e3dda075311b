"""Every distillation method vs training from scratch, side by side, in one short run.

The same teacher (a checkpoint, or trained here first), the same cheapened
student architecture, the same initialisation (``seed``), data order and
schedule for every method; only the loss changes. Prints, per method, each
loss term after the first and the last epoch and the final validation
accuracy, as a Markdown table for ``docs/benchmarks.md``.

A smoke test of the losses on real data, not a reproduction of the papers:
they train 200 epochs on all 50,000 images.

    python benchmarks/distill_methods.py --data ../shared/data/cifar10_subset.npz \\
        --teacher-checkpoint runs/smoke/teacher/checkpoint.pt --limit 2000 --epochs 2
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import fxswap
from fxswap.cli.distill import load_weights
from fxswap.data import cifar_loaders
from fxswap.distillation import evaluate

METHODS = ("scratch", "kd", "at", "at+kd", "mimic", "hint", "srrl", "lit")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _first(rows, key: str) -> float:
    return next(row[key] for row in rows if key in row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/cifar10_subset.npz")
    ap.add_argument("--teacher", default="wrn-16-2")
    ap.add_argument("--teacher-checkpoint", help="weights of the teacher; without, train it --teacher-epochs")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--student", default="G(N/4)", help="spec or plan for fxswap.cheapen")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--limit", type=int, default=2000, help="first N images of each split")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_loader, val_loader = cifar_loaders(args.data, batch_size=args.batch_size, num_workers=0,
                                             limit=args.limit, seed=args.seed)
    torch.manual_seed(args.seed)
    teacher = fxswap.models.create_model(args.teacher, train_loader.dataset.num_classes)
    if args.teacher_checkpoint:
        load_weights(teacher, args.teacher_checkpoint)
    else:
        fxswap.train(teacher, train_loader, val_loader, epochs=args.teacher_epochs, seed=args.seed, progress=False)
    teacher_acc = evaluate(teacher, val_loader)["acc"]
    torch.manual_seed(args.seed)
    initial = fxswap.cheapen(teacher, args.student, reinit=True)
    n_params = sum(p.numel() for p in initial.parameters())
    print(f"teacher {args.teacher}: val acc {teacher_acc:.2%}; student cheapen(teacher, {args.student!r}): "
          f"{n_params:,} parameters; {len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, "
          f"{args.epochs} epochs, threads {torch.get_num_threads()}")

    rows = []
    for method in args.methods.split(","):
        student = copy.deepcopy(initial)  # every method starts from the same weights
        start = time.perf_counter()
        common = dict(epochs=args.epochs, seed=args.seed, progress=False)
        if method == "scratch":
            history = fxswap.train(student, train_loader, val_loader, **common)
        else:
            # LIT's KD fine-tune gets one epoch here, so its total matches the others' plus one
            extra = {"finetune_epochs": 1} if method == "lit" else {}
            history = fxswap.distill(teacher, student, train_loader, val_loader, method=method, **common, **extra)
        seconds = time.perf_counter() - start
        last = history[-1]
        # LIT's stages (lit, then the KD fine-tune) log different terms: each from its first to its last row
        terms = dict.fromkeys(k for row in history for k in row if k.startswith("train_") and k != "train_acc")
        change = ", ".join(f"{k[6:]} {_fmt(_first(history, k))} → {_fmt(_first(history[::-1], k))}" for k in terms)
        rows.append((method, change, last["val_acc"], seconds))
        print(f"{method}: {change}; val acc {last['val_acc']:.2%} ({seconds:.0f} s)", flush=True)

    print("\n| method | loss terms, epoch 1 → last | val acc | seconds |\n|---|---|---:|---:|")
    for method, change, acc, seconds in rows:
        print(f"| {method} | {change} | {acc:.1%} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
