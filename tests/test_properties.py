"""Property tests: random residual nets × random specs (fxswap.testing strategies).

Expected parameter counts are computed here from the net's geometry, not by
calling fxswap's own closed forms.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxswap
from fxswap.testing import NetSpec, StageSpec, build, residual_nets, specs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def net_and_plan(draw, forms=None):
    net = draw(residual_nets())
    n = len(net.blocks())
    strategy = specs(net) if forms is None else specs(net, forms)
    plan = draw(st.lists(strategy, min_size=n, max_size=n))
    return net, plan


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _groups(arg: str, channels: int) -> int:
    m = re.fullmatch(r"([NM])(?:/(\d+))?", arg)
    if m:
        return channels // int(m.group(2) or 1)
    return int(arg)


def expected_delta(block, spec: str) -> int:
    """Change in parameter count when ``spec`` replaces ``block`` (Moonshine Table 1 structures)."""
    cin, cout, k, post = block.in_channels, block.out_channels, block.kernel_size, block.order == "post"
    convs = [(cin, cout), (cout, cout)]  # the branch's two k×k convs, bias-free
    standard = sum(a * b * k * k for a, b in convs)
    # norms inside the replaced region: post: bn1, bn2 (both `cout`); pre: bn2 only (bn1 sits before conv1)
    region_norms = 2 * cout * (2 if post else 1)
    m = re.fullmatch(r"([A-Za-z0-9\-]+)(?:\((.*)\))?", spec)
    kind, args = m.group(1), (m.group(2).split(",") if m.group(2) else [])
    if kind == "S":
        return 0
    if kind == "S-2x2":
        return sum(a * b * 4 for a, b in convs) - standard
    if kind == "G":
        new = 0
        for a, b in convs:
            g = _groups(args[0], a)
            new += a * (a // g) * k * k + 2 * a + a * b  # grouped k×k, BN, 1×1
        return new - standard
    if kind in ("B", "BG"):
        width = cout // int(args[0])
        g = _groups(args[1], width) if kind == "BG" else 1
        new = cin * width + 2 * width + width * (width // g) * k * k + 2 * width + width * cout
        new += 2 * cout if post else 0
        return new - standard - region_norms
    if kind == "I":
        removed = standard + region_norms
        if not post and block.shortcut == "identity":
            removed += 2 * cin  # bn1 only fed the branch
        return -removed
    raise AssertionError(spec)


def _quiet_cheapen(model, plan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxswap.cheapen(model, plan, allow_larger=True)


@SETTINGS
@given(net_and_plan())
def test_cheapen_invariants(case):
    net, plan = case
    teacher = build(net)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tree = repr(teacher)
    x = torch.randn(net.input_shape())

    student = _quiet_cheapen(teacher, plan)

    # the teacher is untouched: every tensor and the module tree
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert repr(teacher) == tree
    # no shared storage
    t_ptrs = {t.untyped_storage().data_ptr() for t in list(teacher.parameters()) + list(teacher.buffers())}
    s_ptrs = {t.untyped_storage().data_ptr() for t in list(student.parameters()) + list(student.buffers())}
    assert not t_ptrs & s_ptrs
    # parameter count from the geometry
    expected = n_params(teacher) + sum(expected_delta(b, s) for b, s in zip(net.blocks(), plan))
    assert n_params(student) == expected, (plan, n_params(student), expected)
    # forward and backward, output shape
    student.train()
    out = student(x)
    assert out.shape == (x.shape[0], net.num_classes)
    out.square().mean().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    # deepcopy gives an equal, independent student
    student.eval()
    twin = copy.deepcopy(student)
    with torch.no_grad():
        assert torch.equal(twin(x), student(x))
    assert not {p.data_ptr() for p in twin.parameters()} & {p.data_ptr() for p in student.parameters()}


@SETTINGS
@given(residual_nets())
def test_all_standard_reproduces_teacher(net):
    teacher = build(net).eval()
    # non-trivial BN statistics, so that dropping a norm would show
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    student = fxswap.cheapen(teacher, "S").eval()
    x = torch.randn(net.input_shape())
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))
    assert student.state_dict().keys() == teacher.state_dict().keys()


@SETTINGS
@given(residual_nets())
def test_find_blocks_matches_geometry(net):
    found = fxswap.find_blocks(build(net))
    want = net.blocks()
    assert [b.name for b in found] == [b.name for b in want]
    for f, w in zip(found, want):
        assert (f.in_channels, f.out_channels, f.stride, f.kernel_size) == (
            w.in_channels, w.out_channels, w.stride, w.kernel_size), f.name
        assert (f.order, f.shortcut) == (w.order, w.shortcut), f.name
        assert f.convs == (f"{w.name}.conv1", f"{w.name}.conv2")
    # stages are numbered by resolution: each stride-2 block starts a new one (ranked among those present)
    stage_of = {}
    level = 0
    for w in want:
        if w.stride == 2:
            level += 1
        stage_of[w.name] = level
    levels = sorted(set(stage_of.values()))
    assert [f.stage for f in found] == [levels.index(stage_of[w.name]) for w in want]


@settings(max_examples=15, deadline=None)
@given(net_and_plan())
def test_train_eval_modes(case):
    net, plan = case
    student = _quiet_cheapen(build(net), plan)
    x = torch.randn(net.input_shape(4))
    bns = [m for m in student.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    student.train()
    student(x)
    assert all(m.training for m in student.modules())
    changed = [not torch.equal(s, m.running_mean) for s, m in zip(stats, bns)]
    assert all(changed), "every BN in the student updates its running stats in train mode"
    student.eval()
    assert not any(m.training for m in student.modules())
    stats = [m.running_mean.clone() for m in bns]
    with torch.no_grad():
        a, b = student(x), student(x)
    assert torch.equal(a, b)
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns))


def test_every_form_on_fixed_nets():
    """Each spec form on both block orders, with a projection and an identity block."""
    for order in ("pre", "post"):
        net = NetSpec(stem=16, stages=(StageSpec(16, 2, 1), StageSpec(32, 1, 2)), order=order)
        for spec in ["S", "S-2x2", "G(2)", "G(N/4)", "G(N)", "B(2)", "BG(2,4)", "BG(2,M/4)", "BG(4,M)", "I"]:
            teacher = build(net)
            student = _quiet_cheapen(teacher, spec)
            expected = n_params(teacher) + sum(expected_delta(b, spec) for b in net.blocks())
            assert n_params(student) == expected, (order, spec)
            assert student(torch.randn(net.input_shape())).shape == (2, 10)


def test_torch_export_on_student():
    net = NetSpec(stem=16, stages=(StageSpec(16, 2, 1), StageSpec(32, 2, 2)), order="post")
    student = _quiet_cheapen(build(net), ["G(N/4)", "B(2)", "BG(2,M/4)", "I"]).eval()
    x = torch.randn(net.input_shape())
    exported = torch.export.export(student, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), student(x))


# --- every host kind: bottleneck, inverted residual, transformer blocks (fxswap.testing.BLOCK_KINDS) ---

from fxswap.testing import BLOCK_KINDS  # noqa: E402

KIND_SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ANY_SPEC = st.sampled_from(["S-2x2", "G(2)", "G(N/4)", "G(N)", "B(2)", "B(4)", "BG(2,2)", "BG(2,M/4)", "BG(2,M)", "I"])
SMALL_NETS = residual_nets(max_stages=2, max_blocks=2, max_width=32, kernels=(3,), blocks=BLOCK_KINDS)


@KIND_SETTINGS
@given(net=SMALL_NETS, spec=ANY_SPEC)
def test_student_never_larger_than_teacher_unless_allowed(net, spec):
    teacher = build(net)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = fxswap.cheapen(teacher, spec)
    except fxswap.SpecError as exc:
        assert "does not apply" in str(exc) or "larger" in str(exc) or "applies to none" in str(exc), str(exc)
        if "larger" in str(exc):  # then allow_larger gives a student that is larger
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bigger = fxswap.cheapen(teacher, spec, allow_larger=True)
            blocks = {b.name: b for b in fxswap.find_blocks(teacher)}
            assert any(name in str(exc) for name in blocks)
            assert bigger(torch.randn(net.input_shape())).shape == (2, net.num_classes)
        return
    assert n_params(student) <= n_params(teacher)
    with torch.no_grad():
        assert student.eval()(torch.randn(net.input_shape())).shape == (2, net.num_classes)


@KIND_SETTINGS
@given(net=SMALL_NETS)
def test_all_s_plan_reproduces_teacher_outputs_exactly(net):
    teacher = build(net).eval()
    student = fxswap.cheapen(teacher, "S").eval()
    x = torch.randn(net.input_shape())
    with torch.no_grad():
        assert torch.equal(teacher(x), student(x))


@KIND_SETTINGS
@given(net=SMALL_NETS, data=st.data())
def test_identity_on_any_block_keeps_output_shape(net, data):
    teacher = build(net).eval()
    blocks = fxswap.find_blocks(teacher)
    block = data.draw(st.sampled_from(blocks))
    student = fxswap.cheapen(teacher, {block.name: "I"}).eval()
    x = torch.randn(net.input_shape())
    with torch.no_grad():
        assert student(x).shape == teacher(x).shape
    assert n_params(student) < n_params(teacher)
