"""Issue 18 class 8: a model the user traced with plain torch.fx.symbolic_trace still works with fxswap."""
import warnings

import pytest
import timm
import torch
import torch.fx as fx
from torch import nn

import fxswap
from fxswap.errors import TraceError


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()], \
        [n for n, _ in model.named_modules()]


def test_levit_traced_by_the_user_cheapens_and_its_caches_are_cleaned():
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", depth=(1, 1, 1), pretrained=False).eval()
    try:
        torch.fx.symbolic_trace(model)  # what a user does; it fills attention_bias_cache with proxies
    except Exception:
        pass
    poisoned = [m.attention_bias_cache for m in model.modules() if getattr(m, "attention_bias_cache", None)]
    assert poisoned and all(isinstance(v, fx.Proxy) for cache in poisoned for v in cache.values())
    before = _state(model)
    with pytest.warns(UserWarning, match=r"removed torch.fx proxies.*attention_bias_cache"):
        student = fxswap.cheapen(model, "I")
    params, flags, tree = before
    assert [m.training for m in model.modules()] == flags and [n for n, _ in model.named_modules()] == tree
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)  # the user's own model works again in eval
        assert torch.isfinite(student.eval()(x)).all()
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())


class _DictCache(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.cache = {}

    def forward(self, x):
        if "scale" not in self.cache:  # memoised in eval, like timm's attention_bias_cache
            self.cache["scale"] = self.conv.weight.abs().mean()
        return x + self.conv(x) * self.cache["scale"]


class _AttributeMemo(nn.Module):
    """Memoises in a plain attribute, not a dict: fxswap cannot know what it means, so it says what happened."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.scale = None

    def forward(self, x):
        if self.scale is None:
            self.scale = self.conv.weight.abs().mean()
        return x + self.conv(x) * torch.sigmoid(self.scale)


def test_a_dict_cache_holding_proxies_is_cleaned_with_a_warning_and_traces():
    model = _DictCache().eval()
    fx.symbolic_trace(model)
    assert isinstance(model.cache["scale"], fx.Proxy)
    with pytest.warns(UserWarning, match="cache"):
        gm = fxswap.trace(model)
    assert model.cache == {}  # fxswap's own trace leaves nothing behind either
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_a_proxy_in_a_plain_attribute_is_a_clear_trace_error():
    model = _AttributeMemo().eval()
    fx.symbolic_trace(model)
    assert isinstance(model.scale, fx.Proxy)
    with pytest.raises(TraceError, match=r"proxies from an earlier trace .* in scale.*Fix: rebuild the model"):
        fxswap.trace(model)


def test_a_clean_model_gets_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxswap.trace(_DictCache().eval())
