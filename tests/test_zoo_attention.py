"""Attention branches that torch.fx sees as one opaque call (issue 8, item 5).

Two patterns: a module handing its own weights to a ``torch.fx.wrap``-ped
function (torchvision Swin's ``ShiftedWindowAttention``), and a leaf attention
module (timm's not-traceable attention, ``leaf_modules=``). In both, the add
``x + attn(norm(x))`` is a residual block of kind ``attention``; ``I`` removes
it, branch and conv specs name the specs that apply, and a whole-model spec
keeps it with one warning. Expected kinds come from each model's definition.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxswap


def window_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, heads: int):
    """Self-attention computed from weights passed in (as torchvision's ``shifted_window_attention``)."""
    b, n, c = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, proj_weight, proj_bias)


torch.fx.wrap("window_attention")


class WeightPassingAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        return window_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.heads)


class LeafAttention(nn.Module):
    """An attention module fx would trace; the tests keep it a leaf (as timm does its not-traceable ones)."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v)


class Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tokens(nn.Module):
    """Patch embedding, ``depth`` pre-norm transformer blocks, a mean-pooled head."""

    def __init__(self, attn, dim: int = 16, depth: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*[Block(dim, attn(dim)) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.blocks(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(x.mean(1))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


PATTERNS = {
    "weights passed to a wrapped function": (lambda: Tokens(WeightPassingAttention), ()),
    "leaf attention module": (lambda: Tokens(LeafAttention), (LeafAttention,)),
}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_opaque_attention_branch_is_an_attention_block(pattern):
    build, leaves = PATTERNS[pattern]
    blocks = fxswap.find_blocks(build(), leaf_modules=leaves)
    # each Block adds an attention branch, then an MLP branch
    assert [b.kind for b in blocks] == ["attention", "mlp"] * 2
    assert [b.name for b in blocks][:2] == ["blocks.0.add", "blocks.0.add_1"]
    attn = blocks[0]
    assert (attn.in_channels, attn.out_channels) == (16, 16)
    assert attn.region_problem and "blocks.0.attn" in attn.region_problem


@pytest.mark.parametrize("pattern", PATTERNS)
def test_identity_removes_the_opaque_attention_branch_exactly(pattern):
    build, leaves = PATTERNS[pattern]
    torch.manual_seed(0)
    model = build().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    student = fxswap.cheapen(model, {"blocks.*.add": "I"}, leaf_modules=leaves, example_input=x).eval()
    removed = sum(n_params(b.attn) + n_params(b.norm1) for b in model.blocks)
    assert n_params(student) == n_params(model) - removed
    # what is left: the teacher's own layers with each attention branch gone
    t = model.embed(x).flatten(2).transpose(1, 2)
    for b in model.blocks:
        t = t + b.mlp(b.norm2(t))
    with torch.no_grad():
        torch.testing.assert_close(student(x), model.head(t.mean(1)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_identity_on_the_whole_model_removes_attention_and_mlp_branches():
    model = Tokens(WeightPassingAttention).eval()
    student = fxswap.cheapen(model, "I", example_input=torch.randn(1, 3, 16, 16))
    assert n_params(student) == n_params(model.embed) + n_params(model.head)


def test_branch_and_conv_specs_name_the_specs_that_apply_to_an_opaque_attention_block():
    model = Tokens(WeightPassingAttention).eval()
    x = torch.randn(1, 3, 16, 16)
    for spec in ("B(2)", "G(N/4)", "S-2x2"):
        with pytest.raises(fxswap.SpecError, match=r"specs that apply to this attention block: S, I"):
            fxswap.cheapen(model, {"blocks.0.add": spec}, example_input=x)
    # one spec for the whole model keeps the attention blocks (one warning) and halves the MLPs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = fxswap.cheapen(model, "B(2)", example_input=x)
    kept = [str(w.message) for w in caught if "does not apply" in str(w.message)]
    assert len(kept) == 1 and "blocks.0.add" in kept[0] and "blocks.1.add" in kept[0]
    assert n_params(student) < n_params(model)
    assert n_params(student.blocks[0].attn) == n_params(model.blocks[0].attn)
    assert student(x).shape == (1, 10)


def test_weight_passing_module_is_traced_as_one_call():
    gm = fxswap.trace(Tokens(WeightPassingAttention))
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "blocks.0.attn" in calls and "blocks.0.attn.qkv" not in calls
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]  # no bare weights left in the graph


def test_a_wrapped_function_without_weights_does_not_make_a_leaf():
    class Pad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(window_pad(x))

    gm = fxswap.trace(nn.Sequential(Pad()))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0.lin"]


def window_pad(x):
    return F.pad(x, (0, 0))


torch.fx.wrap("window_pad")


def tiny_swin(v2: bool):
    from torchvision.models import swin_transformer as sw

    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    return sw.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4],
                              num_classes=10, **extra)


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_torchvision_swin_attention_is_a_block_and_identity_removes_it(v2):
    torch.manual_seed(0)
    model = tiny_swin(v2).eval()
    x = torch.randn(1, 3, 32, 32)
    blocks = fxswap.find_blocks(model)
    # each SwinTransformerBlock: x + stochastic_depth(attn(norm1(x))), then the same around its MLP
    assert [(b.name, b.kind) for b in blocks] == [
        ("features.1.0.add", "attention"), ("features.1.0.add_1", "mlp"),
        ("features.3.0.add", "attention"), ("features.3.0.add_1", "mlp")]
    student = fxswap.cheapen(model, {"*.add": "I"}, example_input=x)
    attn = [model.features[i][0] for i in (1, 3)]
    assert n_params(student) == n_params(model) - sum(n_params(b.attn) + n_params(b.norm1) for b in attn)
    assert student(x).shape == model(x).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert n_params(fxswap.cheapen(model, "B(2)", example_input=x)) < n_params(model)


class Mixer(nn.Module):
    """Attention by its code, not its name (as timm's GPSA / LiteMLA): ``@`` and a softmax."""

    def __init__(self, dim: int):
        super().__init__()
        self.qk = nn.Parameter(torch.randn(dim, dim) / dim)

    def forward(self, x):
        return torch.softmax(x @ self.qk @ x.transpose(-2, -1), dim=-1) @ x


class Scale(nn.Module):
    """A leaf with weights that computes no attention."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


@pytest.mark.parametrize("unit, kind", [(Mixer, "attention"), (Scale, "other")])
def test_kind_of_an_opaque_unit_comes_from_its_code(unit, kind):
    model = Tokens(unit, depth=1).eval()
    blocks = fxswap.find_blocks(model, leaf_modules=(unit,))
    assert [b.kind for b in blocks] == [kind, "mlp"]
    student = fxswap.cheapen(model, {"blocks.0.add": "I"}, leaf_modules=(unit,), example_input=torch.randn(1, 3, 8, 8))
    assert n_params(student) == n_params(model) - n_params(model.blocks[0].attn) - n_params(model.blocks[0].norm1)


def test_torchvision_vit_multihead_attention_is_a_block():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    blocks = fxswap.find_blocks(model)
    # each EncoderBlock: input + dropout(self_attention(ln_1(input))), then the same around its MLP
    assert [b.kind for b in blocks] == ["attention", "mlp"] * 2
    student = fxswap.cheapen(model, {"encoder.layers.*.add": "I"}, example_input=torch.randn(1, 3, 32, 32))
    layers = list(model.encoder.layers)
    assert n_params(student) == n_params(model) - sum(n_params(l.self_attention) + n_params(l.ln_1) for l in layers)


class PositionalEncoding(nn.Module):
    """A leaf with weights fed only the sizes of its input (as timm's ``PositionalEncodingFourier``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 64, dim))

    def forward(self, b: int, n: int):
        return self.table[:, :n].expand(b, -1, -1)


class WithPositions(Tokens):
    def __init__(self):
        super().__init__(LeafAttention, depth=1)
        self.pos = PositionalEncoding(16)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.pos(x.shape[0], x.shape[1])
        return self.head(self.blocks(x).mean(1))


def test_a_leaf_fed_only_the_input_sizes_is_no_branch():
    blocks = fxswap.find_blocks(WithPositions(), leaf_modules=(LeafAttention, PositionalEncoding))
    # the positional encoding's add is not a residual of the tokens; the block's two adds are
    assert [(b.name, b.kind) for b in blocks] == [("blocks.0.add", "attention"), ("blocks.0.add_1", "mlp")]


def test_count_attributes_each_of_two_adds_in_one_module_to_its_branch():
    model = Tokens(WeightPassingAttention).eval()
    rows = {b.name: b.params for b in fxswap.count(model, (3, 16, 16)).blocks}
    first = model.blocks[0]
    assert rows["blocks.0.add"] == n_params(first.attn) and rows["blocks.0.add_1"] == n_params(first.mlp)


@settings(max_examples=6, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), per_head=st.sampled_from([2, 4]), depth=st.integers(1, 3),
       removed=st.sets(st.integers(0, 2)), seed=st.integers(0, 2**16))
def test_identity_on_any_opaque_attention_blocks_leaves_exactly_the_rest(heads, per_head, depth, removed, seed):
    torch.manual_seed(seed)
    dim = heads * per_head
    model = Tokens(lambda d: WeightPassingAttention(d, heads), dim=dim, depth=depth).eval()
    removed = sorted(i for i in removed if i < depth)
    plan = {f"blocks.{i}.add": "I" for i in removed} or {"blocks.0.add": "S"}
    x = torch.randn(2, 3, 8, 8)
    student = fxswap.cheapen(model, plan, example_input=x).eval()
    t = model.embed(x).flatten(2).transpose(1, 2)
    for i, b in enumerate(model.blocks):
        if i not in removed:
            t = t + b.attn(b.norm1(t))
        t = t + b.mlp(b.norm2(t))
    with torch.no_grad():
        torch.testing.assert_close(student(x), model.head(t.mean(1)))
    assert n_params(model) - n_params(student) == sum(
        n_params(model.blocks[i].attn) + n_params(model.blocks[i].norm1) for i in removed)
