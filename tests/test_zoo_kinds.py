"""Transformers, MetaFormers and the crash classes of issue 8 on small timm models (random weights).

The contract checked for every (model, spec): ``cheapen`` returns a student
that runs at the teacher's output shape with no more parameters, or raises an
``FxswapError`` — never an exception from inside torch. Block kinds expected
per model are read from the model's definition (which modules add a branch
to their input), not from fxswap's output.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import fxswap

timm = pytest.importorskip("timm")

SPECS = ["G(N/4)", "B(2)", "BG(2,M/8)", "S-2x2", "I"]


def metaformer_tiny():
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    return MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 64), token_mixers=[SepConv, SepConv, Attention, Attention],
                      norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2, num_classes=10)


# id: (factory, input size, {kind: count expected from the definition}, specs that must give a cheaper student)
MODELS = {
    # a ViT: every block is an attention add and an MLP add
    "vit": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2), 32,
            {"attention": 2, "mlp": 2}, ["I", "B(2)"]),
    # MetaFormer (CAFormer): SepConv token mixer (inverted), attention, and an MLP after each
    "caformer": (metaformer_tiny, 64, {"inverted": 2, "attention": 2, "mlp": 4}, ["I", "B(2)"]),
    # efficientformer: KeyError getitem_N after a forward had filled the attention-bias cache
    "efficientformer": (lambda: timm.create_model("efficientformer_l1", depths=(1, 1, 1, 1)), 224, None, ["I"]),
    # levit: Linear-only residual branches (attention + MLP), no conv
    "levit": (lambda: timm.create_model("levit_128s", depth=(1, 1, 1)), 224, None, ["I"]),
    # csatv2: NaN stride (global pooling inside a branch)
    "csatv2": (lambda: timm.create_model("csatv2"), 64, None, ["S-2x2"]),
    # FasterNet: the partial conv convolves a channel slice
    "fasternet": (lambda: timm.create_model("fasternet_t0"), 64, None, ["I", "B(2)", "S-2x2", "G(N/4)"]),
    # InceptionNeXt: channel split into 1×k / k×1 / square branches (S-2x2 on 1×k: dilation 0 before)
    "inception_next": (lambda: timm.create_model("inception_next_atto"), 64, None, ["I", "B(2)", "S-2x2"]),
    # LCNetV2: ConvNormAct inside nested re-parameterisable adds
    "lcnetv2": (lambda: timm.create_model("lcnetv2_small"), 64, None, ["S-2x2"]),
    # NF-RegNet: timm registers its block as not traceable (for skipinit's mul_), its convs standardise their
    # weights, and the branch is scaled by a constant before the add
    "nf_regnet": (lambda: timm.create_model("nf_regnet_b0"), 64, {"bottleneck": 16}, ["I", "B(2)", "BG(2,M/8)"]),
    # ResNet-26 + ViT hybrid: "same"-padded StdConv2dSame under G / S-2x2
    "r26_vit": (lambda: timm.create_model("vit_small_r26_s32_224", img_size=64, depth=2), 64, None,
                ["I", "G(N/4)", "S-2x2", "B(2)"]),
}

_cache: dict = {}


def model_of(key):
    if key not in _cache:
        _cache.clear()
        torch.manual_seed(0)
        _cache[key] = MODELS[key][0]().eval()
    return _cache[key]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


SLOW = {"efficientformer", "csatv2", "inception_next", "r26_vit"}  # 224 inputs or > 10 M parameters


@pytest.mark.parametrize("key", [pytest.param(k, marks=[pytest.mark.slow] if k in SLOW else []) for k in MODELS])
def test_every_spec_works_or_is_a_clear_error(key):
    model = model_of(key)
    _, size, kinds, must = MODELS[key]
    x = torch.randn(1, 3, size, size)
    blocks = fxswap.find_blocks(model)
    if kinds is not None:
        got = {}
        for b in blocks:
            got[b.kind] = got.get(b.kind, 0) + 1
        assert got == kinds
    with torch.no_grad():
        want = model(x).shape
    for spec in SPECS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                student = fxswap.cheapen(model, spec, example_input=x).eval()
        except fxswap.FxswapError as exc:
            assert spec not in must, (spec, str(exc))
            continue
        with torch.no_grad():
            assert student(x).shape == want, spec
        if spec in must:
            assert n_params(student) < n_params(model), spec
        else:
            assert n_params(student) <= n_params(model), spec


def test_attention_blocks_refuse_branch_specs_listing_what_applies():
    model = model_of("vit")
    attn = [b.name for b in fxswap.find_blocks(model) if b.kind == "attention"]
    with pytest.raises(fxswap.SpecError) as err:
        fxswap.cheapen(model, {attn[0]: "B(2)"})
    assert "attention" in str(err.value) and "S, I" in str(err.value)


def test_vit_b2_halves_mlp_hidden_width_keeps_attention_with_one_warning():
    model = model_of("vit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = fxswap.cheapen(model, "B(2)", example_input=torch.randn(1, 3, 32, 32))
    kept = [str(w.message) for w in caught if "kept as" in str(w.message)]
    assert len(kept) == 1 and "attention" in kept[0]
    hidden = model.blocks[0].mlp.fc1.out_features  # 4 × 192 in the definition
    sub = [m for n, m in student.named_modules() if n.endswith("substitute")]
    assert sub and all(s.fc1.out_features == hidden // 2 for s in sub)
    assert student.blocks[0].attn.qkv.weight.shape == model.blocks[0].attn.qkv.weight.shape


@pytest.mark.slow
def test_trace_does_not_leave_proxies_in_module_caches():
    # efficientformer caches attention biases in a dict during eval forward; tracing must not fill it
    model = model_of("efficientformer")
    fxswap.find_blocks(model)
    caches = [v for m in model.modules() for v in vars(m).values() if type(v) is dict]
    assert not any(isinstance(x, torch.fx.Proxy) for c in caches for x in c.values())
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    fxswap.cheapen(model, "I")  # the KeyError 'getitem_N' came here


def test_identity_on_beit_and_cait_blocks():
    # BEiT's blocks take a bias computed by the model (their ModuleList parent has no forward);
    # CaiT's class-attention blocks split tokens (a Linear on a slice): both found, both take I
    x = torch.randn(1, 3, 32, 32)
    for model in (timm.create_model("beit_base_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=2),
                  timm.create_model("cait_xxs24_224", img_size=32, depth=2, depth_token_only=1)):
        model.eval()
        student = fxswap.cheapen(model, "I", example_input=x).eval()
        with torch.no_grad():
            assert student(x).shape == model(x).shape
        assert n_params(student) < n_params(model)
