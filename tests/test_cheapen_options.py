"""``strict=`` and the group-count warning travel as arguments (``BuildOptions``), and a kept block's reason as
data (``SpecError.reason``): each cheapen call sees only its own, even a call made inside another's builder.

(Not tested in threads: torch.fx patches ``nn.Module.__call__`` for the whole process while it traces, so two
``cheapen`` calls in two threads can already fail inside fx, with or without any state of ours.)"""
from __future__ import annotations

import pickle
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxswap
from fxswap import SpecError, cheapen
from fxswap.models import wrn
from fxswap.surgery.spec import parse_spec
from fxswap.surgery.substitutes import SUBSTITUTES, BuildOptions, fit_groups, nearest_divisor, register_substitute
from fxswap.testing import build, residual_nets

# wrn(10, 1): one block a stage; the full 3×3 convs read 16 (layer1.0: both, layer2.0: conv1), 32 (layer2.0: conv2,
# layer3.0: conv1) and 64 channels (layer3.0: conv2)
CONVS_IN = {"layer1.0": (16, 16), "layer2.0": (16, 32), "layer3.0": (32, 64)}


def _nearest_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "nearest" in str(w.message)]


def _cheapen_recording(*args, **kwargs):
    """The student (or the SpecError) and the group-count warnings of one call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = cheapen(*args, **kwargs)
        except SpecError as exc:
            out = exc
    return out, _nearest_warnings(caught)


def _places(caught: str) -> set[str]:
    return {name for name in CONVS_IN if f"{name} (" in caught}


def test_a_cheapen_inside_a_builder_does_not_see_the_outer_call():
    """A builder that itself calls cheapen (an interleaving within one thread): the inner strict call raises,
    the inner lenient call warns about its blocks only, and the outer call's warning lists exactly its own."""
    inner: list = []

    @register_substitute("Nest", level="conv", params=("N",))
    def nest(spec, conv, block, options=None):
        if not inner:
            inner.append(_cheapen_recording(wrn(10, 1), {"layer2.*": "G(3)"}, strict=True))
            inner.append(_cheapen_recording(wrn(10, 1), {"layer2.*": "G(3)"}))
        groups = fit_groups(spec.groups.value, conv.in_channels, "a conv", block, spec, options)
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=groups, bias=False)

    try:
        student, outer = _cheapen_recording(wrn(10, 1), {"layer1.*": "Nest(3)", "layer3.*": "G(3)"})
    finally:
        SUBSTITUTES.pop("Nest")
    (strict_error, strict_warned), (_, lenient_warned) = inner
    assert isinstance(strict_error, SpecError) and "layer2.0" in str(strict_error) and not strict_warned
    assert [_places(m) for m in lenient_warned] == [{"layer2.0"}]
    assert [_places(m) for m in outer] == [{"layer1.0", "layer3.0"}]
    assert isinstance(student, nn.Module) and student.layer1[0].conv1.groups == 4


def test_builders_get_the_options_they_ask_for():
    calls: list = []

    @register_substitute("Half", level="conv", params=("N",))
    def half(spec, conv, block, options=None):
        calls.append(options)
        groups = fit_groups(spec.groups.value, conv.in_channels, "a conv", block, spec, options)
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=groups, bias=False)

    try:
        error, warned = _cheapen_recording(wrn(10, 1), {"*": "Half(3)"}, strict=True)
        assert isinstance(error, SpecError) and "layer1.0" in str(error) and not warned
        assert calls[-1].strict
        student, warned = _cheapen_recording(wrn(10, 1), {"*": "Half(3)"})
        assert len(warned) == 1 and _places(warned[0]) == set(CONVS_IN) and "in 5 place(s)" in warned[0]
        assert not calls[-1].strict and len(calls[-1].adjusted) == 6  # the call's own list: every conv
        assert student.layer3[0].conv2.groups == 4
    finally:
        SUBSTITUTES.pop("Half")


def test_a_builder_without_options_still_works_and_its_adjustments_are_not_silent():
    @register_substitute("Old", level="conv", params=("N",))
    def old(spec, conv, block):  # registered before builders took options
        groups = fit_groups(spec.groups.value, conv.in_channels, "a conv", block, spec)
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=groups, bias=False)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            student = cheapen(wrn(10, 1), {"*": "Old(3)"})
        at_once = [str(w.message) for w in caught if "pass the builder's options" in str(w.message)]
        assert len(at_once) == 6 and student.layer1[0].conv1.groups == 4
    finally:
        SUBSTITUTES.pop("Old")


def test_build_options_are_the_calls_own():
    a, b = BuildOptions(), BuildOptions(strict=True)
    assert a.adjusted is not BuildOptions().adjusted
    block = fxswap.find_blocks(wrn(10, 1))[0]
    spec = parse_spec("G(3)")
    assert SUBSTITUTES["G"].create(block.kind, spec, nn.Conv2d(16, 16, 3), block, options=a)[0].groups == 4
    assert a.adjusted == [("layer1.0", "G(3)", 16, "3", 4)]
    with pytest.raises(SpecError) as err:
        SUBSTITUTES["G"].create(block.kind, spec, nn.Conv2d(16, 16, 3), block, options=b)
    assert err.value.reason.startswith("a conv has 16 channels, which 3 groups do not divide") and not b.adjusted


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_nets(max_stages=2, max_blocks=2, max_width=40), st.integers(2, 12))
def test_group_counts_follow_the_closed_form(net, groups):
    """Per full k×k conv of C input channels: g divides C, or (lenient) nearest_divisor(C, g) is used and the
    place is listed once, or (strict) the first such conv is the SpecError, its reason the structured one."""
    model = build(net)
    plan = {"*": f"G({groups})"}
    convs = [(b.name, f"{b.name}.conv{i + 1}", c) for b in net.blocks() for i, c in enumerate((b.in_channels,
                                                                                                b.out_channels))]
    off = [(name, path, c) for name, path, c in convs if c % groups]
    student, warned = _cheapen_recording(model, plan, allow_larger=True)
    for _, path, c in convs:
        assert student.get_submodule(path).grouped.groups == (groups if c % groups == 0 else nearest_divisor(c, groups))
    expected = {f"{name} (G({groups}): {groups} -> {nearest_divisor(c, groups)} groups on {c} channels)"
                for name, _, c in off}
    if not off:
        assert not warned
    else:
        assert len(warned) == 1 and f"in {len(expected)} place(s)" in warned[0]
        assert all(e in warned[0] for e in expected) or len(expected) > 10
    error, warned = _cheapen_recording(model, plan, allow_larger=True, strict=True)
    assert not warned
    if not off:
        assert isinstance(error, nn.Module)
    else:
        name, path, c = off[0]
        assert isinstance(error, SpecError) and f"block {name!r}" in str(error)
        assert error.reason == (f"a conv has {c} channels, which {groups} groups do not divide; use a group count "
                                f"that divides {c}, a ratio such as G(N/4) / BG(b,M/4), or strict=False to use the "
                                f"nearest group count that divides (the conv is {path!r})")


class _Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("weight 'w': not loaded")


def test_kept_reason_is_the_raised_one_even_when_the_text_has_quotes():
    """The reason the student records is carried, not cut out of the message: an exception text with its own
    ``': `` (which the old parser took for the end of the block name) stays whole."""

    @register_substitute("Flaky", level="conv")
    def flaky(spec, conv, block):
        if conv.in_channels == 64:
            return _Fails()
        g = conv.in_channels if conv.in_channels == conv.out_channels else 16
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=g, bias=False)

    try:
        with pytest.warns(UserWarning, match="kept as they are"):
            student = cheapen(wrn(10, 1), "Flaky")
    finally:
        SUBSTITUTES.pop("Flaky")
    kept = fxswap.applied_plan(student).kept
    assert kept == {"layer3.0": "the rewritten student does not run: block 'layer3.0' (Flaky, conv "
                                "'layer3.0.conv2') fails with RuntimeError: weight 'w': not loaded"}


def test_kept_reason_of_a_wrong_shape_names_the_conv_not_the_block():
    @register_substitute("Wide", level="conv")
    def wide(spec, conv, block):
        if conv.in_channels == 64:  # one channel too many, and cheaper (so only the shape check keeps it)
            return nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.Conv2d(64, 65, 1, bias=False))
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=16, bias=False)

    try:
        with pytest.warns(UserWarning, match="kept as they are"):
            student = cheapen(wrn(10, 1), "Wide")
    finally:
        SUBSTITUTES.pop("Wide")
    assert fxswap.applied_plan(student).kept == {
        "layer3.0": "conv 'layer3.0.conv2' now gives shape (1, 65, 8, 8) instead of (1, 64, 8, 8)"}


def test_spec_error_reason_survives_pickling():
    err = pickle.loads(pickle.dumps(SpecError("B(2) on block 'x': too wide", reason="too wide")))
    assert (str(err), err.reason) == ("B(2) on block 'x': too wide", "too wide")
    assert SpecError("plain").reason == "plain"
