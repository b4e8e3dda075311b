"""fxswap.warm_start: rewritten blocks fitted to their teacher blocks, nothing else touched."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import fxswap
from fxswap.distillation.warm_start import rewritten_blocks, warm_start
from fxswap.errors import DistillError
from fxswap.testing import build, residual_nets, specs


def _loader(n=32, side=16, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 3, side, side, generator=g), torch.zeros(n, dtype=torch.long)),
                      batch_size=batch)


def _calibrated(teacher, loader):
    """BatchNorm running statistics of the data (momentum 1 on one pass), as a trained teacher has: a random
    teacher's (0, 1) make its eval-mode blocks unlike any train-mode student block."""
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None  # cumulative average over the pass
        m.reset_running_stats()
    with torch.no_grad():
        teacher.train()
        for x, _ in loader:
            teacher(x)
    for m in bns:
        m.momentum = 0.1
    return teacher.eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _flags(model):
    return [(n, m.training) for n, m in model.named_modules()]


def _outside(names, key):
    return not any(key == b or key.startswith(b + ".") for b in names)


def _check_invariants(teacher, student, report, steps):
    """What every warm start must satisfy, whatever the net and spec."""
    names = list(report.blocks)
    assert names == rewritten_blocks(teacher, student)
    assert report.steps == steps and report.params > 0
    assert sum(a for _, a in report.blocks.values()) < sum(b for b, _ in report.blocks.values())
    assert all(p.grad is None for p in student.parameters())


@settings(max_examples=8, deadline=None)
@given(residual_nets(max_stages=2, max_blocks=2, max_width=24).flatmap(
    lambda net: st.tuples(st.just(net), specs(net, forms=("G(N/d)", "B", "BG(M/d)", "S-2x2")))))
def test_warm_start_fits_only_the_rewritten_blocks(net_and_spec):
    net, spec = net_and_spec
    teacher = _calibrated(build(net), _loader(side=net.resolution))
    torch.manual_seed(0)
    student = fxswap.cheapen(teacher, spec, allow_larger=True)
    names = rewritten_blocks(teacher, student)
    if not names:  # e.g. G(N) on a block whose convs are already full: nothing to fit, checked below
        return
    student.train()
    t_state, t_flags, t_tree = _state(teacher), _flags(teacher), repr(teacher)
    s_state, s_flags = _state(student), _flags(student)
    report = warm_start(teacher, student, _loader(side=net.resolution), steps=25, lr=3e-3)
    _check_invariants(teacher, student, report, 25)
    # the teacher: same tensors, flags and tree
    assert all(torch.equal(v, _state(teacher)[k]) for k, v in t_state.items())
    assert _flags(teacher) == t_flags and repr(teacher) == t_tree
    # the student: modes as they were, everything outside the rewritten blocks as it was
    assert _flags(student) == s_flags
    after = _state(student)
    assert all(torch.equal(v, after[k]) for k, v in s_state.items() if _outside(names, k))
    assert any(not torch.equal(v, after[k]) for k, v in s_state.items() if not _outside(names, k))


@pytest.mark.parametrize("spec, level", [("G(N/4)", "conv"), ("B(2)", "branch")])
def test_every_block_mse_drops_on_a_wrn(spec, level):
    torch.manual_seed(0)
    teacher = _calibrated(fxswap.models.wrn(10, 2), _loader(64, batch=32))
    student = fxswap.cheapen(teacher, spec)
    report = warm_start(teacher, student, _loader(64, batch=32), steps=40, lr=3e-3)
    assert sorted(report.blocks) == ["layer1.0", "layer2.0", "layer3.0"]
    for name, (before, after) in report.blocks.items():
        assert after < 0.75 * before, (level, name, before, after)
    assert report.images == 40 * 32
    assert "MSE before" in str(report)


def test_warm_start_makes_the_student_closer_to_the_teacher():
    """The whole student, not just each block alone: its logits move towards the teacher's."""
    torch.manual_seed(0)
    teacher = _calibrated(fxswap.models.wrn(10, 2), _loader(64, batch=32))
    student = fxswap.cheapen(teacher, "G(N/4)").eval()
    x = _loader(64, batch=64).dataset.tensors[0]
    with torch.no_grad():
        gap_before = (student(x) - teacher(x)).pow(2).mean()
        warm_start(teacher, student, _loader(64, batch=32), steps=40, lr=3e-3)
        gap_after = (student(x) - teacher(x)).pow(2).mean()
    assert gap_after < 0.75 * gap_before


def test_a_student_with_nothing_rewritten_is_a_clear_error():
    teacher = fxswap.models.wrn(10, 1)
    with pytest.raises(DistillError, match="nothing to fit"):
        warm_start(teacher, copy.deepcopy(teacher), _loader(), steps=2)
    with pytest.raises(DistillError, match="nothing to fit"):
        warm_start(teacher, fxswap.cheapen(teacher, "S"), _loader(), steps=2)


def test_identity_blocks_have_no_parameters_to_fit():
    teacher = fxswap.models.wrn(16, 1)
    student = fxswap.cheapen(teacher, {"layer1.1": "I"})
    with pytest.raises(DistillError, match="no parameters"):
        warm_start(teacher, student, _loader(), steps=2)


@pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"),
                                            ({"lr": -1.0}, "lr"), ({"blocks": ["nope"]}, "nope")])
def test_bad_arguments_are_clear_errors(kwargs, match):
    teacher = fxswap.models.wrn(10, 1)
    with pytest.raises(DistillError, match=match):
        warm_start(teacher, fxswap.cheapen(teacher, "G(N/4)"), _loader(), **{"steps": 2, **kwargs})


def test_a_student_of_another_teacher_is_a_clear_error():
    with pytest.raises(DistillError, match="cheapen"):
        warm_start(fxswap.models.wrn(10, 2), fxswap.cheapen(fxswap.models.wrn(10, 1), "G(N/4)"), _loader(), steps=2)


def test_bf16_autocast_runs_and_fits():
    torch.manual_seed(0)
    teacher = _calibrated(fxswap.models.wrn(10, 1), _loader())
    student = fxswap.cheapen(teacher, "G(N/4)")
    report = warm_start(teacher, student, _loader(), steps=20, lr=3e-3, amp=True, amp_dtype=torch.bfloat16)
    assert all(a < b for b, a in report.blocks.values())
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_recalibration_recomputes_the_blocks_statistics_on_the_students_own_forward():
    torch.manual_seed(0)
    data = _loader(64, batch=32)  # two batches, no shuffle: the fit and its batch order are deterministic
    teacher = _calibrated(fxswap.models.wrn(10, 2), data)
    fit_only = fxswap.cheapen(teacher, "G(N/4)")
    recal = copy.deepcopy(fit_only)
    warm_start(teacher, fit_only, data, steps=40, recalibrate=0)
    report = warm_start(teacher, recal, data, steps=40, recalibrate=2)
    assert report.recalibrated == 2 and "recomputed on the student's own forward over 2 batches" in str(report)
    names = rewritten_blocks(teacher, recal)
    # the same fit: every parameter equal, and every buffer outside the rewritten blocks
    a, b = fit_only.state_dict(), recal.state_dict()
    assert all(torch.equal(a[k], b[k]) for k, _ in fit_only.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a if _outside(names, k))
    # inside them, each BatchNorm holds the statistics of its input in the student's own forward over both batches
    # (a cumulative average), those layers normalising by each batch and the rest of the student in eval mode;
    # computed here independently, by hooks on a copy
    probe = copy.deepcopy(fit_only).eval()
    bns = {n: m for n, m in probe.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d) and not _outside(names, n + ".")}
    seen = {n: [] for n in bns}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0].detach()))
             for n, m in bns.items()]
    for m in bns.values():
        m.train()
    with torch.no_grad():
        for x, _ in data:
            probe(x)
    for h in hooks:
        h.remove()
    for n, xs in seen.items():
        mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
        assert torch.allclose(b[n + ".running_mean"], mean, atol=1e-5), n
        assert torch.allclose(b[n + ".running_var"], var, rtol=1e-4, atol=1e-5), n
    # and on this teacher the recalibrated student's logits are the closer to the teacher's
    x = data.dataset.tensors[0]
    with torch.no_grad():
        gaps = [(s.eval()(x) - teacher(x)).pow(2).mean() for s in (fit_only, recal)]
    assert gaps[1] < gaps[0]
