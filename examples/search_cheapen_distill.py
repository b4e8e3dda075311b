"""BlockSwap end to end: search a mixed-block plan under a budget, cheapen, distil, save, reload.

1. ``fxswap.blockswap`` samples random per-block plans under the parameter
   budget and ranks them by Fisher potential on one minibatch (BlockSwap §3);
2. ``fxswap.cheapen(teacher, result.best)`` builds the student;
3. ``fxswap.distill`` trains it with attention transfer (the paper's choice);
4. ``fxswap.save_student`` writes weights + the plan; ``fxswap.load_student`` rebuilds it.

    python examples/search_cheapen_distill.py --tiny
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch
from torch.utils.data import DataLoader, TensorDataset

import fxswap


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    name = "wrn-16-1" if tiny else "wrn-40-2"
    teacher = fxswap.models.create_model(name)  # load your trained teacher's weights here
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))  # your CIFAR-10 loader here
    loader = DataLoader(data, batch_size=16, shuffle=True)
    x, y = next(iter(loader))

    result = fxswap.blockswap(teacher, budget=0.5, batch=(x, y), samples=4 if tiny else 1000,
                              candidates=["S", "G(N/4)", "B(2)"] if tiny else None, macs=not tiny)
    print(result.table())
    student = fxswap.cheapen(teacher, result.best, reinit=True)
    history = fxswap.distill(teacher, student, loader, loader, method="at", epochs=1 if tiny else 200,
                             progress=False)

    path = os.path.join(tempfile.mkdtemp() if tiny else "runs", "student.pt")
    fxswap.save_student(student, path, model=name, plan=result.best, input_shape=(3, 32, 32))
    again = fxswap.load_student(path)
    print(f"saved and reloaded {path}: plan {fxswap.read_record(path)['plan']}")
    return {"teacher": teacher, "result": result, "history": history, "student": student, "reloaded": again, "path": path}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
