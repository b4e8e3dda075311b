"""Checks that a student is right in every detail: its modes and its weights.

:func:`modes_mismatch` lists the modules of a student whose train/eval flag is
not the one its teacher implies (each surviving module keeps its own flag; a
substitute takes the flag of the modules it replaced).
:func:`dead_parameters` lists the parameters and buffers no forward of the
student reaches (they would sit in its state dict, its saved files and its
parameter count while computing nothing).

>>> import fxswap
>>> teacher = fxswap.models.wrn(10, 1).eval()
>>> student = fxswap.cheapen(teacher, "G(N/4)")
>>> modes_mismatch(teacher, student), dead_parameters(student, torch.randn(2, 3, 32, 32))
([], [])
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ..tracing.tracer import ModeSwitch

__all__ = ["modes_mismatch", "dead_parameters"]


def _stands_for(new: nn.Module, old: nn.Module) -> bool:
    """Whether ``new`` is ``old`` carried over: the same class, or the graph a rewrite retraced it into (or
    the plain module fx creates for an intermediate path)."""
    return type(new) is type(old) or isinstance(new, (fx.GraphModule, ModeSwitch)) or type(new) is nn.Module


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def _expected(module: nn.Module, replaced: list[nn.Module]) -> bool | None:
    """The flag a module of a substitute must have, or None where the replaced modules do not decide it."""
    flags = {m.training for m in replaced}
    if len(flags) == 1:
        return flags.pop()
    kin = {m.training for m in replaced if _is_norm(m) == _is_norm(module)}
    return kin.pop() if len(kin) == 1 else None


def modes_mismatch(teacher: nn.Module, student: nn.Module) -> list[str]:
    """One line per student module whose ``training`` flag differs from what ``teacher`` implies.

    A module carried over from the teacher (same path, same class, or the
    retraced graph standing for it) must keep its flag. A new module takes
    the flag of what it replaced: the teacher's module at its own path (a
    conv swapped for a ``G`` substitute) or else the modules of its nearest
    retraced ancestor that the student no longer has (a branch replaced by a
    ``B`` substitute); where those disagree, the ones of its own sort
    (normalisation or not). New modules whose replaced modules leave the flag
    open are not judged.

    >>> import torch.nn as nn
    >>> teacher = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    >>> student = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))).eval()
    >>> student[0][1].train() and None
    >>> modes_mismatch(teacher, student)
    ['0.1: train, expected eval (replaces 0)']
    """
    old = dict(teacher.named_modules())
    new = dict(student.named_modules())
    out = []
    for path, module in new.items():
        want, why = _flag_for(path, module, old, new)
        if want is not None and module.training != want:
            out.append(f"{path or '<root>'}: {_mode(module.training)}, expected {_mode(want)} ({why})")
    return out


def _flag_for(path: str, module: nn.Module, old: dict, new: dict) -> tuple[bool | None, str]:
    if path in old and _stands_for(module, old[path]):
        return old[path].training, "the teacher's flag"
    anchor = path
    while anchor not in old:  # the nearest ancestor the teacher has (the root always)
        anchor = anchor.rpartition(".")[0] if "." in anchor else ""
    if not _stands_for(new[anchor], old[anchor]):  # a module swapped for a substitute at that path
        return _expected(module, [old[anchor]]), f"replaces {anchor or '<root>'}"
    prefix = f"{anchor}." if anchor else ""
    gone = [m for p, m in old.items() if p.startswith(prefix) and p not in new]
    return (_expected(module, gone), f"replaces modules of {anchor or '<root>'}") if gone else (None, "")


def _mode(training: bool) -> str:
    return "train" if training else "eval"


def dead_parameters(model: nn.Module, example_input, modes=(True, False)) -> list[str]:
    """Names of the parameters and buffers of ``model`` that no forward reaches, in any of ``modes``.

    A parameter is reached when a forward at ``example_input`` (a tensor or a
    tuple of positional arguments) followed by a backward of the sum of its
    floating-point outputs gives it a gradient; a buffer when the module
    holding it runs. Works on a deep copy, so ``model`` (its parameters,
    buffers, flags and gradients) is left as it is.

    >>> import torch.nn as nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.used, self.unused = nn.Linear(2, 2), nn.BatchNorm1d(2)
    ...     def forward(self, x):
    ...         return self.used(x)
    >>> dead_parameters(Net(), torch.randn(3, 2))
    ['unused.bias', 'unused.num_batches_tracked', 'unused.running_mean', 'unused.running_var', 'unused.weight']
    """
    work = copy.deepcopy(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    params = dict(work.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: ran.add(id(m))) for m in work.modules()]
    try:
        for mode in modes:
            work.train(mode)
            total = sum(t.float().sum() for t in _tensors(work(*args)) if t.requires_grad)
            if isinstance(total, torch.Tensor):
                total.backward()
    finally:
        for h in hooks:
            h.remove()
    dead = [name for name, p in params.items() if p.grad is None]
    holders = {name: m for name, m in work.named_modules()}
    for name, _ in work.named_buffers():
        owner = name.rpartition(".")[0]
        if id(holders[owner]) not in ran:
            dead.append(name)
    return sorted(dead)


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []
