"""Round-trip checks for property tests: a student saved and reloaded is the same student.

:func:`fxswap.save_student` needs a model *name* it can rebuild; a net drawn by
:func:`fxswap.testing.residual_nets` is named by the import path of
:func:`build_net` with its geometry as plain-data ``model_kwargs``
(:func:`net_kwargs`), so the saved file stays weights-only loadable.
:func:`check_roundtrip` saves, reloads and compares.

>>> import os, tempfile, warnings, fxswap
>>> from fxswap.testing import NetSpec, StageSpec, build
>>> net = NetSpec(stem=8, stages=(StageSpec(8, 1, 1), StageSpec(32, 1, 1)), order="pre")
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     student = fxswap.cheapen(build(net), "G(N/8)")  # G(1) on 8 channels: larger, so layer1.0 is kept
>>> fxswap.applied_plan(student).plan
{'layer1.0': 'S', 'layer2.0': 'G(N/8)'}
>>> again = check_roundtrip(student, os.path.join(tempfile.mkdtemp(), "s.pt"), model=NET_FACTORY,
...                         model_kwargs=net_kwargs(net), input_shape=(3, 8, 8))
>>> fxswap.applied_plan(again) == fxswap.applied_plan(student)
True
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .strategies import NetSpec, ResidualNet, StageSpec, build

__all__ = ["NET_FACTORY", "net_kwargs", "build_net", "check_roundtrip"]

#: the import path ``save_student(model=...)`` names for a :func:`fxswap.testing.build` net
NET_FACTORY = "fxswap.testing.roundtrip:build_net"


def net_kwargs(net: NetSpec) -> dict:
    """``net`` as plain data (lists, ints, strings) for ``save_student(model_kwargs=...)``.

    >>> net_kwargs(NetSpec(stem=8, stages=(StageSpec(16, 1, 2),)))["stages"]
    [[16, 1, 2]]
    """
    return {"stem": net.stem, "stages": [[s.width, s.blocks, s.stride] for s in net.stages], "order": net.order,
            "kernel_size": net.kernel_size, "num_classes": net.num_classes, "resolution": net.resolution,
            "block": net.block}


def build_net(stem: int, stages, order: str = "post", kernel_size: int = 3, num_classes: int = 10,
              resolution: int = 16, block: str = "basic") -> ResidualNet:
    """:func:`fxswap.testing.build` from :func:`net_kwargs`'s plain data (the factory :data:`NET_FACTORY` names).

    >>> type(build_net(8, [[8, 1, 1]])).__name__
    'ResidualNet'
    """
    net = NetSpec(stem, tuple(StageSpec(*s) for s in stages), order, kernel_size, num_classes, resolution, block)
    return build(net)


def check_roundtrip(student: nn.Module, path: str | os.PathLike, *, model: str, input_shape: tuple[int, ...],
                    model_kwargs: dict | None = None, plan=None, **save_options) -> nn.Module:
    """Save ``student`` (:func:`fxswap.save_student`), reload it (:func:`fxswap.load_student`) and return the
    reloaded one, after asserting it is the same student: the same state-dict keys and tensors, the same
    outputs in eval mode on one input of ``input_shape`` (C, H, W), and, when ``student`` carries one, the
    same applied plan (:func:`fxswap.applied_plan`). ``student``'s training flags are left as they were.

    >>> import os, tempfile, fxswap
    >>> s = fxswap.cheapen(fxswap.models.wrn(10, 1), {"layer3.*": "B(2)"})
    >>> type(check_roundtrip(s, os.path.join(tempfile.mkdtemp(), "s.pt"), model="wrn-10-1",
    ...                      input_shape=(3, 32, 32))).__name__
    'WideResNet'
    """
    from ..io.student import load_student, save_student
    from ..surgery.applied import record_of
    from ..tracing.modes import kept_modes

    save_student(student, path, model=model, plan=plan, model_kwargs=model_kwargs, **save_options)
    again = load_student(path, trust_import=True)
    ours, theirs = student.state_dict(), again.state_dict()
    assert list(ours) == list(theirs), f"state-dict keys differ: {sorted(set(ours) ^ set(theirs))[:6]}"
    differ = [k for k in ours if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k])]
    assert not differ, f"tensors differ after the round trip: {differ[:6]}"
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with kept_modes(student), torch.no_grad():
        student.eval()
        again.eval()
        a, b = student(x), again(x)
    again.train()
    assert torch.equal(a, b), f"outputs differ after the round trip: max |diff| {(a - b).abs().max().item():.3g}"
    if record_of(student) is not None:
        assert record_of(again) == record_of(student), f"applied plans differ: {record_of(again)} vs " \
                                                       f"{record_of(student)}"
    return again
