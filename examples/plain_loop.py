"""Distil a cheapened student in your own PyTorch loop with ``fxswap.Distiller``.

Three lines of a normal loop change: build the Distiller, optimise its
parameters (the student's, plus connectors for hint/SRRL), and call it for the
loss. The teacher is frozen inside it and gets no gradients.

    python examples/plain_loop.py --tiny          # seconds, random data
    python examples/plain_loop.py                 # CIFAR-10 with torchvision (downloads it)
"""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import fxswap


def loaders(tiny: bool):
    if tiny:  # random images: the example's plumbing, not its accuracy
        data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
        return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8)
    train, val = fxswap.data.cifar_loaders("data", batch_size=128, download=True)
    return train, val


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    teacher = fxswap.models.wrn(10 if tiny else 40, 1 if tiny else 2)  # load your trained teacher here
    student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
    print(fxswap.compare(teacher, student, (3, 32, 32)))

    distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})  # Moonshine's AT + KD
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train_loader, val_loader = loaders(tiny)
    for epoch in range(1 if tiny else 200):
        distiller.train()
        for x, y in train_loader:
            loss, logs = distiller(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        with torch.no_grad():
            correct = sum((student(x).argmax(1) == y).sum().item() for x, y in val_loader)
        accuracy = correct / len(val_loader.dataset)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in logs.items()) + f", val acc {accuracy:.3f}")
    return {"logs": logs, "accuracy": accuracy, "student": student}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
