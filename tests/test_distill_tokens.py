"""Issue 18 class 5: distillation with transformer teachers (tokens (B, N, C), Swin's (B, H, W, C))."""
import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxswap
from fxswap import losses as L
from fxswap.distillation import Distiller
from fxswap.distillation.terms import TermInputs, get_term
from fxswap.errors import FxswapError


def _vit(img=48, dim=64, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=8, embed_dim=dim,
                             depth=2, num_heads=2, num_classes=10, **kw)


def _deit(img=48):
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=8, depth=2,
                             num_classes=10)


def _swin(img=64):
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img, window_size=2,
                             embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_classes=10)


MODELS = {"vit": (_vit, 48), "deit": (_deit, 48), "swin": (_swin, 64)}


def _step(distiller, size):
    opt = torch.optim.SGD(distiller.parameters(), lr=0.01)
    x, y = torch.randn(3, 3, size, size), torch.randint(0, 10, (3,))
    loss, logs = distiller(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss, logs


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("losses", [{"kd": 0.9, "hint": 1.0}, {"at": 1000.0}])
def test_a_transformer_teacher_distils_with_hint_and_at(name, losses):
    # built at a size that is not 32x32 (the old fixed example input), as timm's pretrained models are at 224
    build, size = MODELS[name]
    teacher = build()
    student = fxswap.cheapen(teacher, "B(2)")
    d = Distiller(teacher, student, losses)
    loss, logs = _step(d, size)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in logs.values())
    assert set(losses) <= set(logs) and float(logs[next(iter(losses))]) >= 0
    if "hint" in losses:  # same width: the connector is the identity, not a conv over the token axis
        assert all(isinstance(c.proj, nn.Identity) and c.channels_last for c in d.connectors["hint"])


def test_hint_connector_maps_the_channels_of_tokens_not_the_token_axis():
    teacher, student = _vit(dim=64), _vit(dim=32)
    d = Distiller(teacher, student, {"kd": 0.9, "hint": 1.0})
    (connector,) = d.connectors["hint"]
    assert isinstance(connector.proj, nn.Linear) and (connector.proj.in_features, connector.proj.out_features) == (32, 64)
    loss, _ = _step(d, 48)
    assert torch.isfinite(loss) and connector.proj.weight.grad is not None


def test_srrl_on_tokens_is_refused_naming_the_losses_that_apply():
    teacher = _vit()
    with pytest.raises(FxswapError, match="at, hint|features"):
        Distiller(teacher, fxswap.cheapen(teacher, "B(2)"), {"srrl": 1.0})


def test_connectors_are_sized_at_the_models_own_input():
    # fixed-size models that do not run at 32x32: the old default input ended in a raw AssertionError
    teacher = _vit(img=64)
    d = Distiller(teacher, fxswap.cheapen(teacher, "B(2)"), {"hint": 1.0})
    assert torch.isfinite(_step(d, 64)[0])


def test_a_model_that_runs_on_no_candidate_input_is_a_clear_error():
    teacher = _vit(img=64)
    with pytest.raises(FxswapError, match="pass example_input="):
        Distiller(teacher, fxswap.cheapen(teacher, "B(2)"), {"hint": 1.0}, example_input=torch.zeros(2, 3, 40, 40))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 9), cs=st.integers(1, 6), ct=st.integers(1, 6),
       beta=st.floats(0.1, 1000.0), seed=st.integers(0, 2**16))
def test_at_on_tokens_is_the_channel_mean_of_squares_over_tokens(b, n, cs, ct, beta, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, cs, generator=g), torch.randn(b, n, ct, generator=g)
    inputs = TermInputs(torch.zeros(b, 2), torch.zeros(b, 2), torch.zeros(b, dtype=torch.long), [s], [t], [True], [True])
    got = get_term("at").call(inputs, {"beta": beta}, None)

    def amap(x):  # Zagoruyko & Komodakis: mean over channels of squares, L2-normalised over positions (tokens)
        a = x.pow(2).mean(-1)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    expected = beta * 3 / 1 * (amap(s) - amap(t)).pow(2).mean()
    assert math.isclose(float(got), float(expected), rel_tol=1e-5, abs_tol=1e-6)


@settings(max_examples=15, deadline=None)
@given(cs=st.integers(1, 8), ct=st.integers(1, 8), shape=st.sampled_from([(2, 5), (2, 3, 4)]))
def test_a_channels_last_hint_connector_is_the_1x1_conv_on_the_channel_axis(cs, ct, shape):
    torch.manual_seed(cs * 10 + ct)
    tokens = L.HintConnector(cs, ct, channels_last=True)
    conv = L.HintConnector(cs, ct)
    if cs != ct:
        with torch.no_grad():
            conv.proj.weight.copy_(tokens.proj.weight[:, :, None, None])
            conv.proj.bias.copy_(tokens.proj.bias)
    x = torch.randn(*shape, cs)
    maps = x.reshape(1, -1, cs).movedim(-1, 1)[..., None]  # the same numbers as (1, cs, positions, 1)
    expected = conv(maps)[..., 0].movedim(1, -1).reshape(*shape, ct)
    torch.testing.assert_close(tokens(x), expected)
    with pytest.raises(FxswapError, match="channels_last"):
        tokens(torch.randn(2, 3, cs + 1))
