"""The student is right in every detail: its modes, its weights, and that it is cheaper (issue 18, classes 1, 2, 6).

Random residual nets × random per-block plans (fxswap.testing strategies), checked with
fxswap.testing.integrity, plus the timm models the issue names (random weights, small inputs).
"""
from __future__ import annotations

import random
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxswap
from fxswap.testing import BLOCK_KINDS, build, dead_parameters, modes_mismatch, residual_nets, specs

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NETS = residual_nets(max_stages=2, max_blocks=2, max_width=32, blocks=BLOCK_KINDS)


@st.composite
def net_and_plan(draw, nets=residual_nets(max_stages=2, max_blocks=2, max_width=32)):
    net = draw(nets)
    n = len(net.blocks())
    return net, draw(st.lists(specs(net), min_size=n, max_size=n))


def _cheapen(model, plan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxswap.cheapen(model, plan, allow_larger=True)


def _flags(model):
    return {name: m.training for name, m in model.named_modules()}


@SETTINGS
@given(case=net_and_plan(), mode=st.sampled_from(["train", "eval", "mixed"]), seed=st.integers(0, 2**16))
def test_every_module_is_in_its_teachers_mode(case, mode, seed):
    net, plan = case
    teacher = build(net).train(mode == "train")
    if mode == "mixed":
        rng = random.Random(seed)
        for m in teacher.modules():
            m.training = rng.random() < 0.5
    flags = _flags(teacher)
    student = _cheapen(teacher, plan)
    assert _flags(teacher) == flags  # the user's model is untouched
    assert modes_mismatch(teacher, student) == [], plan
    if mode != "mixed":  # a uniform teacher gives a uniform student, every new module included
        assert {m.training for m in student.modules()} == {mode == "train"}


def _assert_all_reached(student, x):
    assert dead_parameters(student, x) == []
    # one train step: every parameter gets a gradient
    student.train()
    student(x).square().mean().backward()
    assert [n for n, p in student.named_parameters() if p.grad is None] == []
    # the saved state holds exactly the live tensors
    assert set(student.state_dict()) == {n for n, _ in student.named_parameters()} | {
        n for n, _ in student.named_buffers()}


@SETTINGS
@given(case=net_and_plan())
def test_every_weight_of_the_student_is_reached(case):
    net, plan = case
    _assert_all_reached(_cheapen(build(net), plan), torch.randn(net.input_shape()))


@SETTINGS
@given(net=NETS, data=st.data())
def test_every_weight_is_reached_on_every_block_kind(net, data):
    spec = data.draw(specs(net))
    try:
        student = _cheapen(build(net), spec)
    except fxswap.SpecError as exc:  # a spec that serves none of these blocks (attention under G)
        assert "appl" in str(exc), str(exc)
        return
    _assert_all_reached(student, torch.randn(net.input_shape()))


@SETTINGS
@given(case=net_and_plan())
def test_eval_forward_of_an_eval_students_changes_no_buffer(case):
    net, plan = case
    student = _cheapen(build(net).eval(), plan)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        a = student(torch.randn(net.input_shape(4)))
        b = student(torch.ones(net.input_shape(4)))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert a.shape == b.shape


def test_conv_level_student_of_eval_teacher_runs_like_eval():
    """The issue's numbers: the rewritten conv of an eval G student gave 3.0 (max abs) off its .eval() self."""
    teacher = fxswap.models.wrn(10, 1).eval()
    student = fxswap.cheapen(teacher, "G(N/4)")
    x = torch.randn(2, 3, 32, 32) * 3 + 1
    with torch.no_grad():
        as_returned = student(x)
        assert torch.equal(as_returned, student.eval()(x))


def test_mixed_flags_survive_a_branch_rewrite():
    """A fine-tuning teacher (training, BatchNorms frozen in eval): survivors keep their flag, the substitute
    takes that of what it replaced (its BatchNorms the frozen BNs' flag, the rest the convs')."""
    teacher = fxswap.models.wrn(10, 1).train()
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    student = _cheapen(teacher, {"layer2.*": "B(2)", "layer3.*": "G(N/4)"})
    assert modes_mismatch(teacher, student) == []
    substitute = list(student.layer2[0].substitute.modules())
    assert {m.training for m in substitute if isinstance(m, nn.BatchNorm2d)} == {False}
    assert {m.training for m in substitute if not isinstance(m, nn.BatchNorm2d)} == {True}
    assert {m.training for m in student.layer3[0].conv1.modules()} == {True}  # a conv's substitute: the conv's
    assert student.layer2[0].training and not student.layer2[0].bn1.training


def test_modes_mismatch_names_the_module():
    teacher = fxswap.models.wrn(10, 1).eval()
    student = fxswap.cheapen(teacher, "G(N/4)")
    student.layer1[0].conv1.bn.train()
    assert modes_mismatch(teacher, student) == ["layer1.0.conv1.bn: train, expected eval (replaces layer1.0.conv1)"]


class PartialResidual(nn.Module):
    """ReXNet's block: the residual adds to the first ``cin`` channels, the rest are concatenated."""

    def __init__(self, cin: int = 8, cout: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.cin = cin

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], dim=1)


class PartialNet(nn.Module):
    def __init__(self, with_full_block: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.partial = PartialResidual()
        self.full = PostAct(12) if with_full_block else None

    def forward(self, x):
        x = self.partial(self.stem(x))
        return self.full(x) if self.full is not None else x


class PostAct(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


def test_identity_that_frees_nothing_is_a_spec_error():
    teacher = PartialNet(with_full_block=False)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(fxswap.SpecError, match="free no parameter|nothing cheaper"):
        fxswap.cheapen(teacher, "I", example_input=x)
    with pytest.raises(fxswap.SpecError, match="would free no parameter.*still reaches the output"):
        fxswap.cheapen(teacher, {"partial": "I"}, example_input=x)


def test_whole_model_identity_keeps_a_partial_residual_and_says_so():
    teacher = PartialNet(with_full_block=True)
    with pytest.warns(UserWarning, match="partial"):
        student = fxswap.cheapen(teacher, "I", example_input=torch.randn(1, 3, 16, 16))
    assert type(student.partial) is PartialResidual  # kept as it is
    assert sum(p.numel() for p in student.parameters()) == sum(
        p.numel() for n, p in teacher.named_parameters() if not n.startswith("full."))


# the models the issue names (timm, random weights, 64×64 input)

timm = pytest.importorskip("timm")
X = torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("spec", ["B(2)", "I"])
def test_skresnet_leaves_no_dead_weights(spec):
    """SelectiveKernel's shape check (torch._assert on the stacked paths) kept every path conv alive."""
    teacher = timm.create_model("skresnet18").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = fxswap.cheapen(teacher, spec, example_input=X[:1])
    assert dead_parameters(student, X) == []
    assert modes_mismatch(teacher, student) == []
    live = sum(p.numel() for p in student.parameters())
    ratio = fxswap.compare(teacher, student, (3, 64, 64)).student.params / fxswap.count(teacher, (3, 64, 64)).params
    assert fxswap.count(student, (3, 64, 64)).params == live
    assert ratio < (0.3 if spec == "B(2)" else 0.1), ratio


def test_rexnet_identity_is_cheaper_or_an_error():
    """ReXNet's residual is partial (add on the first channels, concatenate the rest): ``I`` frees nothing."""
    teacher = timm.create_model("rexnet_100").eval()
    before = sum(p.numel() for p in teacher.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            student = fxswap.cheapen(teacher, "I", example_input=X[:1])
        except fxswap.SpecError as exc:
            assert "cheaper" in str(exc)
            return
    assert sum(p.numel() for p in student.parameters()) < before
    assert dead_parameters(student, X) == []
