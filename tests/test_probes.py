import pytest
import torch
from torch import nn

import fxswap
from fxswap.models import cifar_resnet, wrn
from fxswap.sections import split_sections


def hooked(model, names, x):
    """Independent reference: forward hooks on the named modules."""
    got = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, got


@pytest.mark.parametrize("make", [lambda: wrn(16, 1), lambda: cifar_resnet(20)])
def test_probe_equals_forward_hooks(make):
    m = make().eval()
    x = torch.randn(2, 3, 32, 32)
    names = [b.name for b in fxswap.find_blocks(m)]
    out, feats = fxswap.probe(m, "blocks").eval()(x)
    ref_out, ref = hooked(m, names, x)
    assert torch.equal(out, ref_out)
    assert list(feats) == names
    for n in names:
        assert torch.equal(feats[n], ref[n])


def test_stage_and_classifier_points():
    m = wrn(16, 2).eval()
    x = torch.randn(2, 3, 32, 32)
    out, f = fxswap.probe(m, ["stages", "features", "penultimate", "logits"])(x)
    assert list(f) == ["layer1.1", "layer2.1", "layer3.1", "features", "penultimate", "logits"]
    assert torch.equal(f["logits"], out)
    assert torch.allclose(m.fc(f["penultimate"]), out)
    assert torch.allclose(f["features"].mean((2, 3)), f["penultimate"])


def test_probe_keeps_train_eval_behaviour_and_shares_parameters():
    m = wrn(16, 1, dropout=0.5)
    p = fxswap.probe(m, "stages")
    x = torch.randn(2, 3, 32, 32)
    p.eval()
    assert torch.equal(p(x)[0], p(x)[0])
    p.train()
    assert not torch.equal(p(x)[0], p(x)[0])
    assert {id(t) for t in p.parameters()} == {id(t) for t in m.parameters()}


def test_unknown_point_is_a_clear_error():
    with pytest.raises(fxswap.FxswapError, match="matches no block"):
        fxswap.probe(wrn(10, 1), "layr9.*")


def test_probe_node_qualname_and_export():
    m = cifar_resnet(20).eval()
    p = fxswap.probe(m, ["layer2.0.conv2"]).eval()
    x = torch.randn(2, 3, 32, 32)
    out, f = p(x)
    _, ref = hooked(m, ["layer2.0.conv2"], x)
    assert torch.equal(f["layer2.0.conv2"], ref["layer2.0.conv2"])
    ep = torch.export.export(p, (x,))
    e_out, e_f = ep.module()(x)
    assert torch.allclose(e_f["layer2.0.conv2"], f["layer2.0.conv2"], atol=1e-5)


@pytest.mark.slow
def test_probe_under_torch_compile():
    m = wrn(10, 1).eval()
    p = fxswap.probe(m, "stages").eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(p, backend="eager")
    out, f = compiled(x)
    ref_out, ref_f = p(x)
    assert torch.allclose(out, ref_out) and all(torch.allclose(f[k], ref_f[k]) for k in ref_f)


def test_split_sections_compose_to_model():
    m = cifar_resnet(20).eval()
    secs = split_sections(m, ["layer1.2", "layer2.2"])
    x = torch.randn(2, 3, 32, 32)
    y = x
    for s in secs:
        y = s(y)
    assert torch.allclose(y, m(x), atol=1e-6)
    _, ref = hooked(m, ["layer1.2"], x)
    assert torch.equal(secs[0](x), ref["layer1.2"])


@pytest.mark.parametrize("call", [fxswap.probe, split_sections], ids=["probe", "split_sections"])
@pytest.mark.parametrize("model", ["wrn-16-1", None, 3, torch.randn(2), [nn.Conv2d(3, 8, 3)]],
                         ids=["name", "None", "int", "tensor", "list"])
def test_non_module_model_is_a_clear_error(call, model):
    with pytest.raises(fxswap.FxswapError, match=r"needs a torch\.nn\.Module.*got " + type(model).__name__):
        call(model, ["layer1.0"])


@pytest.mark.parametrize("call", [fxswap.probe, split_sections], ids=["probe", "split_sections"])
@pytest.mark.parametrize("points", [None, 3, [], ["layer1.0", 2]], ids=["None", "int", "empty", "mixed"])
def test_points_that_are_not_selectors_are_a_clear_error(call, points):
    with pytest.raises(fxswap.FxswapError, match="point selectors: a string or a non-empty list of strings"):
        call(wrn(10, 1), points)


def test_split_sections_takes_one_point_as_a_string():
    head, tail = split_sections(wrn(10, 1).eval(), "layer2.0")
    assert tail(head(torch.randn(1, 3, 32, 32))).shape == (1, 10)
