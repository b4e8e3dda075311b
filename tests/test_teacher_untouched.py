"""No public fxswap call changes the model it is given (issue 12, "the teacher is mutated after all").

After each call, every module's ``training`` flag, every parameter and buffer
(identity, value, ``requires_grad``, ``.grad``) and the module tree are exactly
as they were. Models come from :mod:`fxswap.testing` with a random training flag
per module, so setups like "teacher in train mode, BatchNorm frozen in eval"
are among the inputs, and a deterministic WRN case pins that setup down.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import fxswap
from fxswap.models import wrn
from fxswap.testing import build, residual_nets


def snapshot(*models: torch.nn.Module) -> list:
    """Everything a call must leave alone, comparable with ``==`` after cloning tensors."""
    out = []
    for model in models:
        out.append([(name, id(m), type(m), m.training) for name, m in model.named_modules(remove_duplicate=False)])
        out.append([(name, id(p), p.requires_grad, p.grad is None, p.detach().clone())
                    for name, p in model.named_parameters(remove_duplicate=False)])
        out.append([(name, id(b), b.clone()) for name, b in model.named_buffers(remove_duplicate=False)])
    return out


def assert_same(before: list, after: list) -> None:
    assert len(before) == len(after)
    for part_b, part_a in zip(before, after):
        assert len(part_b) == len(part_a), "the module tree changed"
        for b, a in zip(part_b, part_a):
            meta_b = [v for v in b if not isinstance(v, torch.Tensor)]
            meta_a = [v for v in a if not isinstance(v, torch.Tensor)]
            assert meta_b == meta_a, f"{b[0]!r}: {meta_b} became {meta_a}"
            for tb, ta in zip((v for v in b if isinstance(v, torch.Tensor)), (v for v in a if isinstance(v, torch.Tensor))):
                assert torch.equal(tb, ta), f"{b[0]!r}: values changed"


def _batch(shape, num_classes):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g), torch.arange(shape[0]) % num_classes


def _loaders(shape, num_classes):
    x, y = _batch((4, *shape[1:]), num_classes)
    return DataLoader(TensorDataset(x, y), batch_size=2)


# Each entry point: (model, batch, input_shape of one sample) -> the extra models it was also handed.
# Students are built before the snapshot, so they must come back untouched too.
ENTRY_POINTS = {
    "count": lambda m, b, s: fxswap.count(m, s),
    "compare": lambda m, b, s: fxswap.compare(m, STUDENT, s),
    "probe": lambda m, b, s: fxswap.probe(m, "stages"),
    "probe_blocks": lambda m, b, s: fxswap.probe(m, ["blocks", "penultimate"]),
    "split_sections": lambda m, b, s: fxswap.split_sections(m, ["layer1.0"]),
    "trace": lambda m, b, s: fxswap.trace(m),
    "find_blocks": lambda m, b, s: fxswap.find_blocks(m),
    "cheapen": lambda m, b, s: fxswap.cheapen(m, "B(2)"),
    "cheapen_reinit": lambda m, b, s: fxswap.cheapen(m, "G(N/4)", reinit=True),
    "fisher_potential": lambda m, b, s: fxswap.fisher_potential(m, b),
    "sensitivity": lambda m, b, s: fxswap.sensitivity(m, "G(N/4)", b),
    "blockswap": lambda m, b, s: fxswap.blockswap(m, 0.6, b, samples=2, candidates=["S", "G(N/4)"],
                                                 tolerance=0.99, macs=False),
    "Distiller": lambda m, b, s: fxswap.Distiller(m, STUDENT, {"at": 1.0, "kd": 0.9})(*b),
    "LITDistiller": lambda m, b, s: fxswap.LITDistiller(m, STUDENT)(*b),
    "distill": lambda m, b, s: fxswap.distill(m, STUDENT, _loaders(b[0].shape, int(b[1].max()) + 1),
                                              method="kd", epochs=1, progress=False),
}
# the student handed to compare/Distiller/distill: set per example by run()
STUDENT: torch.nn.Module | None = None
TEACHER_ONLY = {"compare", "Distiller", "LITDistiller", "distill"}  # these train or may change the student

# Entry points in files other engineers own that still change the teacher on this branch:
# name -> reason. Empty: every call above leaves the teacher as found.
STILL_FAILING: dict[str, str] = {}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=False, reason=STILL_FAILING[n]))
            if n in STILL_FAILING else n for n in names]


def run(name: str, model: torch.nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    global STUDENT
    STUDENT = fxswap.cheapen(model, "G(N/4)") if name in TEACHER_ONLY else None
    batch = _batch((4, *shape), num_classes)
    guarded = (model,) if STUDENT is None or name in TEACHER_ONLY - {"compare"} else (model, STUDENT)
    before = snapshot(*guarded)
    ENTRY_POINTS[name](model, batch, shape)
    assert_same(before, snapshot(*guarded))


def frozen_bn_teacher() -> torch.nn.Module:
    """The setup of the bug report: teacher in train mode, every BatchNorm in eval."""
    m = wrn(10, 1).train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    return m


@pytest.mark.parametrize("name", _params(ENTRY_POINTS))
def test_frozen_batchnorm_teacher_comes_back_as_found(name):
    run(name, frozen_bn_teacher(), (3, 16, 16), 10)


@st.composite
def flagged_nets(draw):
    """A small residual net with a random ``training`` flag on every module."""
    net = draw(residual_nets(max_stages=2, max_blocks=2, max_width=16))
    model = build(net)
    modules = list(model.modules())
    flags = draw(st.lists(st.booleans(), min_size=len(modules), max_size=len(modules)))
    for m, flag in zip(modules, flags):
        m.training = flag
    return net, model


@pytest.mark.parametrize("name", _params(ENTRY_POINTS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=flagged_nets())
def test_public_calls_leave_every_flag_parameter_and_buffer(name, case):
    net, model = case
    run(name, model, (3, net.resolution, net.resolution), net.num_classes)


@pytest.mark.parametrize("name", ["count", "compare", "probe", "split_sections", "fisher_potential"])
def test_the_reported_calls_keep_a_frozen_batchnorm_frozen(name):
    """The exact report: each of these turned every BN of a train-mode teacher back to train mode."""
    m = frozen_bn_teacher()
    run(name, m, (3, 16, 16), 10)
    assert m.training and not any(b.training for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
