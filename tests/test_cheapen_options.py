"""A kept block's reason travels as data (``SpecError.reason``, set where the error is raised), never cut out
of the message."""
from __future__ import annotations

import pickle

import pytest
from torch import nn

import fxswap
from fxswap import SpecError, cheapen
from fxswap.models import wrn
from fxswap.surgery.substitutes import SUBSTITUTES, register_substitute


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
