"""Modules kept outside an ``nn.Module``'s tree, yet moved with it.

A frozen teacher, a probe that shares the student's weights, the teacher's
classifier head: a distiller needs them at hand, but they must not appear in
``parameters()`` (the optimiser would train them, or train shared weights
twice), ``state_dict()`` (checkpoints would hold the teacher) or ``train()``
(the teacher stays in eval). Wrapping one in :class:`Hidden` hides it; a
:class:`HidingModule` still carries every :class:`Hidden` attribute along
through ``.to()``, ``.cuda()``, ``.half()``.

>>> import torch
>>> class Holder(HidingModule):
...     def __init__(self):
...         super().__init__()
...         self.own = torch.nn.Linear(2, 2)
...         self.other = Hidden(torch.nn.Linear(2, 2))
>>> h = Holder().double()
>>> len(list(h.parameters())), h.other.module.weight.dtype
(2, torch.float64)
"""
from __future__ import annotations

from torch import nn

__all__ = ["Hidden", "HidingModule"]


class Hidden:
    """A module held by reference: invisible to the owner's ``parameters()``, ``state_dict()`` and ``train()``.

    >>> import torch
    >>> Hidden(torch.nn.ReLU()).module
    ReLU()
    """

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module


class HidingModule(nn.Module):
    """An ``nn.Module`` whose :class:`Hidden` attributes (or tuples of them) follow its device and dtype moves.

    >>> import torch
    >>> m = HidingModule(); m.teacher = Hidden(torch.nn.Linear(1, 1))
    >>> m.half().teacher.module.weight.dtype
    torch.float16
    """

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for value in vars(self).values():
            for held in value if isinstance(value, tuple) else (value,):
                if isinstance(held, Hidden):
                    held.module._apply(fn)
        return self
