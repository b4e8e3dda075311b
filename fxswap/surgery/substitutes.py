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

A builder that also has a parameter named ``options`` is given the call's
:class:`BuildOptions` there (``cheapen``'s ``strict=`` and the list its
group-count warning reads), to hand on to :func:`fit_groups`; a builder
without one is called as above.

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

import inspect
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..blocks.block import KINDS, Block
from ..errors import SpecError
from .spec import BlockSpec, parse_spec, register_form

__all__ = [
    "Substitute", "SUBSTITUTES", "register_substitute", "BuildOptions", "create_grouped_pointwise",
    "create_dilated_2x2", "create_bottleneck", "create_separable", "create_mlp", "conv_params",
    "conv_targets", "fit_groups", "nearest_divisor", "reference_init", "ChannelsLast", "for_host",
]


@dataclass(frozen=True)
class BuildOptions:
    """What one ``cheapen`` call tells the builders beyond the spec and the block (passed, never global).

    ``strict``: a group count that does not divide a width is a
    :class:`fxswap.SpecError` (``cheapen(..., strict=True)``); otherwise
    :func:`fit_groups` takes the nearest divisor and appends
    ``(block, spec, channels, asked, used)`` to ``adjusted``, the list this
    call's one warning is made from. Each call (each rewrite round) makes
    its own, so a ``cheapen`` run inside another (a builder that cheapens)
    never sees the outer call's.

    >>> options = BuildOptions()
    >>> b = Block("b", 0, 0, 26, 26, 1, 3, (), "pre", "identity")
    >>> SUBSTITUTES["G"].create("basic", parse_spec("G(4)"), nn.Conv2d(26, 26, 3), b, options=options)[0].groups
    2
    >>> options.adjusted
    [('b', 'G(4)', 26, '4', 2)]
    """

    strict: bool = False
    adjusted: list = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class Substitute:
    """A registered spec kind: its name, level, grammar and builders per host kind (see :data:`SUBSTITUTES`).

    ``builders`` maps a host kind (:data:`fxswap.blocks.KINDS`, or ``"*"`` for
    every kind) to its builder; ``targets`` (conv level) picks the convs of a
    block the builder replaces.

    >>> SUBSTITUTES["B"].kinds()
    ('basic', 'bottleneck', 'inverted', 'mixer', 'mlp', 'other')
    >>> SUBSTITUTES["I"].level, SUBSTITUTES["I"].serves("attention")
    ('remove', True)
    """

    name: str
    level: str
    params: tuple[str, ...] = ()
    builders: dict = field(default_factory=dict)
    targets: Callable | None = None

    @property
    def build(self) -> Callable | None:
        """The builder for every kind (``"*"``), or the first registered one."""
        return self.builders.get("*", next(iter(self.builders.values()), None))

    def serves(self, kind: str) -> bool:
        """Whether this spec applies to a block of host kind ``kind``."""
        return self.level in ("keep", "remove") or "*" in self.builders or kind in self.builders

    def builder_for(self, kind: str) -> Callable | None:
        return self.builders.get(kind, self.builders.get("*"))

    def create(self, kind: str, *args, options: BuildOptions | None = None) -> nn.Module | None:
        """Call the builder for host ``kind`` on ``args`` (``spec, conv, block`` or ``spec, block``),
        handing it ``options`` if it has a parameter of that name.

        >>> from fxswap.models import wrn
        >>> from fxswap import find_blocks
        >>> block = find_blocks(wrn(10, 1))[0]
        >>> SUBSTITUTES["B"].create(block.kind, parse_spec("B(2)"), block).conv
        Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
        """
        build = self.builder_for(kind)
        if _takes_options(build):
            return build(*args, options=options if options is not None else BuildOptions())
        return build(*args)

    def kinds(self) -> tuple[str, ...]:
        """The host kinds served, in :data:`fxswap.blocks.KINDS` order."""
        return tuple(k for k in KINDS if self.serves(k))


SUBSTITUTES: dict[str, Substitute] = {}


def _takes_options(build: Callable) -> bool:
    """Whether a builder declares ``options`` (builders registered before it existed do not)."""
    try:
        param = inspect.signature(build).parameters.get("options")
    except (TypeError, ValueError):  # a callable without a signature takes what it always took
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


_LEVELS = ("conv", "branch", "remove", "keep")


def register_substitute(name: str, level: str, params: tuple[str, ...] = (), kinds: tuple[str, ...] | None = None,
                        targets: Callable | None = None, example: str | None = None):
    """Register spec ``name``: its grammar (``params``) and a builder for host ``kinds`` (a decorator).

    ``level`` is ``"conv"`` (``build(spec, conv, block)`` replaces each conv
    that ``targets(block)`` lists, by default the k×k ones) or ``"branch"``
    (``build(spec, block)`` replaces the branch). A builder that fits group
    counts with :func:`fit_groups` takes a parameter ``options`` too
    (``build(spec, block, options=None)``) and passes it on, so that
    ``cheapen(..., strict=True)`` and its one group-count warning cover it
    (a builder without one is called as before). ``params`` are the argument
    kinds (``"int"``, ``"N"``, ``"M"``) the grammar accepts; ``kinds`` the host
    kinds this builder serves (``None``: every kind). Registering the same name
    again adds builders for more kinds. The built-in specs register this way.

    >>> @register_substitute("Same", level="branch", kinds=("basic",))
    ... def same(spec, block):
    ...     return nn.Conv2d(block.in_channels, block.out_channels, 3, block.stride, 1)
    >>> SUBSTITUTES["Same"].kinds()
    ('basic',)
    """
    if level not in _LEVELS:
        raise SpecError(f"substitute level must be one of {', '.join(_LEVELS)}, got {level!r}")
    unknown = [k for k in (kinds or ()) if k not in KINDS]
    if unknown:
        raise SpecError(f"unknown host kind(s) {unknown}; kinds are {', '.join(KINDS)}")

    def decorator(build: Callable | None) -> Callable | None:
        old = SUBSTITUTES.get(name)
        if old is not None and (old.level != level or old.params != tuple(params)):
            old = None  # a new definition replaces the old one
        builders = dict(old.builders) if old else {}
        if build is not None:
            for kind in kinds or ("*",):
                builders[kind] = build
        register_form(name, tuple(params), example)
        SUBSTITUTES[name] = Substitute(name, level, tuple(params), builders,
                                       targets or (old.targets if old else None))
        return build

    return decorator


def conv_targets(spec_name: str, block: Block) -> tuple[str, ...]:
    """The convs of ``block`` a conv-level spec replaces (``G``: full k×k convs; default: every k×k conv).

    >>> from fxswap.models import wrn
    >>> from fxswap import find_blocks
    >>> conv_targets("G", find_blocks(wrn(10, 1))[0])
    ('layer1.0.conv1', 'layer1.0.conv2')
    """
    pick = SUBSTITUTES[spec_name].targets
    return tuple(pick(block)) if pick else block.spatial_convs


def _act(block: Block) -> nn.Module:
    act = block.act_type
    try:
        return act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else act() if act else nn.ReLU(inplace=True)
    except TypeError:
        return nn.ReLU(inplace=True)


def reference_init(module: nn.Module) -> nn.Module:
    """Initialise every parameter of ``module`` in place as the reference code does, and return it.

    Convolutions: He fan-out normal ``N(0, 2/(k²·out))`` (the reference's
    ``normal(0, sqrt(2/(k²·out)))``), bias 0; norms: weight 1, bias 0,
    running statistics reset; linear layers: PyTorch's default, bias 0;
    anything else with ``reset_parameters``: that. Every substitute starts
    so, and :func:`fxswap.search.fisher.random_init` re-initialises a
    network with it.

    >>> conv = reference_init(nn.Conv2d(64, 64, 3))
    >>> std = float(conv.weight.detach().std())           # He fan-out: sqrt(2 / (3·3·64)) = 0.059
    >>> abs(std - (2 / (3 * 3 * 64)) ** 0.5) < 0.005, float(conv.bias.detach().abs().sum())
    (True, 0.0)
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
            if hasattr(m, "reset_running_stats") and getattr(m, "track_running_stats", False):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif m is not module and hasattr(m, "reset_parameters") and not list(m.children()):
            m.reset_parameters()
    return module


def nearest_divisor(channels: int, wanted: float) -> int:
    """The divisor of ``channels`` nearest to ``wanted`` (ties: the larger, i.e. more groups, cheaper).

    >>> nearest_divisor(26, 4), nearest_divisor(10, 2.5), nearest_divisor(61, 8), nearest_divisor(12, 5)
    (2, 2, 1, 6)
    """
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), -d))


def fit_groups(arg, channels: int, what: str, block: Block, spec: BlockSpec,
               options: BuildOptions | None = None) -> int:
    """The group count for ``channels`` from a spec argument (an int or ``N/d``, ``M/d``).

    The default rule: when the asked count does not divide ``channels``, use
    the nearest count that does (ties to more groups) and append the place to
    ``options.adjusted``, from which ``cheapen`` warns once listing every
    adjusted block. With ``options.strict`` (``cheapen(..., strict=True)``) it
    is a :class:`fxswap.SpecError` instead. A ratio ``N/d`` asks for ``N/d``
    groups (a fraction when d does not divide N). Without ``options`` (a
    builder that does not take them) an adjusted count warns at once.

    >>> from fxswap.surgery.spec import Ratio
    >>> b = Block("b", 0, 0, 26, 26, 1, 3, (), "pre", "identity")
    >>> options = BuildOptions()
    >>> fit_groups(Ratio("N", 4), 26, "a conv", b, parse_spec("G(N/4)"), options), fit_groups(4, 64, "a conv", b, parse_spec("G(4)"), options)
    (2, 4)
    >>> options.adjusted
    [('b', 'G(N/4)', 26, 'N/4', 2)]
    """
    wanted = channels / arg.divisor if hasattr(arg, "divisor") else arg
    if wanted >= 1 and float(wanted).is_integer() and channels % int(wanted) == 0:
        return int(wanted)
    if options is not None and options.strict:
        count = f"{int(wanted)} groups" if float(wanted).is_integer() and wanted >= 1 else f"groups = {arg}"
        why = (f"{what} has {channels} channels, which {count} do not divide; use a group count that divides "
               f"{channels}, a ratio such as G(N/4) / BG(b,M/4), or strict=False to use the nearest group count "
               f"that divides")
        raise SpecError(f"{spec} on block {block.name!r}: {why}", reason=why)
    used = nearest_divisor(channels, max(wanted, 1))
    if options is None:
        warnings.warn(f"{spec} on block {block.name!r}: {what} has {channels} channels, which {arg} groups do not "
                      f"divide; using {used} (pass the builder's options to fit_groups to have them listed in "
                      f"cheapen's one warning, and strict=True to make this an error)", stacklevel=2)
    else:
        options.adjusted.append((block.name, str(spec), channels, str(arg), used))
    return used


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int, kernel_size, dilation, groups: int,
               bias: bool) -> nn.Conv2d:
    """A conv with ``conv``'s stride, padding rule and class (timm's ``Conv2dSame`` pads at run time).

    Explicit padding is recomputed for the new kernel extent so the output size is kept;
    ``padding="same"`` and same-padding subclasses keep their rule.
    """
    kernel = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    dilation = tuple(dilation) if isinstance(dilation, (tuple, list)) else (dilation, dilation)
    padding = conv.padding
    if getattr(conv, "same_pad", False):
        padding = "same"  # timm's Conv2dSame / StdConv2dSame pad at run time ("same" for any stride)
    elif not isinstance(padding, str):
        old_extent = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        new_extent = [d * (k - 1) for d, k in zip(dilation, kernel)]
        padding = tuple(p + (n - o) // 2 for p, n, o in zip(padding, new_extent, old_extent))
    cls = type(conv) if type(conv) is not nn.Conv2d else nn.Conv2d
    kwargs = dict(stride=conv.stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    if cls is nn.Conv2d:
        return nn.Conv2d(in_channels, out_channels, kernel, padding_mode=conv.padding_mode, **kwargs)
    try:  # subclasses that follow nn.Conv2d's signature (timm's Conv2dSame, StdConv2d)
        return cls(in_channels, out_channels, kernel, **kwargs)
    except TypeError:
        return nn.Conv2d(in_channels, out_channels, kernel, padding_mode=conv.padding_mode, **kwargs)


def create_grouped_pointwise(conv: nn.Conv2d, groups: int, act: nn.Module) -> nn.Sequential:
    """``G(g)`` for one conv: grouped k×k (Cin→Cin, g groups), BN, act, 1×1 (Cin→Cout).

    The width changes across the pointwise conv (Moonshine §3.2).

    >>> m = create_grouped_pointwise(nn.Conv2d(16, 32, 3, 2, 1, bias=False), 4, nn.ReLU())
    >>> [type(x).__name__ for x in m]
    ['Conv2d', 'BatchNorm2d', 'ReLU', 'Conv2d']
    """
    return reference_init(nn.Sequential(OrderedDict(
        grouped=_conv_like(conv, conv.in_channels, conv.in_channels, conv.kernel_size, conv.dilation, groups, False),
        bn=nn.BatchNorm2d(conv.in_channels),
        act=act,
        pointwise=nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None),
    )))


def create_dilated_2x2(conv: nn.Conv2d) -> nn.Conv2d:
    """``S-2x2`` for one conv: a 2×2 kernel dilated to the k×k conv's extent (a 1×k conv gets 1×2).

    >>> create_dilated_2x2(nn.Conv2d(8, 8, 3, 1, 1))
    Conv2d(8, 8, kernel_size=(2, 2), stride=(1, 1), padding=(1, 1), dilation=(2, 2))
    >>> create_dilated_2x2(nn.Conv2d(8, 8, (1, 7), 1, (0, 3)))
    Conv2d(8, 8, kernel_size=(1, 2), stride=(1, 1), padding=(0, 3), dilation=(1, 6))
    """
    extent = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    kernel = tuple(2 if e > 1 else 1 for e in extent)
    dilation = tuple(e - 1 if e > 1 else 1 for e in extent)
    return reference_init(_conv_like(conv, conv.in_channels, conv.out_channels, kernel, dilation, conv.groups,
                            conv.bias is not None))


def _pad(padding: int | str | None, kernel_size: int) -> int | str:
    return kernel_size // 2 if padding is None else padding


def create_bottleneck(in_channels: int, out_channels: int, width: int, kernel_size: int, stride: int,
                      groups: int, act: Callable[[], nn.Module], post_norm: bool,
                      padding: int | str | None = None) -> nn.Sequential:
    """``B(b)`` / ``BG(b,g)``: 1×1 (in→M), BN, act, k×k (M→M, stride, g groups), BN, act, 1×1 (M→out).

    With ``post_norm`` (a post-activation host such as ResNet) a BN follows the
    last 1×1, since the host's own last BN was part of the replaced branch.
    ``padding`` defaults to k // 2 (the host's, where it is known: :attr:`Block.padding`).

    >>> m = create_bottleneck(64, 64, 32, 3, 1, 1, nn.ReLU, post_norm=False)
    >>> sum(p.numel() for n, p in m.named_parameters() if "conv" in n or "down" in n or "up" in n)
    13312
    """
    layers = OrderedDict(
        down=nn.Conv2d(in_channels, width, 1, bias=False),
        bn1=nn.BatchNorm2d(width),
        act1=act(),
        conv=nn.Conv2d(width, width, kernel_size, stride, _pad(padding, kernel_size), groups=groups, bias=False),
        bn2=nn.BatchNorm2d(width),
        act2=act(),
        up=nn.Conv2d(width, out_channels, 1, bias=False),
    )
    if post_norm:
        layers["bn3"] = nn.BatchNorm2d(out_channels)
    return reference_init(nn.Sequential(layers))


def create_separable(in_channels: int, out_channels: int, width: int, kernel_size: int, stride: int,
                     act: Callable[[], nn.Module], post_norm: bool, padding: int | str | None = None,
                     groups: int | None = None) -> nn.Sequential:
    """``B(b)`` on a mixer host (ConvNeXt, FasterNet): depthwise k×k, BN, 1×1 (in→M), act, 1×1 (M→out).

    The host's depthwise token mixer is kept; its MLP's hidden width becomes M.
    ``groups`` (``BG``) gives the k×k conv that many groups instead (default: depthwise).

    >>> m = create_separable(64, 64, 128, 7, 1, nn.GELU, post_norm=False)
    >>> [type(x).__name__ for x in m]
    ['Conv2d', 'BatchNorm2d', 'Conv2d', 'GELU', 'Conv2d']
    """
    layers = OrderedDict(
        dw=nn.Conv2d(in_channels, in_channels, kernel_size, stride, _pad(padding, kernel_size),
                     groups=groups or in_channels, bias=False),
        bn1=nn.BatchNorm2d(in_channels),
        fc1=nn.Conv2d(in_channels, width, 1),
        act=act(),
        fc2=nn.Conv2d(width, out_channels, 1),
    )
    if post_norm:
        layers["bn2"] = nn.BatchNorm2d(out_channels)
    return reference_init(nn.Sequential(layers))


def create_mlp(in_features: int, out_features: int, hidden: int, act: Callable[[], nn.Module],
               channels_last: bool) -> nn.Sequential:
    """``B(b)`` on an MLP branch: Linear (in→hidden), act, Linear (hidden→out); 1×1 convs on NCHW maps.

    >>> create_mlp(192, 192, 384, nn.GELU, channels_last=True)
    Sequential(
      (fc1): Linear(in_features=192, out_features=384, bias=True)
      (act): GELU(approximate='none')
      (fc2): Linear(in_features=384, out_features=192, bias=True)
    )
    """
    if channels_last:
        fc1, fc2 = nn.Linear(in_features, hidden), nn.Linear(hidden, out_features)
    else:
        fc1, fc2 = nn.Conv2d(in_features, hidden, 1), nn.Conv2d(hidden, out_features, 1)
    return nn.Sequential(OrderedDict(fc1=fc1, act=act(), fc2=fc2))


class ChannelsLast(nn.Module):
    """``(B, C, H, W) -> (B, H, W, C)``: follows a branch substitute whose host ends channels-last.

    >>> import torch
    >>> ChannelsLast()(torch.zeros(1, 8, 4, 5)).shape
    torch.Size([1, 4, 5, 8])
    """

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def for_host(substitute: nn.Module, block: Block) -> nn.Module:
    """``substitute`` (NCHW in and out) as the host needs it: permuted to channels-last where the host's
    branch ends channels-last (:attr:`Block.channels_last_out`).

    >>> b = Block("b", 0, 0, 8, 8, 1, 3, (), "pre", "identity", channels_last_out=True)
    >>> [type(m).__name__ for m in for_host(nn.Conv2d(8, 8, 1), b)]
    ['Conv2d', 'ChannelsLast']
    """
    if not block.channels_last_out or isinstance(substitute, nn.Linear):
        return substitute
    return nn.Sequential(OrderedDict(branch=substitute, to_channels_last=ChannelsLast()))


@register_substitute("I", level="remove", example="I")
@register_substitute("S", level="keep", example="S")
def _no_builder(*_):  # S keeps the block, I removes its branch: nothing to build
    return None


@register_substitute("G", level="conv", params=("N",), kinds=("basic", "bottleneck", "inverted", "mixer", "other"),
                     targets=lambda block: block.full_convs, example="G(4), G(N/4)")
def _grouped(spec: BlockSpec, conv: nn.Conv2d, block: Block, options: BuildOptions | None = None) -> nn.Module:
    groups = fit_groups(spec.groups.value, conv.in_channels, "a conv", block, spec, options)
    return create_grouped_pointwise(conv, groups, _act(block))


@register_substitute("S-2x2", level="conv", kinds=("basic", "bottleneck", "inverted", "mixer", "other"),
                     example="S-2x2")
def _dilated(spec: BlockSpec, conv: nn.Conv2d, block: Block) -> nn.Module:
    return create_dilated_2x2(conv)


def _bottleneck_width(spec: BlockSpec, block: Block) -> int:
    """M = the host's inner width // b, floored as the reference code does (``out_planes // b``), at least 1."""
    return max(1, (block.width or block.out_channels) // spec.bottleneck)


@register_substitute("B", level="branch", params=("int",), kinds=("basic", "bottleneck", "inverted", "other"),
                     example="B(2)")
@register_substitute("BG", level="branch", params=("int", "M"), kinds=("basic", "bottleneck", "inverted", "other"),
                     example="BG(2,4), BG(2,M/8)")
def _bottleneck(spec: BlockSpec, block: Block, options: BuildOptions | None = None) -> nn.Module:
    width = _bottleneck_width(spec, block)
    groups = 1  # Moonshine's B: a full k×k conv
    if block.depthwise:  # an inverted residual keeps its depthwise conv
        groups = width
    elif block.kind == "bottleneck" and block.groups > 1:  # ResNeXt / RegNet keep their cardinality
        groups = fit_groups(block.groups, width, "the bottleneck's grouped conv", block, spec, options)
    if spec.kind == "BG":
        groups = fit_groups(spec.groups.value, width, f"the bottleneck (M = {block.width}//{spec.bottleneck})",
                            block, spec, options)
    return create_bottleneck(block.in_channels, block.out_channels, width, block.kernel_size, block.branch_stride,
                             groups, lambda: _act(block), post_norm=block.order == "post", padding=block.padding)


@register_substitute("B", level="branch", params=("int",), kinds=("mixer",))
@register_substitute("BG", level="branch", params=("int", "M"), kinds=("mixer",))
def _separable(spec: BlockSpec, block: Block, options: BuildOptions | None = None) -> nn.Module:
    width = _bottleneck_width(spec, block)
    groups = None
    if spec.kind == "BG":  # g groups (M/d: of M = H//b) on the k×k conv, fitted to its channels
        arg = spec.groups.value
        wanted = max(1, width // arg.divisor) if hasattr(arg, "divisor") else arg
        groups = fit_groups(wanted, block.in_channels, f"the k×k conv (M = {block.width}//{spec.bottleneck})",
                            block, spec, options)
    return create_separable(block.in_channels, block.out_channels, width, block.kernel_size,
                            block.branch_stride, lambda: _act(block), post_norm=block.order == "post",
                            padding=block.padding, groups=groups)


@register_substitute("B", level="branch", params=("int",), kinds=("mlp",))
def _mlp(spec: BlockSpec, block: Block) -> nn.Module:
    return create_mlp(block.in_channels, block.out_channels, _bottleneck_width(spec, block), lambda: _act(block),
                      channels_last=block.channels_last)


def conv_params(spec: BlockSpec | str, n: int, k: int = 3) -> int:
    """Moonshine Table 1: convolution parameters of a block of width N (N in = N out).

    ``S``: 2N²k²; ``G(g)``: 2N²(k²/g + 1); ``B(b)``: N²(k²/b² + 2/b);
    ``BG(b,g)``: N²(k²/(g b²) + 2/b); ``S-2x2``: 2·4N²; ``I``: 0.

    >>> conv_params("G(N/4)", 64), conv_params("BG(2,M/8)", 64)
    (12800, 6400)
    """
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
