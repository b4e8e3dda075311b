"""Cheap substitutes for a block's convolutions or its whole branch (a registry).

Each spec kind has a *level*:

* ``"conv"``: the builder replaces one convolution (``G``, ``S-2x2``): called
  as ``build(spec, conv, block)`` and returns a module with the conv's input
  and output shapes;
* ``"branch"``: the builder replaces the branch from its first convolution to
  its last (pre-activation) or to the norm after it (post-activation) (``B``,
  ``BG``): ``build(spec, block)``, from ``block.in_channels`` to
  ``block.out_channels`` with ``block.stride``;
* ``"remove"`` (``I``) and ``"keep"`` (``S``) build nothing.

The structures and parameter costs are Moonshine's (seed 000, Table 1). The
conv-level/branch-level split is what reproduces its Table 3 counts to the
digit (checked against the reference implementation's ``DConv*`` conv
factories and ``BottleBlock``).

Register your own (the grammar learns the name)::

    >>> from torch import nn
    >>> @register_substitute("DW", level="conv")
    ... def depthwise(spec, conv, block):
    ...     return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
    ...                      conv.stride, conv.padding, groups=conv.in_channels, bias=False)
    >>> import fxswap
    >>> student = fxswap.cheapen(fxswap.models.wrn(16, 1), "DW")
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .blocks import Block
from .errors import SpecError
from .spec import BlockSpec, register_form

__all__ = [
    "Substitute", "SUBSTITUTES", "register_substitute", "create_grouped_pointwise",
    "create_dilated_2x2", "create_bottleneck", "conv_params",
]


@dataclass(frozen=True)
class Substitute:
    """A registered spec kind: its name, level and builder (see :data:`SUBSTITUTES`).

    >>> SUBSTITUTES["B"]
    Substitute(name='B', level='branch', build=<function _bottleneck at 0x...>)
    >>> SUBSTITUTES["I"].level, SUBSTITUTES["I"].build
    ('remove', None)
    """

    name: str
    level: str
    build: Callable | None


SUBSTITUTES: dict[str, Substitute] = {}


def register_substitute(name: str, level: str, params: tuple[str, ...] = ()):
    """Register a builder for spec ``name`` (a decorator); see the module docstring.

    ``level`` is ``"conv"`` or ``"branch"``; ``params`` the argument kinds
    (``"int"``, ``"N"``, ``"M"``) the grammar accepts for it.

    >>> @register_substitute("Same", level="branch")
    ... def same(spec, block):
    ...     return nn.Conv2d(block.in_channels, block.out_channels, 3, block.stride, 1)
    >>> "Same" in SUBSTITUTES
    True
    """
    if level not in ("conv", "branch"):
        raise SpecError(f"substitute level must be 'conv' or 'branch', got {level!r}")

    def decorator(build: Callable) -> Callable:
        register_form(name, params)
        SUBSTITUTES[name] = Substitute(name, level, build)
        return build

    return decorator


def _act(block: Block) -> nn.Module:
    act = block.act_type
    try:
        return act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else act() if act else nn.ReLU(inplace=True)
    except TypeError:
        return nn.ReLU(inplace=True)


def _init(module: nn.Module) -> nn.Module:
    """He fan-out init for convs (the reference's normal(0, sqrt(2/(k²·out)))), BN at 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _check_groups(groups: int, channels: int, what: str, block: Block, spec: BlockSpec) -> None:
    if groups < 1 or channels % groups:
        count = f"{groups} groups" if groups >= 1 else f"groups = {spec.groups}"
        raise SpecError(
            f"{spec} on block {block.name!r}: {what} has {channels} channels, which {count} do not divide; "
            f"use a group count that divides {channels}, or a ratio such as G(N/4) / BG(b,M/4)"
        )


def create_grouped_pointwise(conv: nn.Conv2d, groups: int, act: nn.Module) -> nn.Sequential:
    """``G(g)`` for one conv: grouped k×k (Cin→Cin, g groups), BN, act, 1×1 (Cin→Cout).

    The width changes across the pointwise conv (Moonshine §3.2).

    >>> m = create_grouped_pointwise(nn.Conv2d(16, 32, 3, 2, 1, bias=False), 4, nn.ReLU())
    >>> [type(x).__name__ for x in m]
    ['Conv2d', 'BatchNorm2d', 'ReLU', 'Conv2d']
    """
    return _init(nn.Sequential(OrderedDict(
        grouped=nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, groups=groups, bias=False, padding_mode=conv.padding_mode),
        bn=nn.BatchNorm2d(conv.in_channels),
        act=act,
        pointwise=nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None),
    )))


def create_dilated_2x2(conv: nn.Conv2d) -> nn.Conv2d:
    """``S-2x2`` for one conv: a 2×2 kernel dilated to the k×k conv's extent, same padding.

    >>> create_dilated_2x2(nn.Conv2d(8, 8, 3, 1, 1))
    Conv2d(8, 8, kernel_size=(2, 2), stride=(1, 1), padding=(1, 1), dilation=(2, 2))
    """
    extent = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    return _init(nn.Conv2d(conv.in_channels, conv.out_channels, 2, conv.stride, conv.padding,
                           dilation=tuple(e - 1 for e in extent), groups=conv.groups, bias=conv.bias is not None,
                           padding_mode=conv.padding_mode))


def create_bottleneck(in_channels: int, out_channels: int, width: int, kernel_size: int, stride: int,
                      groups: int, act: Callable[[], nn.Module], post_norm: bool) -> nn.Sequential:
    """``B(b)`` / ``BG(b,g)``: 1×1 (in→M), BN, act, k×k (M→M, stride, g groups), BN, act, 1×1 (M→out).

    With ``post_norm`` (a post-activation host such as ResNet) a BN follows the
    last 1×1, since the host's own last BN was part of the replaced branch.

    >>> m = create_bottleneck(64, 64, 32, 3, 1, 1, nn.ReLU, post_norm=False)
    >>> sum(p.numel() for n, p in m.named_parameters() if "conv" in n or "down" in n or "up" in n)
    13312
    """
    layers = OrderedDict(
        down=nn.Conv2d(in_channels, width, 1, bias=False),
        bn1=nn.BatchNorm2d(width),
        act1=act(),
        conv=nn.Conv2d(width, width, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        bn2=nn.BatchNorm2d(width),
        act2=act(),
        up=nn.Conv2d(width, out_channels, 1, bias=False),
    )
    if post_norm:
        layers["bn3"] = nn.BatchNorm2d(out_channels)
    return _init(nn.Sequential(layers))


@register_substitute("G", level="conv", params=("N",))
def _grouped(spec: BlockSpec, conv: nn.Conv2d, block: Block) -> nn.Module:
    try:
        groups = spec.groups.resolve(conv.in_channels)
    except SpecError:
        groups = 0
    _check_groups(groups, conv.in_channels, "a conv", block, spec)
    return create_grouped_pointwise(conv, groups, _act(block))


@register_substitute("S-2x2", level="conv")
def _dilated(spec: BlockSpec, conv: nn.Conv2d, block: Block) -> nn.Module:
    return create_dilated_2x2(conv)


def _bottleneck(spec: BlockSpec, block: Block) -> nn.Module:
    b = spec.bottleneck
    if block.out_channels % b:
        raise SpecError(
            f"{spec} on block {block.name!r}: its {block.out_channels} output channels are not divisible by b={b}"
        )
    width = block.out_channels // b
    groups = 1
    if spec.kind == "BG":
        try:
            groups = spec.groups.resolve(width)
        except SpecError:
            groups = 0
        _check_groups(groups, width, f"the bottleneck (M = {block.out_channels}/{b})", block, spec)
    return create_bottleneck(block.in_channels, block.out_channels, width, block.kernel_size, int(block.stride),
                             groups, lambda: _act(block), post_norm=block.order == "post")


SUBSTITUTES["B"] = Substitute("B", "branch", _bottleneck)
SUBSTITUTES["BG"] = Substitute("BG", "branch", _bottleneck)
SUBSTITUTES["S"] = Substitute("S", "keep", None)
SUBSTITUTES["I"] = Substitute("I", "remove", None)


def conv_params(spec: BlockSpec | str, n: int, k: int = 3) -> int:
    """Moonshine Table 1: convolution parameters of a block of width N (N in = N out).

    ``S``: 2N²k²; ``G(g)``: 2N²(k²/g + 1); ``B(b)``: N²(k²/b² + 2/b);
    ``BG(b,g)``: N²(k²/(g b²) + 2/b); ``S-2x2``: 2·4N²; ``I``: 0.

    >>> conv_params("G(N/4)", 64), conv_params("BG(2,M/8)", 64)
    (12800, 6400)
    """
    from .spec import parse_spec

    spec = parse_spec(spec)
    if spec.kind == "S":
        return 2 * n * n * k * k
    if spec.kind == "S-2x2":
        return 2 * n * n * 4
    if spec.kind == "I":
        return 0
    if spec.kind == "G":
        g = spec.groups.resolve(n)
        return 2 * (n * (n // g) * k * k + n * n)
    if spec.kind in ("B", "BG"):
        m = n // spec.bottleneck
        g = spec.groups.resolve(m) if spec.kind == "BG" else 1
        return n * m + m * (m // g) * k * k + m * n
    raise SpecError(f"no closed form for {spec}")
