"""A timm ``train.py``-style setup: timm teacher, timm optimizer/scheduler/EMA, fxswap student and Distiller.

The pieces are those of timm's own ``train.py`` (``create_model``,
``create_optimizer_v2``, ``create_scheduler_v2``, ``ModelEmaV3``); only the loss
comes from ``fxswap.Distiller``. Pass ``--pretrained`` to start from timm's
weights (downloads them), or load your own checkpoint into the teacher.

    python examples/timm_train.py --tiny
    python examples/timm_train.py --model resnet26d --spec "G(N/4)" --epochs 100 --pretrained
"""
from __future__ import annotations

import argparse

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

import fxswap


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet26d")
    p.add_argument("--spec", default="G(N/4)")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--opt", default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--sched", default="cosine")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--model-ema-decay", type=float, default=0.9998)
    p.add_argument("--tiny", action="store_true", help="resnet10t at 32x32 on random data, one epoch")
    return p.parse_args(argv)


def main(tiny: bool = False, argv=None) -> dict:
    args = parse_args(argv if argv is not None else (["--tiny"] if tiny else None))
    if args.tiny:
        args.model, args.img_size, args.epochs, args.warmup_epochs = "resnet10t", 32, 1, 0
    torch.manual_seed(0)
    teacher = timm.create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes)
    student = fxswap.cheapen(teacher, args.spec)  # untouched layers keep the teacher's weights
    print(fxswap.compare(teacher, student, (3, args.img_size, args.img_size)))

    distiller = fxswap.Distiller(teacher, student, losses={"kd": 0.9})
    optimizer = create_optimizer_v2(distiller, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    scheduler, num_epochs = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                                warmup_epochs=args.warmup_epochs)
    ema = ModelEmaV3(student, decay=args.model_ema_decay)
    data = TensorDataset(torch.randn(16, 3, args.img_size, args.img_size), torch.randint(0, args.num_classes, (16,)))
    loader = DataLoader(data, batch_size=8, shuffle=True)  # timm.data.create_loader(...) in a real run
    for epoch in range(num_epochs):
        distiller.train()
        for x, y in loader:
            loss, logs = distiller(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update(student)
        scheduler.step(epoch + 1)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in logs.items()))
    return {"logs": logs, "student": student, "ema": ema.module}


if __name__ == "__main__":
    main()
