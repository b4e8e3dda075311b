"""Per-block MACs of every substitute against closed forms written from its definition (issue 18, item 9).

Parameter counts cannot see *where* a substitute puts its stride: moving ``B(b)``'s stride from the k×k conv
to the first 1×1 keeps every weight but changes the network (wrn-16-2 ``B(2)``, block ``layer2.0``: 4,603,904
MACs with the stride on the k×k conv, 3,768,320 with it on the 1×1). MACs per block see it, so each spec's
MACs are written here from its definition and compared block by block with ``fxswap.count``:

* Moonshine (seed 000) §3 and Table 1, and the reference implementation (BayesWatch/pytorch-moonshine,
  ``models/blocks.py``): ``B(b)``/``BG(b,g)`` replace the branch by ``ConvBottleneck`` — 1×1 N→M at the
  block's *input* resolution, BN, ReLU, k×k M→M carrying the block's stride (``g`` groups), BN, ReLU, 1×1
  M→N_out — with M = N_out // b; ``G(g)`` replaces each k×k conv by ``DConv`` — grouped k×k Cin→Cin with the
  conv's stride, BN, ReLU, 1×1 Cin→Cout; ``S-2x2`` is a 2×2 kernel dilated to the k×k extent (``Conv2x2``).
* fvcore's conventions (what ``count`` reports): a conv or linear costs one MAC per multiply-add, an
  inference-mode BatchNorm with affine weights costs 2 per element of its input, ReLU and adds cost nothing.
* What the block module holds besides the branch: a pre-activation block (WRN) keeps its first BN-ReLU,
  shared with the 1×1 projection shortcut; a post-activation block (ResNet) keeps its projection conv + BN.
"""
from __future__ import annotations

import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxswap
from fxswap.testing import BlockGeometry, NetSpec, StageSpec, build, residual_nets, specs


def _conv(cin: int, cout: int, k: int, hw: int, groups: int = 1) -> int:
    """A k×k conv producing ``hw`` output pixels."""
    return cin * (cout // groups) * k * k * hw


def _bn(channels: int, hw: int) -> int:
    return 2 * channels * hw


def _resolutions(net: NetSpec) -> dict[str, tuple[int, int]]:
    """Input and output pixels of each block (k odd, padding k // 2: a stride-s conv maps H to ceil(H / s))."""
    out, h = {}, net.resolution
    for b in net.blocks():
        h_out = -(-h // b.stride)
        out[b.name] = (h * h, h_out * h_out)
        h = h_out
    return out


def _groups(arg: str, channels: int) -> int:
    """A group argument of the spec text: ``x`` (x groups), ``N``/``M`` (depthwise), ``N/d``/``M/d``."""
    m = re.fullmatch(r"([NM])(?:/(\d+))?", arg)
    return channels // int(m.group(2) or 1) if m else int(arg)


def _kept(g: BlockGeometry, hw_in: int, hw_out: int) -> int:
    """The block module's MACs outside the branch: pre-activation BN, projection shortcut (+ BN, post)."""
    projection = g.shortcut == "projection"
    if g.order == "pre":
        return _bn(g.in_channels, hw_in) + (g.in_channels * g.out_channels * hw_out if projection else 0)
    return (g.in_channels * g.out_channels * hw_out + _bn(g.out_channels, hw_out)) if projection else 0


def _conv_level(spec: str, cin: int, cout: int, k: int, hw_out: int) -> int:
    """One k×k conv (its stride already in ``hw_out``) after a conv-level spec."""
    if spec == "S":
        return _conv(cin, cout, k, hw_out)
    if spec == "S-2x2":  # Conv2x2: 2×2 taps, dilated to the k×k extent, same stride and output size
        return _conv(cin, cout, 2, hw_out)
    g = _groups(re.fullmatch(r"G\((.+)\)", spec).group(1), cin)  # DConv: grouped k×k Cin→Cin, BN, 1×1 Cin→Cout
    return _conv(cin, cin, k, hw_out, g) + _bn(cin, hw_out) + _conv(cin, cout, 1, hw_out)


def block_macs(g: BlockGeometry, spec: str, hw_in: int, hw_out: int) -> int:
    """MACs of a basic block (pre- or post-activation) of geometry ``g`` after ``spec``, from its definition."""
    cin, cout, k = g.in_channels, g.out_channels, g.kernel_size
    post_bn = _bn(cout, hw_out) if g.order == "post" else 0  # post-activation: the branch ends in a BN
    kept = _kept(g, hw_in, hw_out)
    if spec == "I":  # the branch is gone; a pre-activation BN that only fed it goes with it
        return kept if g.shortcut == "projection" else 0
    bottleneck = re.fullmatch(r"BG?\((\d+)(?:,(.+))?\)", spec)
    if bottleneck:  # ConvBottleneck: 1×1 at the input resolution; the stride on the k×k conv
        m = cout // int(bottleneck.group(1))
        g_ = _groups(bottleneck.group(2), m) if bottleneck.group(2) else 1
        return (kept + _conv(cin, m, 1, hw_in) + _bn(m, hw_in) + _conv(m, m, k, hw_out, g_) + _bn(m, hw_out)
                + _conv(m, cout, 1, hw_out) + post_bn)
    # conv level: conv1 (cin→cout, the block's stride), BN, conv2 (cout→cout)
    return (kept + _conv_level(spec, cin, cout, k, hw_out) + _bn(cout, hw_out)
            + _conv_level(spec, cout, cout, k, hw_out) + post_bn)


def _measured(net: NetSpec, model, spec: str) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "I keeps block ... (projection shortcut)"
        # G(1) and G(2) make a narrow block larger (Table 1: 2N²(k²/g + 1) > 2N²k² for g = 1): counted all the same
        student = fxswap.cheapen(model, spec, allow_larger=True)
    shape = (3, net.resolution, net.resolution)
    # the teacher's blocks: after I a block has no residual add left, but its module is still there
    return {b.name: b.macs for b in fxswap.count(student, shape, blocks=fxswap.find_blocks(model)).blocks}


def _expected(net: NetSpec, spec: str) -> dict[str, int]:
    res = _resolutions(net)
    return {b.name: block_macs(b, spec, *res[b.name]) for b in net.blocks()}


def _wrn_net(depth: int, width: int) -> NetSpec:
    """The geometry of ``fxswap.models.wrn(depth, width)`` on 32×32 (its blocks are the pre-activation ones)."""
    n = (depth - 4) // 6
    stages = (StageSpec(16 * width, n, 1), StageSpec(32 * width, n, 2), StageSpec(64 * width, n, 2))
    return NetSpec(stem=16, stages=stages, order="pre", resolution=32)


WRN_SPECS = ["S", "B(2)", "B(4)", "BG(2,4)", "BG(2,M/8)", "G(4)", "G(N/4)", "G(N)", "S-2x2", "I"]


@pytest.fixture(scope="module")
def wrn16_2():
    return fxswap.models.wrn(16, 2)


def test_wrn_b2_strided_block_puts_the_stride_on_the_kxk_conv(wrn16_2):
    # the number of the issue: 4,603,904 with the stride on the k×k conv, 3,768,320 with it on the first 1×1
    got = _measured(_wrn_net(16, 2), wrn16_2, "B(2)")
    assert got["layer2.0"] == 4_603_904
    assert got["layer3.0"] == block_macs(_wrn_net(16, 2).blocks()[4], "B(2)", 16 * 16, 8 * 8)


@pytest.mark.parametrize("spec", WRN_SPECS)
def test_wrn_every_block_matches_the_closed_form(wrn16_2, spec):
    net = _wrn_net(16, 2)
    assert _measured(net, wrn16_2, spec) == _expected(net, spec)


def _nets_and_specs():
    nets = residual_nets(max_stages=3, max_blocks=2, max_width=32, kernels=(3, 5))
    return nets.flatmap(lambda n: st.tuples(st.just(n), specs(n, forms=("S", "S-2x2", "G", "G(N/d)", "B", "BG",
                                                                         "BG(M/d)"))))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_nets_and_specs())
def test_random_nets_every_block_matches_the_closed_form(net_and_spec):
    """Pre- and post-activation nets, k = 3 or 5, strided and projection blocks, every spec form but I."""
    net, spec = net_and_spec
    assert _measured(net, build(net), spec) == _expected(net, spec)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_nets(max_stages=3, max_blocks=2, max_width=32, kernels=(3, 5)))
def test_random_nets_identity_keeps_only_what_is_outside_the_branch(net):
    """A projection block keeps its shortcut (and a pre-activation block the BN-ReLU it shares); an identity
    block costs nothing."""
    assert _measured(net, build(net), "I") == _expected(net, "I")
