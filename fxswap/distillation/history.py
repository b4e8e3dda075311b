"""History rows: running means of the logged terms, and the printed forms of a run's history.

Accuracies are fractions in [0, 1] in the rows (``fit``'s return value,
``history.jsonl``, the callbacks) and percentages with a ``%`` sign wherever
they are printed (:func:`epoch_summary`, :func:`format_history`,
:func:`percent`: the progress bar and the CLI), so one run never shows
``0.1100``, ``11.00`` and ``11.00%`` for the same number.

>>> m = Meter(torch.device("cpu"))
>>> m.add({"loss": torch.tensor(2.0), "kd": 1.0}, 4); m.add({"loss": torch.tensor(4.0), "kd": 3.0}, 4)
>>> m.means()
{'loss': 3.0, 'kd': 2.0}
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Meter", "percent", "epoch_summary", "format_history"]


class Meter:
    """Sample-weighted running means of ``{term: value}``, kept on the device.

    :meth:`add` never synchronises with the host (values stay tensors);
    :meth:`means` reduces every term in one transfer, so a loop pays one sync
    per logging interval, not one per term per step.

    >>> Meter(torch.device("cpu")).means()
    {}
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, logs: Mapping[str, Any], n: int) -> None:
        """Add one batch's ``logs`` (tensors or numbers), weighted by its ``n`` samples."""
        for k, v in logs.items():
            v = v.detach().to(self.device, torch.float64) if isinstance(v, Tensor) else \
                torch.tensor(float(v), dtype=torch.float64, device=self.device)
            self.sums[k] = self.sums[k] + v * n if k in self.sums else v * n
        self.count += n

    def means(self) -> dict[str, float]:
        """``{term: mean}`` over the samples added so far (one host sync)."""
        if not self.sums or not self.count:
            return {}
        values = (torch.stack(list(self.sums.values())) / self.count).tolist()
        return dict(zip(self.sums, values))


def percent(fraction: float) -> str:
    """An accuracy (a fraction in [0, 1]) as printed everywhere: a percentage with two decimals and its sign.

    >>> percent(0.11), percent(1.0)
    ('11.00%', '100.00%')
    """
    return f"{100 * fraction:.2f}%"


def epoch_summary(row: Mapping[str, Any], epochs: int | None = None) -> str:
    """One line for an epoch's history row (accuracies in %).

    >>> epoch_summary({"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.11, "seconds": 1.0}, 3)
    'epoch 1/3 lr 0.1 train loss 2.0000 acc 11.00% | 1.0s'
    """
    of = f"/{epochs}" if epochs else ""
    parts = [f"{row['stage']} " if "stage" in row else "", f"epoch {row['epoch']}{of}", f" lr {row['lr']:.4g}",
             f" train loss {row['train_loss']:.4f}"]
    if "train_acc" in row:
        parts.append(f" acc {percent(row['train_acc'])}")
    if "val_loss" in row:
        parts.append(f" | val loss {row['val_loss']:.4f} acc {percent(row['val_acc'])}")
    parts.append(f" | {row['seconds']:.1f}s")
    return "".join(parts)


def _cell(k: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if k.endswith("_acc"):
            return percent(v)
        if k == "lr":
            return f"{v:.4g}"
        if k == "seconds":
            return f"{v:.1f}"
        return f"{v:.4f}"
    return str(v)


def format_history(history: Sequence[Mapping[str, Any]]) -> str:
    """The history as an aligned text table (accuracies in %, with the sign; the rows keep fractions).

    >>> print(format_history([{"epoch": 1, "lr": 0.1, "train_loss": 2.5, "train_acc": 0.1, "seconds": 3.0}]))
    epoch  lr   train_loss  train_acc  seconds
    1      0.1  2.5000      10.00%     3.0
    """
    if not history:
        return "(no epochs)"
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    table = [cols] + [[_cell(k, row.get(k)) for k in cols] for row in history]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)
