"""Zoo tests: find_blocks and every spec form on timm / torchvision models (random weights, small inputs).

Expected block counts come from each model's own definition (layer lengths,
modules with a residual connection), not from fxswap's output. Families whose
k×k convs are all grouped or depthwise (ResNeXt, RegNet, MobileNet,
EfficientNet, ConvNeXt) get a "changes nothing" warning for ``G``: it only
rewrites full convs. See benchmarks/zoo_coverage.py and docs/zoo.md for a
wider survey.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxswap

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

ALWAYS = ["S-2x2", "B(2)", "BG(2,M/4)", "I"]  # valid on every family below
X = torch.randn(1, 3, 64, 64)


def _layers(prefix="layer", n=4):
    return lambda m: sum(len(getattr(m, f"{prefix}{i}")) for i in range(1, n + 1))


def _count(cls_name: str, flag: str | None = None):
    def count(m):
        return sum(type(x).__name__ == cls_name and (flag is None or bool(getattr(x, flag))) for x in m.modules())
    return count


def _skips(m):
    """timm efficientnet-family blocks with a residual add."""
    return sum(bool(getattr(x, "has_skip", False)) for x in m.modules())


def tv(name, **kw):
    return lambda: torchvision.models.get_model(name, weights=None, **kw)


def tm(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, **kw)


# id: (factory, expected block count from the definition, G behaviour: "full" | "grouped" | "depthwise", slow)
ZOO = {
    "tv_resnet18": (tv("resnet18"), _layers(), "full", False),
    "tv_resnet50": (tv("resnet50"), _layers(), "full", True),
    "tv_resnext50_32x4d": (tv("resnext50_32x4d"), _layers(), "grouped", True),
    "tv_wide_resnet50_2": (tv("wide_resnet50_2"), _layers(), "full", True),
    "tv_regnet_x_400mf": (tv("regnet_x_400mf"), _count("ResBottleneckBlock"), "grouped", False),
    "tv_regnet_y_400mf": (tv("regnet_y_400mf"), _count("ResBottleneckBlock"), "grouped", False),
    "tv_mobilenet_v2": (tv("mobilenet_v2"), _count("InvertedResidual", "use_res_connect"), "depthwise", False),
    "tv_mobilenet_v3_small": (tv("mobilenet_v3_small"), _count("InvertedResidual", "use_res_connect"), "depthwise", False),
    "tv_efficientnet_b0": (tv("efficientnet_b0"), _count("MBConv", "use_res_connect"), "depthwise", False),
    "tv_convnext_tiny": (tv("convnext_tiny"), _count("CNBlock"), "depthwise", True),
    "tv_mnasnet0_5": (tv("mnasnet0_5"), _count("_InvertedResidual", "apply_residual"), "depthwise", False),
    "timm_resnet10t": (tm("resnet10t"), _layers(), "full", False),
    "timm_resnet18": (tm("resnet18"), _layers(), "full", False),
    "timm_resnet26d": (tm("resnet26d"), _layers(), "full", False),
    "timm_seresnext26d_32x4d": (tm("seresnext26d_32x4d"), _layers(), "grouped", False),
    "timm_ecaresnet26t": (tm("ecaresnet26t"), _layers(), "full", False),
    "timm_skresnet18": (tm("skresnet18"), _layers(), "full", False),
    "timm_resnest14d": (tm("resnest14d"), _layers(), "grouped", False),
    "timm_regnetx_002": (tm("regnetx_002"), _count("Bottleneck"), "grouped", False),
    "timm_regnety_002": (tm("regnety_002"), _count("Bottleneck"), "grouped", False),
    "timm_mobilenetv3_small_050": (tm("mobilenetv3_small_050"), _skips, "depthwise", False),
    "timm_mobilenetv2_050": (tm("mobilenetv2_050"), _skips, "depthwise", False),
    "timm_efficientnet_b0": (tm("efficientnet_b0"), _skips, "depthwise", False),
    "timm_mixnet_s": (tm("mixnet_s"), _skips, "depthwise", False),
    "timm_convnext_atto": (tm("convnext_atto"), _count("ConvNeXtBlock"), "depthwise", False),
    "timm_tinynet_e": (tm("tinynet_e"), _skips, "depthwise", False),
}

PARAMS = [pytest.param(k, id=k, marks=[pytest.mark.slow] if v[3] else []) for k, v in ZOO.items()]
_cache: dict[str, nn.Module] = {}


def model_of(key: str) -> nn.Module:
    if key not in _cache:
        torch.manual_seed(0)
        _cache.clear()  # one model alive at a time
        _cache[key] = ZOO[key][0]().eval()
    return _cache[key]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def cheapen_and_run(model, spec, expect_warning=False):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = fxswap.cheapen(model, spec).eval()
    nothing = [w for w in caught if "changes nothing" in str(w.message)]
    assert bool(nothing) == expect_warning, (spec, [str(w.message) for w in caught])
    with torch.no_grad():
        assert student(X).shape == model(X).shape, spec
    return student


@pytest.mark.parametrize("key", PARAMS)
def test_find_blocks_count(key):
    model = model_of(key)
    blocks = fxswap.find_blocks(model)
    assert len(blocks) == ZOO[key][1](model)
    assert len({b.name for b in blocks}) == len(blocks)
    assert all(b.convs for b in blocks)


CLEAR = ("larger", "applies to none", "does not apply")  # the SpecErrors a whole-model spec may end in


@pytest.mark.parametrize("key", PARAMS)
def test_branch_and_dilated_specs(key):
    model = model_of(key)
    for spec in ALWAYS:
        try:
            student = cheapen_and_run(model, spec)
        except fxswap.SpecError as exc:
            # depthwise-separable or ConvNeXt-style blocks: BG does not serve them, and B(2) on a block with a
            # single pointwise conv costs as much as before; fxswap says so instead of returning a larger student
            assert ZOO[key][2] == "depthwise" and spec != "I" and any(c in str(exc) for c in CLEAR), (spec, exc)
            continue
        assert n_params(student) <= n_params(model), spec
        if spec == "I" or (spec == "B(2)" and ZOO[key][2] != "depthwise"):
            assert n_params(student) < n_params(model), spec


@pytest.mark.parametrize("key", PARAMS)
def test_grouped_spec(key):
    model = model_of(key)
    kind = ZOO[key][2]
    if kind == "full":
        for spec in ("G(2)", "G(N/4)"):
            assert n_params(cheapen_and_run(model, spec)) < n_params(model), spec
        # a group count that does not divide the widths: an error with strict=True ...
        with pytest.raises(fxswap.SpecError, match="groups do not divide"):
            fxswap.cheapen(model, "G(7)", strict=True)
        # ... else the nearest divisor (8 for widths 64..512), with one warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s7 = fxswap.cheapen(model, "G(7)")
        assert len([w for w in caught if "nearest" in str(w.message)]) == 1
        assert n_params(s7) == n_params(fxswap.cheapen(model, "G(8)"))
    elif kind == "grouped":
        # the k×k convs of these blocks are grouped already (ResNeXt, RegNet, ResNeSt): at least
        # one block has no full conv for G to rewrite, and fxswap says so
        cheapen_and_run(model, "G(2)", expect_warning=True)
    else:
        # depthwise-only branches: G changes nothing, warns, and the student has the teacher's parameters
        student = cheapen_and_run(model, "G(2)", expect_warning=True)
        assert n_params(student) == n_params(model)


@pytest.mark.parametrize("key", ["tv_resnet18", "timm_resnet10t"])
def test_widths_not_divisible(key):
    model = model_of(key)
    # B(3): M = N // 3, floored as Moonshine's reference code does (64 -> 21)
    s3 = cheapen_and_run(model, "B(3)")
    assert n_params(s3) < n_params(model)
    assert s3.layer1[0].substitute.down.out_channels == 64 // 3
    with pytest.raises(fxswap.SpecError, match="groups do not divide"):
        fxswap.cheapen(model, "BG(2,5)", strict=True)
    with pytest.raises(fxswap.SpecError, match=r"groups = N/3 do not divide"):
        fxswap.cheapen(model, "G(N/3)", strict=True)


def test_train_mode_backward_on_mixed_plan():
    model = model_of("timm_resnet18")
    student = fxswap.cheapen(model, {"layer1.*": "B(2)", "layer2.*": "G(N/4)", "layer3.*": "I", "layer4.*": "S-2x2"})
    student.train()
    out = student(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert all(p.grad is not None for p in student.parameters())
