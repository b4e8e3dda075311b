"""Hypothesis strategies for property tests of model surgery.

``residual_nets()`` draws a :class:`NetSpec`, the geometry of a small
residual CNN (stem conv, 1–3 stages of 1–3 blocks, global pool, linear
head); :func:`build` turns it into an ``nn.Module`` whose blocks live at
``layer{s}.{i}`` (``s`` from 1). ``specs(netspec)`` draws spec strings that
are valid for every block of that net (group counts are divisors of the
widths).

>>> net = NetSpec(stem=16, stages=(StageSpec(16, 2, 1), StageSpec(32, 1, 2)), order="post")
>>> model = build(net)
>>> [b.name for b in net.blocks()]
['layer1.0', 'layer1.1', 'layer2.0']
>>> [(b.in_channels, b.out_channels, b.stride, b.shortcut) for b in net.blocks()][2]
(16, 32, 2, 'projection')
>>> import torch
>>> model(torch.randn(1, 3, 16, 16)).shape
torch.Size([1, 10])

With hypothesis (``pip install hypothesis``)::

    from hypothesis import given
    from .strategies import residual_nets, build, specs

    @given(residual_nets().flatmap(lambda n: st.tuples(st.just(n), specs(n))))
    def test_shape(net_and_spec):
        net, spec = net_and_spec
        student = fxswap.cheapen(build(net), spec)
        ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import torch
from torch import nn

__all__ = [
    "StageSpec", "NetSpec", "BlockGeometry", "PreActBlock", "PostActBlock", "BottleneckBlock", "InvertedBlock",
    "TransformerBlock", "SharedConvBlocks", "BLOCK_KINDS", "ResidualNet",
    "build", "residual_nets", "specs", "divisors",
]


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``blocks`` blocks of output width ``width``; the first has ``stride``."""

    width: int
    blocks: int
    stride: int = 1


@dataclass(frozen=True)
class BlockGeometry:
    """What a test needs to know about one block to compute closed forms."""

    name: str
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    order: str
    shortcut: str  # "identity" or "projection"


@dataclass(frozen=True)
class NetSpec:
    """Geometry of a residual net built by :func:`build`.

    ``order`` is ``"pre"`` (BN-ReLU-conv-BN-ReLU-conv, WRN) or ``"post"``
    (conv-BN-ReLU-conv-BN, add, ReLU; ResNet). Every conv is bias-free; the
    stem is a k×k conv 3→``stem``; the head is BN-ReLU (pre only), global
    average pool and ``Linear(last width, num_classes)``.

    >>> net = NetSpec(stem=8, stages=(StageSpec(8, 1, 1),), order="pre", kernel_size=5)
    >>> net.blocks()[0]
    BlockGeometry(name='layer1.0', stage=0, in_channels=8, out_channels=8, stride=1, kernel_size=5, order='pre', shortcut='identity')
    >>> net.widths()
    (8, 8)
    """

    stem: int
    stages: tuple[StageSpec, ...]
    order: str = "post"
    kernel_size: int = 3
    num_classes: int = 10
    resolution: int = 16
    #: the blocks' structure: "basic" (``order`` decides pre/post), "bottleneck", "inverted", "transformer"
    block: str = "basic"

    def blocks(self) -> list[BlockGeometry]:
        out, width = [], self.stem
        for s, stage in enumerate(self.stages):
            for i in range(stage.blocks):
                stride = stage.stride if i == 0 else 1
                shortcut = "identity" if width == stage.width and stride == 1 else "projection"
                out.append(BlockGeometry(f"layer{s + 1}.{i}", s, width, stage.width, stride, self.kernel_size,
                                         self.order, shortcut))
                width = stage.width
        return out

    def widths(self) -> tuple[int, ...]:
        """Stem width, then each stage's width."""
        return (self.stem,) + tuple(s.width for s in self.stages)

    def input_shape(self, batch: int = 2) -> tuple[int, int, int, int]:
        return (batch, 3, self.resolution, self.resolution)


class PreActBlock(nn.Module):
    """WRN block: BN-ReLU-conv-BN-ReLU-conv; a 1×1 projection reads the pre-activated input."""

    def __init__(self, cin: int, cout: int, stride: int, k: int = 3):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, k, 1, k // 2, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return (x if self.shortcut is None else self.shortcut(o)) + y


class PostActBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN, add, ReLU; projection is 1×1 conv + BN."""

    def __init__(self, cin: int, cout: int, stride: int, k: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, k, 1, k // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class BottleneckBlock(nn.Module):
    """ResNet-50 block: 1×1 (in→w), k×k (w→w, stride), 1×1 (w→out), each conv-BN, ReLU; w = out // 4.

    >>> BottleneckBlock(16, 32, 2)(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, cin: int, cout: int, stride: int, k: int = 3):
        super().__init__()
        w = max(1, cout // 4)
        self.conv1, self.bn1 = nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, w, k, stride, k // 2, bias=False), nn.BatchNorm2d(w)
        self.conv3, self.bn3 = nn.Conv2d(w, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class InvertedBlock(nn.Module):
    """MobileNetV2 block: 1×1 expand (×4), depthwise k×k, 1×1 project; residual only at equal shapes.

    >>> InvertedBlock(8, 8, 1)(torch.randn(1, 8, 8, 8)).shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(self, cin: int, cout: int, stride: int, k: int = 3):
        super().__init__()
        e = 4 * cin
        self.residual = cin == cout and stride == 1
        self.expand = nn.Sequential(nn.Conv2d(cin, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=False), nn.BatchNorm2d(e),
                                nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(e, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on the map's pixels as tokens: x + attn(LN(x)), then x + MLP(LN(x)).

    Width- or stride-changing positions of "transformer" and "inverted" nets get a :class:`PostActBlock`.

    >>> TransformerBlock(16)(torch.randn(2, 16, 4, 4)).shape
    torch.Size([2, 16, 4, 4])
    """

    def __init__(self, c: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or 2 * c
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)

    def attn(self, t):
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj(a @ v)

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.fc2(self.act(self.fc1(self.norm2(t))))
        return t.transpose(1, 2).reshape(b, c, h, w)


def _block(kind: str, order: str, cin: int, cout: int, stride: int, k: int) -> nn.Module:
    if kind == "bottleneck":
        return BottleneckBlock(cin, cout, stride, k)
    same = cin == cout and stride == 1
    if kind == "inverted" and same:
        return InvertedBlock(cin, cout, stride, k)
    if kind == "transformer" and same:
        return TransformerBlock(cout)
    if kind in ("inverted", "transformer") or order == "post":
        return PostActBlock(cin, cout, stride, k)
    return PreActBlock(cin, cout, stride, k)


class SharedConvBlocks(nn.Module):
    """Two residual blocks whose branches call one conv module (fx records the second call as ``conv@1``;
    CoaT shares its MLPs this way): rewriting one call site must not silently rewrite the other.

    >>> import fxswap
    >>> [b.name for b in fxswap.find_blocks(SharedConvBlocks())]
    ['add', 'add_1']
    """

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = x + self.conv(torch.relu(x))
        return x + self.conv(torch.relu(x))


#: block structures :func:`residual_nets` can draw
BLOCK_KINDS = ("basic", "bottleneck", "inverted", "transformer")


class ResidualNet(nn.Module):
    """The model :func:`build` makes from a :class:`NetSpec`."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        k = spec.kernel_size
        self.spec = spec
        self.conv1 = nn.Conv2d(3, spec.stem, k, 1, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem) if spec.order == "post" else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        geo = spec.blocks()
        for s in range(len(spec.stages)):
            blocks = [_block(spec.block, spec.order, b.in_channels, b.out_channels, b.stride, k)
                      for b in geo if b.stage == s]
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        last = spec.stages[-1].width
        self.bn_final = nn.BatchNorm2d(last) if spec.order == "pre" else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, spec.num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if self.spec.order == "post":
            x = self.relu(self.bn1(x))
        for s in range(len(self.spec.stages)):
            x = getattr(self, f"layer{s + 1}")(x)
        if self.spec.order == "pre":
            x = self.relu(self.bn_final(x))
        return self.fc(self.pool(x).flatten(1))


def build(spec: NetSpec, seed: int | None = 0) -> ResidualNet:
    """The residual net described by ``spec`` (random weights; ``seed`` makes them reproducible).

    >>> build(NetSpec(stem=8, stages=(StageSpec(16, 1, 2),))).layer1[0].downsample[0]
    Conv2d(8, 16, kernel_size=(1, 1), stride=(2, 2), bias=False)
    """
    if seed is None:
        return ResidualNet(spec)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return ResidualNet(spec)
    finally:
        torch.random.set_rng_state(state)


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` in increasing order.

    >>> divisors(24)
    [1, 2, 3, 4, 6, 8, 12, 24]
    """
    return [d for d in range(1, n + 1) if n % d == 0]


def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover
        raise ImportError("fxswap.testing strategies need hypothesis: pip install hypothesis") from exc
    return st


def residual_nets(max_stages: int = 3, max_blocks: int = 3, max_width: int = 48, kernels=(3, 5),
                  orders=("pre", "post"), blocks=("basic",)):
    """Strategy of :class:`NetSpec`: 1–``max_stages`` stages of 1–``max_blocks`` blocks.

    Widths are multiples of 8 up to ``max_width``; each stage starts with
    stride 1 or 2; the order, kernel size and block structure (``blocks``:
    ``"basic"``, ``"bottleneck"``, ``"inverted"``, ``"transformer"``) are drawn
    once per net. Build the module with :func:`build`.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, deadline=None)
    ... @given(residual_nets())
    ... def check(net):
    ...     assert 1 <= len(net.stages) <= 3 and all(w % 8 == 0 for w in net.widths())
    >>> check()
    """
    st = _st()
    widths = st.sampled_from(list(range(8, max_width + 1, 8)))
    stage = st.builds(StageSpec, widths, st.integers(1, max_blocks), st.sampled_from([1, 2]))

    @st.composite
    def nets(draw):
        stages = tuple(draw(st.lists(stage, min_size=1, max_size=max_stages)))
        n_down = sum(s.stride == 2 for s in stages)
        return NetSpec(
            stem=draw(widths), stages=stages, order=draw(st.sampled_from(list(orders))),
            kernel_size=draw(st.sampled_from(list(kernels))), num_classes=draw(st.integers(1, 10)),
            resolution=max(8, 2 ** n_down * 4), block=draw(st.sampled_from(list(blocks))),
        )

    return nets()


def specs(net: NetSpec | None = None, forms=("S", "S-2x2", "G", "G(N/d)", "B", "BG", "BG(M/d)", "I")):
    """Strategy of spec strings valid for every block of ``net`` (all forms by default).

    Group counts and divisors are drawn from the divisors of the gcd of the
    net's widths (8 without a net), so ``G``/``BG`` divide every conv they
    meet; ``b`` of ``B``/``BG`` divides every block's output width.

    >>> from hypothesis import given, settings
    >>> from fxswap.surgery.spec import parse_spec
    >>> @settings(max_examples=20, deadline=None)
    ... @given(specs(NetSpec(stem=16, stages=(StageSpec(24, 1, 2),))))
    ... def check(text):
    ...     assert parse_spec(text).kind in {"S", "S-2x2", "G", "B", "BG", "I"}
    >>> check()
    """
    st = _st()
    g = reduce(math.gcd, net.widths()) if net is not None else 8
    ds = divisors(g)
    out = []
    if "S" in forms:
        out.append(st.just("S"))
    if "S-2x2" in forms:
        out.append(st.just("S-2x2"))
    if "I" in forms:
        out.append(st.just("I"))
    if "G" in forms:
        out.append(st.sampled_from(ds).map(lambda x: f"G({x})"))
    if "G(N/d)" in forms:
        out.append(st.sampled_from(ds).map(lambda x: "G(N)" if x == 1 else f"G(N/{x})"))
    if "B" in forms:
        out.append(st.sampled_from(ds).map(lambda b: f"B({b})"))
    if "BG" in forms:
        out.append(st.sampled_from(ds).flatmap(
            lambda b: st.sampled_from(divisors(g // b)).map(lambda x: f"BG({b},{x})")))
    if "BG(M/d)" in forms:
        out.append(st.sampled_from(ds).flatmap(
            lambda b: st.sampled_from(divisors(g // b)).map(lambda x: f"BG({b},M)" if x == 1 else f"BG({b},M/{x})")))
    return st.one_of(*out)
