"""The patterns behind the zoo sweep's failures, each as a tiny hand-built model (issue 8).

Each model reproduces one structure a timm model has (named in the test), and
the test checks the contract: ``cheapen`` gives a student that runs at the
teacher's output shape with fewer parameters, or a clear ``SpecError`` in the
user's terms. Expected shapes and widths come from the models' definitions.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxswap
from fxswap.testing import SharedConvBlocks
from fxswap import SpecError, cheapen, find_blocks


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def cheaper_and_runs(model, plan, x, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = cheapen(model, plan, example_input=x, **kw).eval()
    with torch.no_grad():
        assert student(x).shape == model.eval()(x).shape, plan
    assert n_params(student) < n_params(model), plan
    return student, [str(w.message) for w in caught]


SharedConv = SharedConvBlocks  # one conv module called by two residual blocks (``conv@1``)


def test_module_called_twice_is_rewritten_in_its_caller():
    blocks = find_blocks(SharedConv())
    assert [b.region_scope for b in blocks] == ["", ""]  # not "conv@1"
    for spec in ("B(2)", "I"):
        cheaper_and_runs(SharedConv(), spec, torch.randn(1, 8, 8, 8))


class RepBlock(nn.Module):
    """MobileOne/FastViT's re-parameterisable block: 1×1 conv-BN + BN identity + k×k conv-BN, summed in one forward."""

    def __init__(self, c=16):
        super().__init__()
        self.scale = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)
        self.kxk = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.scale(x) + self.identity(x)
        out += self.kxk(x)
        return torch.relu(out)


class RepNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(RepBlock(), RepBlock())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_identity_on_two_adds_in_one_forward():
    x = torch.randn(1, 3, 16, 16)
    names = [b.name for b in find_blocks(RepNet())]
    assert names == ["blocks.0.add", "blocks.0.add_1", "blocks.1.add", "blocks.1.add_1"]
    student, _ = cheaper_and_runs(RepNet(), "I", x)
    # both branches with convolutions are gone; the BN identity path stays
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in student.modules())
    cheaper_and_runs(RepNet(), {"blocks.0.add_1": "I"}, x)


class RepVGGBlock(nn.Module):
    """RepVGG: 3×3 conv-BN + 1×1 conv-BN + BN identity, summed."""

    def __init__(self, c=16):
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.dense(x) + self.one(x) + self.identity(x))


def test_branch_specs_replace_summed_parallel_convs_up_to_their_sum():
    x = torch.randn(1, 16, 8, 8)
    blocks = find_blocks(RepVGGBlock())
    outer = blocks[-1]
    assert set(outer.convs) == {"dense.0", "one.0"} and outer.shortcut == "projection"
    student, _ = cheaper_and_runs(RepVGGBlock(), {outer.name: "B(2)"}, x)
    names = {n for n, _ in student.named_modules()}
    assert "identity" in names and not {"dense", "one"} & names  # both conv paths replaced, the BN shortcut kept
    for spec in ("B(2)", "I", "S-2x2"):
        cheaper_and_runs(RepVGGBlock(), spec, x)


class GhostBranch(nn.Module):
    """GhostNet's ghost module: a primary conv, a cheap depthwise conv on its output, both concatenated (the
    primary output is used after the last norm, by the concat)."""

    def __init__(self, c=16):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(c, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2, bias=False),
                                   nn.BatchNorm2d(c // 2))

    def forward(self, x):
        y = self.primary(x)
        return x + torch.cat([y, self.cheap(y)], 1)


def test_branch_that_ends_in_a_concat_is_replaced_up_to_the_concat():
    block = find_blocks(GhostBranch())[0]
    assert block.region_problem is None
    student, warned = cheaper_and_runs(GhostBranch(), "B(2)", torch.randn(1, 16, 8, 8))
    assert not any("kept as they are" in w for w in warned), warned


class AddInChild(nn.Module):
    """CoaT's factorised attention: the add runs in a child module that gets the branch as an argument."""

    class Join(nn.Module):
        def forward(self, x, y):
            return x + y

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.join = self.Join()

    def forward(self, x):
        return self.join(self.conv(x), x)


def test_identity_when_the_add_runs_in_another_module_than_its_branch():
    student, _ = cheaper_and_runs(AddInChild(), "I", torch.randn(1, 8, 8, 8))
    x = torch.randn(1, 8, 8, 8)
    assert torch.equal(student(x), x)  # only the shortcut is left


class PaddedEvenKernel(nn.Module):
    """cpubone's FusedMBConv: ZeroPad2d((1, 0, 1, 0)) then a 2×2 conv, BN, act, 1×1 conv, BN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.spatial = nn.Conv2d(32, 64, 2, bias=False)
        self.bn1, self.act = nn.BatchNorm2d(64), nn.Hardswish()
        self.point = nn.Conv2d(64, 32, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)

    def forward(self, x):
        x = self.stem(x)
        return x + self.bn2(self.point(self.act(self.bn1(self.spatial(self.pad(x))))))


def test_even_kernel_after_uneven_pad_keeps_the_map_size():
    x = torch.randn(1, 3, 8, 8)
    block = find_blocks(PaddedEvenKernel(), example_input=x)[0]
    assert block.kernel_size == 2
    student, warned = cheaper_and_runs(PaddedEvenKernel(), "B(2)", x)
    assert not any("kept as they are" in w for w in warned), warned


class LayerScaledLinearMLP(nn.Module):
    """EdgeNeXt's conv block: depthwise conv, permute to channels-last, LN, Linear MLP, layer scale
    ``gamma * x``, and only then the permute back."""

    def __init__(self, c=16):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-2))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(self.act(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


def test_channels_last_branch_with_layer_scale_before_the_permute_back():
    x = torch.randn(1, 16, 8, 8)
    block = find_blocks(LayerScaledLinearMLP(), example_input=x)[0]
    assert block.kind == "mixer" and block.width == 64
    student, warned = cheaper_and_runs(LayerScaledLinearMLP(), "B(2)", x)
    assert not any("kept as they are" in w for w in warned), warned


class OneSmallOneWide(nn.Module):
    """Two blocks: G(2) makes the 64→16 conv larger (grouped 64→64 + 1×1) and the 64→64 one cheaper."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(64, 16, 3, padding=1, bias=False)
        self.b = nn.Conv2d(16, 64, 1, bias=False)
        self.c = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.d = nn.Conv2d(64, 64, 3, padding=1, bias=False)

    def forward(self, x):
        x = x + self.b(torch.relu(self.a(x)))
        return x + self.d(torch.relu(self.c(x)))


def test_whole_model_spec_keeps_the_blocks_it_would_make_larger():
    x = torch.randn(1, 64, 8, 8)
    student, warned = cheaper_and_runs(OneSmallOneWide(), "G(2)", x)
    kept = [w for w in warned if "kept as they are" in w]
    assert len(kept) == 1 and "add (would be larger: 9,216 -> " in kept[0] and "add_1" not in kept[0]
    assert isinstance(student.a, nn.Conv2d) and not isinstance(student.c, nn.Conv2d)
    # a plan that names the blocks gets an error instead, and allow_larger=True accepts the larger block
    with pytest.raises(SpecError, match="larger"):
        cheapen(OneSmallOneWide(), {"*": "G(2)"})
    bigger = cheapen(OneSmallOneWide(), {"*": "G(2)"}, allow_larger=True)
    assert not isinstance(bigger.a, nn.Conv2d)


class ListFuse(nn.Module):
    """HRNet's HighResolutionModule: its forward takes the list its parent builds and assigns into it, so it
    does not trace on its own (``'Proxy' object does not support item assignment``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))

    def forward(self, xs):
        xs[0] = xs[0] + self.conv(xs[1])
        return xs


class ListNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuse = ListFuse()

    def forward(self, x):
        return self.fuse([x, torch.relu(x)])[0]


def test_a_block_whose_module_does_not_trace_alone_is_rewritten_from_its_parent():
    with pytest.raises(fxswap.TraceError):
        fxswap.trace(ListFuse())
    for spec in ("I", "B(2)"):
        cheaper_and_runs(ListNet(), spec, torch.randn(1, 8, 8, 8))


class OptionalMask(nn.Module):
    """Hiera: ``forward(x, mask=None)`` with ``if mask is not None`` (a traced proxy would take that branch)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x, mask=None):
        if mask is not None:
            x = x * mask.view(1, 1, 8, 8)
        return x + self.conv(torch.relu(x))


def test_optional_arguments_are_traced_as_the_model_runs_without_them():
    x = torch.randn(1, 8, 8, 8)
    model = OptionalMask()
    assert torch.equal(fxswap.trace(model)(x), model(x))
    for spec in ("I", "B(2)", "G(2)"):
        cheaper_and_runs(OptionalMask(), spec, x)


class MaskedBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.attn = nn.Linear(c, c)

    def forward(self, x, mask=None):
        a = self.attn(x)
        if mask is not None:
            a = a * mask
        x = x + a
        return x + self.fc2(torch.relu(self.fc1(x)))


class LoopNet(nn.Module):
    """NaFlexViT: the model's own forward loops over an ``nn.Sequential`` of blocks, passing ``attn_mask=``
    (so the Sequential's forward never runs, and a retraced block must keep its ``mask`` argument)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(MaskedBlock(), MaskedBlock())

    def forward(self, x, mask=None):
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return x


def test_blocks_called_in_a_loop_with_keyword_arguments_are_rewritten():
    x = torch.randn(2, 5, 8)
    for spec in ("I", "B(2)"):
        cheaper_and_runs(LoopNet(), spec, x)


class StandardisedConv(nn.Conv2d):
    """timm's ScaledStdConv2d: standardises its weight, then F.conv2d (a conv, though not torch.nn's own)."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class NormFreeBlock(nn.Module):
    """NF-ResNet: pre-activation scaled by beta, no norms, the branch scaled by a constant alpha before the add."""

    def __init__(self, c=16, alpha=0.2, beta=1.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.conv1 = StandardisedConv(c, c, 3, padding=1)
        self.conv2 = StandardisedConv(c, c, 3, padding=1)

    def forward(self, x):
        out = torch.relu(x) * self.beta
        out = self.conv2(torch.relu(self.conv1(out)))
        return out * self.alpha + x


def test_norm_free_block_with_standardised_convs_and_a_scaled_branch():
    block = find_blocks(NormFreeBlock())[0]
    assert block.kind == "basic" and block.convs == ("conv1", "conv2") and block.region_problem is None
    for spec in ("I", "B(2)", "G(4)", "S-2x2"):
        cheaper_and_runs(NormFreeBlock(), spec, torch.randn(1, 16, 8, 8))


def test_bg_on_a_mixer_host_groups_its_kxk_conv_by_m_over_d():
    # M = hidden 64 // 2 = 32, M/8 = 4 groups on the 16-channel k×k conv (depthwise: 16 groups, in the teacher)
    student, _ = cheaper_and_runs(LayerScaledLinearMLP(), "BG(2,M/8)", torch.randn(1, 16, 8, 8))
    spatial = [m for m in student.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [(m.in_channels, m.groups) for m in spatial] == [(16, 4)]
    hidden = [m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert hidden[0] == 32
