"""Distil a cheapened student in your own PyTorch loop with ``fxswap.Distiller``.

Three lines of a normal loop change: build the Distiller, optimise its
parameters (the student's, plus connectors for hint/SRRL), and call it for the
loss. The teacher is frozen inside it and gets no gradients.

    python examples/plain_loop.py --tiny                     # seconds, random data
    python examples/plain_loop.py --data cifar10.npz         # an .npz: x_train, y_train, x_test, y_test
    python examples/plain_loop.py --data data/               # torchvision's CIFAR-10 folder (downloaded if missing)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import fxswap


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="a .npz file (x_train, y_train, x_test, y_test) or a CIFAR-10 folder in torchvision's "
                        "format, downloaded there if missing (default: data/; --tiny: random images)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="WRN-10-1 for one epoch (on random images without --data)")
    return p.parse_args(argv)


def loaders(args: argparse.Namespace):
    if args.tiny and args.data is None:  # random images: the example's plumbing, not its accuracy
        data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
        return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8)
    path = Path(args.data or "data")
    # a folder is fetched by torchvision when it is not there yet; a failed download says "(offline?)"
    return fxswap.data.cifar_loaders(path, batch_size=8 if args.tiny else args.batch_size, num_workers=0 if args.tiny
                                     else 2, download=path.suffix.lower() != ".npz")


def main(tiny: bool = False, argv=None) -> dict:
    args = parse_args(argv if argv is not None else (["--tiny"] if tiny else None))
    torch.manual_seed(0)
    train_loader, val_loader = loaders(args)  # before the models: a wrong --data fails at once
    teacher = fxswap.models.wrn(10 if args.tiny else 40, 1 if args.tiny else 2)  # load your trained teacher here
    student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
    print(fxswap.compare(teacher, student, (3, 32, 32)))

    distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})  # Moonshine's AT + KD
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1 if args.tiny else args.epochs):
        distiller.train()
        for x, y in train_loader:
            loss, logs = distiller(x, y)  # logs: 0-d tensors (no host sync per step); float() them to print
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        with torch.no_grad():
            correct = sum((student(x).argmax(1) == y).sum().item() for x, y in val_loader)
        accuracy = correct / len(val_loader.dataset)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in logs.items())
              + f", val acc {100 * accuracy:.2f}%")
    return {"logs": logs, "accuracy": accuracy, "student": student}


if __name__ == "__main__":
    try:
        main()
    except fxswap.FxswapError as exc:  # a bad --data or a failed download: one line, not a traceback
        sys.exit(f"plain_loop: {exc}")
