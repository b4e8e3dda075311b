"""Tests of fxswap.losses: each loss against an independent numpy/loop computation."""

from __future__ import annotations

import doctest
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxswap.losses as L
from fxswap.errors import FxswapError
from fxswap.losses import (
    LOSSES,
    HintConnector,
    SRRLConnector,
    attention_map,
    attention_transfer,
    get_loss,
    hint_loss,
    kd_loss,
    lit_ir_loss,
    lit_kd_loss,
    lit_loss,
    mimic_loss,
    register_loss,
    srrl_loss,
    srrl_losses,
)

HYP = settings(max_examples=40, deadline=None)


def _f(x) -> float:
    """float() of a tensor (detached) or a number."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ---------------------------------------------------------------------------
# independent references (plain numpy, explicit loops)
# ---------------------------------------------------------------------------


def ref_attention_map(x: np.ndarray) -> np.ndarray:
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = np.zeros((n, flat.shape[2]))
    for b in range(n):
        for p in range(flat.shape[2]):
            out[b, p] = sum(flat[b, j, p] ** 2 for j in range(c)) / c
        norm = math.sqrt(sum(v * v for v in out[b]))
        out[b] /= max(norm, 1e-12)
    return out


def ref_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_ce(s: np.ndarray, y: np.ndarray) -> float:
    return _f(np.mean([-math.log(ref_softmax(s[b])[y[b]]) for b in range(len(y))]))


def ref_kl_elements(s: np.ndarray, t: np.ndarray, T: float) -> np.ndarray:
    out = np.zeros_like(s)
    for b in range(s.shape[0]):
        ps, pt = ref_softmax(s[b] / T), ref_softmax(t[b] / T)
        for k in range(s.shape[1]):
            out[b, k] = pt[k] * (math.log(pt[k]) - math.log(ps[k]))
    return out


# ---------------------------------------------------------------------------
# attention transfer
# ---------------------------------------------------------------------------


def test_attention_map_matches_loops():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 2)
    np.testing.assert_allclose(_np(attention_map(x)), ref_attention_map(_np(x)), rtol=1e-5, atol=1e-7)
    assert attention_map(x).shape == (3, 10)


def test_attention_transfer_matches_reference_weighting():
    torch.manual_seed(1)
    s = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    t = [torch.randn(2, 6, 4, 4), torch.randn(2, 7, 2, 2)]  # channel counts may differ
    beta = 1000.0
    expected = 0.0
    for a, b in zip(s, t):
        d = ref_attention_map(_np(a)) - ref_attention_map(_np(b))
        expected += _f(np.mean(d**2))
    expected *= beta * 3 / len(s)
    got = attention_transfer(s, t, beta=beta)
    assert got.shape == ()
    assert _f(got) == pytest.approx(expected, rel=1e-5)


def test_attention_transfer_weight_is_beta_times_3_over_n():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    one = attention_transfer([s], [t], beta=1.0)
    # the same point three times: 3/3 · 3 · term == 3 · term == the single-point value
    three = attention_transfer([s, s, s], [t, t, t], beta=1.0)
    assert _f(three) == pytest.approx(_f(one), rel=1e-6)
    assert _f(attention_transfer([s], [t], beta=10.0)) == pytest.approx(10 * _f(one), rel=1e-6)


def test_attention_transfer_dicts_match_by_key_not_order():
    torch.manual_seed(3)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    c, d = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)
    as_list = attention_transfer([a, b], [c, d])
    as_dict = attention_transfer({"x": a, "y": b}, {"y": d, "x": c})
    assert _f(as_dict) == pytest.approx(_f(as_list), rel=1e-6)


def test_attention_transfer_missing_key_is_named():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(FxswapError, match="'layer3'"):
        attention_transfer({"layer1": a}, {"layer1": a, "layer3": a})
    with pytest.raises(FxswapError, match="'extra'"):
        attention_transfer({"layer1": a, "extra": a}, {"layer1": a})


def test_attention_transfer_spatial_mismatch_raises():
    with pytest.raises(FxswapError, match="spatial sizes differ.*interpolat"):
        attention_transfer([torch.randn(2, 3, 8, 8)], [torch.randn(2, 3, 4, 4)])


@pytest.mark.parametrize(
    "s, t",
    [
        ([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)] * 2),  # counts differ
        ([torch.randn(2, 3, 4, 4)], {"a": torch.randn(2, 3, 4, 4)}),  # list vs dict
        ([], []),  # nothing
        ([torch.randn(2, 3, 4, 4)], [torch.randn(3, 3, 4, 4)]),  # batch differs
        ([torch.randn(2, 3)], [torch.randn(2, 3)]),  # not a feature map
    ],
)
def test_attention_transfer_bad_inputs(s, t):
    with pytest.raises(FxswapError):
        attention_transfer(s, t)


def test_attention_transfer_gradients_student_only():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    attention_transfer([s], [t]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@HYP
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 10.0).flatmap(lambda v: st.sampled_from([v, -v])),
    cs=st.integers(1, 4),
    hw=st.integers(1, 4),
)
def test_attention_transfer_zero_when_proportional(seed, scale, cs, hw):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(2, cs, hw, hw, generator=g, dtype=torch.float64)
    assert _f(attention_transfer([scale * t], [t])) == pytest.approx(0.0, abs=1e-9)


@HYP
@given(seed=st.integers(0, 2**16), a=st.floats(0.1, 5.0), b=st.floats(0.1, 5.0))
def test_attention_transfer_scale_invariant_and_symmetric(seed, a, b):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    base = _f(attention_transfer([s], [t]))
    assert base >= 0
    assert _f(attention_transfer([a * s], [b * t])) == pytest.approx(base, rel=1e-9, abs=1e-12)
    assert _f(attention_transfer([t], [s])) == pytest.approx(base, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------
# KD
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, T", [(0.9, 4.0), (0.5, 1.0), (0.0, 2.0), (1.0, 3.0)])
def test_kd_reference_form_matches_hand_computation(alpha, T):
    torch.manual_seed(4)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.tensor([0, 6, 3, 3, 1])
    kl = ref_kl_elements(_np(s), _np(t), T)
    expected = kl.mean() * 2 * T * T * alpha + ref_ce(_np(s), y.numpy()) * (1 - alpha)
    assert _f(kd_loss(s, t, y, alpha=alpha, T=T)) == pytest.approx(expected, rel=1e-5)


def test_kd_batchmean_form_matches_hand_computation():
    torch.manual_seed(5)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([2, 0, 1, 1])
    alpha, T = 0.7, 3.0
    kl = ref_kl_elements(_np(s), _np(t), T)
    expected = kl.sum() / 4 * T * T * alpha + ref_ce(_np(s), y.numpy()) * (1 - alpha)
    got = kd_loss(s, t, y, alpha=alpha, T=T, reduction="batchmean")
    assert _f(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_kd_reference_is_two_over_c_times_batchmean(classes):
    torch.manual_seed(classes)
    s, t = torch.randn(6, classes), torch.randn(6, classes)
    ref = kd_loss(s, t, None, alpha=1.0, T=4.0)
    bm = kd_loss(s, t, None, alpha=1.0, T=4.0, reduction="batchmean")
    assert _f(ref) == pytest.approx(_f(bm) * 2 / classes, rel=1e-5)


def test_kd_matches_torch_old_default_kl_div():
    """The reference's F.kl_div default reduction is the elementwise mean."""
    torch.manual_seed(6)
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([1, 2, 3])
    T, alpha = 4.0, 0.9
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / T, 1), torch.softmax(t / T, 1), reduction="sum"
    ) / s.numel()
    expected = kl * (T * T * 2.0 * alpha) + torch.nn.functional.cross_entropy(s, y) * (1.0 - alpha)
    assert torch.allclose(kd_loss(s, t, y), expected, rtol=1e-6)


def test_kd_defaults_are_moonshines():
    sig = inspect.signature(kd_loss)
    assert sig.parameters["alpha"].default == 0.9
    assert sig.parameters["T"].default == 4.0
    assert sig.parameters["reduction"].default == "reference"


@HYP
@given(seed=st.integers(0, 2**16), T=st.floats(0.5, 8.0), shift=st.floats(-5.0, 5.0))
def test_kd_kl_term_minimised_at_teacher(seed, T, shift):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(3, 6, generator=g, dtype=torch.float64)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64)
    at_t = _f(kd_loss(t.clone(), t, None, alpha=1.0, T=T))
    assert at_t == pytest.approx(0.0, abs=1e-12)
    assert _f(kd_loss(s, t, None, alpha=1.0, T=T)) >= at_t - 1e-12
    # softmax is shift invariant: s = t + const is also a minimiser
    assert _f(kd_loss(t + shift, t, None, alpha=1.0, T=T)) == pytest.approx(0.0, abs=1e-10)


def test_kd_gradient_zero_at_teacher_and_not_into_teacher():
    t = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    s = t.detach().clone().requires_grad_(True)
    kd_loss(s, t, None, alpha=1.0).backward()
    assert torch.allclose(s.grad, torch.zeros_like(s), atol=1e-12)
    assert t.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction="sum"), "reduction"),
        (dict(T=0.0), "temperature"),
        (dict(alpha=1.5), "alpha"),
    ],
)
def test_kd_bad_arguments(kwargs, match):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(FxswapError, match=match):
        kd_loss(s, t, y, **kwargs)


def test_kd_shape_and_target_errors():
    with pytest.raises(FxswapError, match="same shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(FxswapError, match="targets"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), None, alpha=0.5)
    with pytest.raises(FxswapError, match="targets"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(FxswapError, match="integer class indices"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    s, y = torch.randn(2, 3), torch.tensor([0, 2])
    assert torch.allclose(kd_loss(s, s, y.int()), kd_loss(s, s, y))  # any integer dtype
    with pytest.raises(FxswapError, match="batch, classes"):
        kd_loss(torch.randn(2, 3, 1), torch.randn(2, 3, 1), None, alpha=1.0)


# ---------------------------------------------------------------------------
# mimic
# ---------------------------------------------------------------------------


def test_mimic_matches_loops():
    torch.manual_seed(7)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    sn, tn = _np(s), _np(t)
    expected = sum(sum((sn[b, k] - tn[b, k]) ** 2 for k in range(10)) for b in range(4)) / 4
    assert _f(mimic_loss(s, t)) == pytest.approx(expected, rel=1e-5)


def test_mimic_grad_and_errors():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    mimic_loss(s, t).backward()
    # d/ds (1/B) Σ ||s - t||² = 2 (s - t) / B
    assert torch.allclose(s.grad, 2 * (s - t).detach() / 3, atol=1e-6)
    assert t.grad is None
    assert _f(mimic_loss(t.detach(), t)) == 0.0
    with pytest.raises(FxswapError):
        mimic_loss(torch.randn(3, 4), torch.randn(3, 5))


# ---------------------------------------------------------------------------
# hints
# ---------------------------------------------------------------------------


def test_hint_connector_identity_when_widths_match():
    c = HintConnector(6, 6)
    x = torch.randn(2, 6, 3, 3)
    assert list(c.parameters()) == []
    assert torch.equal(c(x), x)


def test_hint_loss_with_connector_matches_hand_computation():
    torch.manual_seed(8)
    conn = HintConnector(3, 5)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    w = _np(conn.proj.weight)[:, :, 0, 0]  # (5, 3)
    bias = _np(conn.proj.bias)
    sn, tn = _np(s), _np(t)
    total = 0.0
    for b in range(2):
        for o in range(5):
            for i in range(4):
                for j in range(4):
                    r = sum(w[o, c] * sn[b, c, i, j] for c in range(3)) + bias[o]
                    total += (r - tn[b, o, i, j]) ** 2
    expected = total / t.numel()
    assert _f(hint_loss(s, t, conn)) == pytest.approx(expected, rel=1e-5)


def test_hint_loss_grads_reach_connector_not_teacher():
    conn = HintConnector(3, 5)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 5, 4, 4, requires_grad=True)
    hint_loss(s, t, conn).backward()
    assert conn.proj.weight.grad is not None and conn.proj.weight.grad.abs().sum() > 0
    assert s.grad is not None and t.grad is None


def test_hint_loss_errors():
    with pytest.raises(FxswapError, match=r"HintConnector\(3, 5\)"):
        hint_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(FxswapError, match="spatial"):
        hint_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(FxswapError, match="expected"):
        HintConnector(3, 5)(torch.randn(2, 4, 4, 4))


# ---------------------------------------------------------------------------
# SRRL
# ---------------------------------------------------------------------------


def ref_srrl(conn: SRRLConnector, fc: nn.Linear, fs, ft, t_logits):
    """Conv1x1 → BN (training: batch statistics, biased var) → ReLU → GAP, in numpy."""
    w = _np(conn.conv.weight)[:, :, 0, 0]
    gamma, beta_bn, eps = _np(conn.bn.weight), _np(conn.bn.bias), conn.bn.eps
    x = _np(fs)
    n, _, h, wd = x.shape
    co = w.shape[0]
    y = np.zeros((n, co, h, wd))
    for b in range(n):
        for o in range(co):
            for i in range(h):
                for j in range(wd):
                    y[b, o, i, j] = sum(w[o, c] * x[b, c, i, j] for c in range(x.shape[1]))
    for o in range(co):
        vals = y[:, o].ravel()
        mu, var = vals.mean(), ((vals - vals.mean()) ** 2).mean()
        y[:, o] = (y[:, o] - mu) / math.sqrt(var + eps) * gamma[o] + beta_bn[o]
    y = np.maximum(y, 0)
    hs = y.mean(axis=(2, 3))
    ht = _np(ft).mean(axis=(2, 3))
    l_fm = ((hs - ht) ** 2).mean()
    q = hs @ _np(fc.weight).T + _np(fc.bias)
    l_sr = ((q - _np(t_logits)) ** 2).mean()
    return l_fm, l_sr


def _srrl_setup(seed=9, spatial_t=3):
    torch.manual_seed(seed)
    conn = SRRLConnector(3, 4)
    fc = nn.Linear(4, 5)
    fs = torch.randn(6, 3, 3, 3, requires_grad=True)
    ft = torch.rand(6, 4, spatial_t, spatial_t, requires_grad=True)
    t_logits = torch.randn(6, 5, requires_grad=True)
    return conn, fc, fs, ft, t_logits


def test_srrl_connector_structure():
    conn = SRRLConnector(3, 4)
    assert isinstance(conn.conv, nn.Conv2d) and conn.conv.bias is None
    assert conn.conv.kernel_size == (1, 1) and conn.conv.out_channels == 4
    assert isinstance(conn.bn, nn.BatchNorm2d)
    out = conn(torch.randn(2, 3, 5, 5))
    assert out.shape == (2, 4, 5, 5) and _f(out.min()) >= 0  # ReLU at the end


def test_srrl_losses_match_hand_computation():
    conn, fc, fs, ft, t_logits = _srrl_setup()
    l_fm, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    e_fm, e_sr = ref_srrl(conn, fc, fs, ft, t_logits)
    assert _f(l_fm) == pytest.approx(e_fm, rel=1e-4)
    assert _f(l_sr) == pytest.approx(e_sr, rel=1e-4)


def test_srrl_spatial_sizes_may_differ_because_of_pooling():
    conn, fc, fs, ft, t_logits = _srrl_setup(spatial_t=2)
    l_fm, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    e_fm, e_sr = ref_srrl(conn, fc, fs, ft, t_logits)
    assert _f(l_fm) == pytest.approx(e_fm, rel=1e-4)
    assert _f(l_sr) == pytest.approx(e_sr, rel=1e-4)
    # an already pooled teacher feature gives the same result
    l_fm2, _ = srrl_losses(fs, ft.mean((2, 3)), fc, t_logits, conn)
    assert _f(l_fm2) == pytest.approx(_f(l_fm), rel=1e-6)


def test_srrl_gradients_frozen_classifier_trainable_connector():
    conn, fc, fs, ft, t_logits = _srrl_setup()
    l_fm, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    (l_fm + l_sr).backward()
    assert fc.weight.grad is None and fc.bias.grad is None  # nothing into the teacher's classifier
    assert fc.weight.requires_grad  # ... and it was not modified to get there
    assert ft.grad is None and t_logits.grad is None  # nor into the teacher's outputs
    assert conn.conv.weight.grad is not None and conn.conv.weight.grad.abs().sum() > 0
    assert conn.bn.weight.grad is not None
    assert fs.grad is not None and fs.grad.abs().sum() > 0


def test_srrl_sr_gradient_flows_through_the_classifier():
    """d L_SR / d student equals the gradient through a frozen copy of the classifier."""
    conn, fc, fs, ft, t_logits = _srrl_setup()
    _, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    (g,) = torch.autograd.grad(l_sr, fs)
    frozen = nn.Linear(4, 5)
    frozen.load_state_dict(fc.state_dict())
    frozen.requires_grad_(False)
    hs = conn(fs).mean((2, 3))
    (g_ref,) = torch.autograd.grad(((frozen(hs) - t_logits.detach()) ** 2).mean(), fs)
    assert g.abs().sum() > 0
    assert torch.allclose(g, g_ref, atol=1e-7)


def test_srrl_errors():
    conn, fc, fs, ft, t_logits = _srrl_setup()
    with pytest.raises(FxswapError, match="SRRLConnector"):
        srrl_losses(fs, ft, fc, t_logits, None)  # 3 vs 4 channels, no connector
    with pytest.raises(FxswapError, match="teacher_classifier"):
        srrl_losses(fs, ft, fc, torch.randn(6, 7), conn)
    with pytest.raises(FxswapError, match="expected"):
        srrl_losses(torch.randn(6, 2, 3, 3), ft, fc, t_logits, conn)


def test_srrl_loss_is_eq8_and_defaults_are_one():
    conn, fc, fs, ft, t_logits = _srrl_setup()
    s_logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    l_fm, l_sr = srrl_losses(fs, ft, fc, t_logits, conn)
    ce = ref_ce(_np(s_logits), y.numpy())
    got = srrl_loss(s_logits, y, fs, ft, fc, t_logits, conn, alpha=2.0, beta=0.5)
    assert _f(got) == pytest.approx(ce + 2 * _f(l_fm) + 0.5 * _f(l_sr), rel=1e-5)
    sig = inspect.signature(srrl_loss)
    assert sig.parameters["alpha"].default == 1.0 and sig.parameters["beta"].default == 1.0


# ---------------------------------------------------------------------------
# LIT
# ---------------------------------------------------------------------------


def test_lit_ir_loss_matches_loops():
    torch.manual_seed(11)
    s = [torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    t = [torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)]
    expected = 0.0
    for a, b in zip(s, t):
        an, bn = _np(a).ravel(), _np(b).ravel()
        expected += sum((x - z) ** 2 for x, z in zip(an, bn)) / an.size
    assert _f(lit_ir_loss(s, t)) == pytest.approx(expected, rel=1e-5)
    assert _f(lit_ir_loss({"a": s[0], "b": s[1]}, {"b": t[1], "a": t[0]})) == pytest.approx(expected, rel=1e-5)


def test_lit_ir_loss_grads_and_errors():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    lit_ir_loss([s], [t]).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(FxswapError, match="same shape"):
        lit_ir_loss([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 2, 2)])
    with pytest.raises(FxswapError, match="'sec2'"):
        lit_ir_loss({"sec1": s}, {"sec1": t, "sec2": t})


def test_lit_kd_loss_matches_reference_form():
    torch.manual_seed(12)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    alpha, T = 0.95, 6.0
    sn, tn = _np(s), _np(t)
    total = 0.0
    for b in range(5):
        pt, ps = ref_softmax(tn[b] / T), ref_softmax(sn[b] / T)
        soft = -sum(pt[k] * math.log(ps[k]) for k in range(4))
        hard = -math.log(ref_softmax(sn[b])[y[b]])
        total += alpha * hard + (1 - alpha) * T * T * soft
    assert _f(lit_kd_loss(s, t, y)) == pytest.approx(total / 5, rel=1e-5)


def test_lit_loss_combines_as_reference():
    torch.manual_seed(13)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    s_irs = [torch.randn(4, 2, 3, 3), torch.randn(4, 5)]
    t_irs = [torch.randn(4, 2, 3, 3), torch.randn(4, 5)]
    kd = _f(lit_kd_loss(s, t, y, alpha=0.95, T=6.0))
    ir = _f(lit_ir_loss(s_irs, t_irs))
    assert _f(lit_loss(s, t, y, s_irs, t_irs)) == pytest.approx((0.75 * kd + 0.25 * ir) / 2, rel=1e-6)
    assert _f(lit_loss(s, t, y, s_irs, t_irs, beta=1.0)) == pytest.approx(kd / 2, rel=1e-6)
    assert _f(lit_loss(s, t, None, s_irs, t_irs, beta=0.0)) == pytest.approx(ir / 2, rel=1e-6)
    sig = inspect.signature(lit_loss)
    assert sig.parameters["beta"].default == 0.75
    assert sig.parameters["T"].default == 6.0
    assert sig.parameters["alpha"].default == 0.95
    with pytest.raises(FxswapError, match="beta"):
        lit_loss(s, t, y, s_irs, t_irs, beta=1.5)


# ---------------------------------------------------------------------------
# registry and docs
# ---------------------------------------------------------------------------


def test_builtins_registered():
    expected = {
        "kd": kd_loss,
        "at": attention_transfer,
        "mimic": mimic_loss,
        "hint": hint_loss,
        "srrl": srrl_loss,
        "lit": lit_loss,
    }
    for name, fn in expected.items():
        assert LOSSES[name] is fn
        assert get_loss(name) is fn


def test_register_loss_decorator_duplicates_and_overwrite():
    name = "test_only_l1"
    try:

        @register_loss(name)
        def l1(s, t):
            return (s - t).abs().mean()

        assert LOSSES[name] is l1
        assert _f(get_loss(name)(torch.ones(2), torch.zeros(2))) == 1.0
        with pytest.raises(FxswapError, match="already registered"):
            register_loss(name, lambda s, t: s)
        other = register_loss(name, lambda s, t: s, overwrite=True)
        assert LOSSES[name] is other
    finally:
        LOSSES.pop(name, None)


def test_registry_errors():
    with pytest.raises(FxswapError, match="unknown loss 'nope'.*kd"):
        get_loss("nope")
    with pytest.raises(FxswapError):
        register_loss("", lambda: 0)
    with pytest.raises(FxswapError, match="callable"):
        register_loss("test_only_bad", 3)
    assert "test_only_bad" not in LOSSES


def test_docstring_examples_run():
    result = doctest.testmod(L, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10
    assert result.failed == 0
