"""Train/eval flags of every submodule, snapshot and restored.

``model.train(mode)`` sets *every* submodule's ``training`` flag, so the
common pattern ``was = model.training; model.eval(); ...; model.train(was)``
does not give back what the user had: a teacher in train mode with its
BatchNorm layers frozen in eval (a usual fine-tuning setup) comes back with
every BatchNorm in train mode. :func:`kept_modes` records each module's own
flag and puts it back, so a function can switch modes freely inside it.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
>>> net[1].eval() and None                      # BN frozen, the rest training
>>> with kept_modes(net):
...     net.eval() and None
...     net.train() and None                    # would unfreeze the BN
>>> net.training, net[1].training
(True, False)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["training_flags", "kept_modes"]


def training_flags(*models: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``(module, module.training)`` for every module under ``models`` (each module once).

    >>> import torch.nn as nn
    >>> [flag for _, flag in training_flags(nn.Sequential(nn.ReLU()).eval())]
    [False, False]
    """
    seen: set[int] = set()
    out = []
    for model in models:
        for m in model.modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append((m, m.training))
    return out


@contextlib.contextmanager
def kept_modes(*models: nn.Module) -> Iterator[None]:
    """On exit (also on an exception) every module under ``models`` gets back its own ``training`` flag.

    Non-module arguments are ignored, so a caller may enter it before
    validating its input.

    >>> import torch.nn as nn
    >>> bn = nn.BatchNorm1d(2).eval()
    >>> with kept_modes(bn):
    ...     bn.train().training
    True
    >>> bn.training
    False
    """
    flags = training_flags(*(m for m in models if isinstance(m, nn.Module)))
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
