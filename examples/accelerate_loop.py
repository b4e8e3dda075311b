"""``fxswap.Distiller`` with Hugging Face ``accelerate`` (multi-GPU, mixed precision, same loop).

``accelerator.prepare`` wraps the Distiller like any model; the frozen teacher
inside follows it to the device (the Distiller moves it in ``_apply``).

    pip install accelerate
    python examples/accelerate_loop.py --tiny
    accelerate launch examples/accelerate_loop.py     # on your machines
"""
from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import fxswap


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=tiny)
    teacher = fxswap.models.wrn(10, 1) if tiny else fxswap.models.wrn(40, 2)  # load your trained teacher here
    student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
    distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9)
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))  # your dataset here
    loader = DataLoader(data, batch_size=16, shuffle=True)
    distiller, opt, loader = accelerator.prepare(distiller, opt, loader)
    for _ in range(1 if tiny else 200):
        distiller.train()
        for x, y in loader:
            loss, logs = distiller(x, y)
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()
    accelerator.print(", ".join(f"{k} {v:.3f}" for k, v in logs.items()))
    return {"logs": logs, "student": accelerator.unwrap_model(distiller).student}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
