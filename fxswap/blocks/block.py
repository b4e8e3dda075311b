"""Finding residual blocks by graph pattern (analysis only: nothing is mutated).

A residual block is an ``add`` whose two operands meet at a common ancestor
(the block input), with at least one convolution or ``nn.Linear`` between that
ancestor and the add (or, on a branch with neither, an opaque leaf module with
weights: Swin's or timm's not-traceable attention, ``nn.MultiheadAttention``).
The operand path with the mixers is the *branch*; the
other is the *shortcut* (identity when it is the block input itself). Matching
is by role, not by module class: any ``nn.Conv2d`` (or ``F.conv2d``) is a
convolution, any batch/group/layer norm a normalisation, so timm's fused
``BatchNormAct2d``, torchvision's ``Conv2dNormActivation`` and user blocks are
all recognised. Each block gets a ``kind`` (see :data:`KINDS` and docs/specs.md)
that decides what each spec does to it.

Before (torchvision ``BasicBlock``, as traced)::

    x ─┬─ conv1 ─ bn1 ─ relu ─ conv2 ─ bn2 ─┐
       └──────────────────────────────────── add ─ relu

``find_blocks`` reports it as::

    Block(name='layer1.0', kind='basic', stage=0, in_channels=64, out_channels=64, stride=1,
          order='post', shortcut='identity', convs=('layer1.0.conv1', 'layer1.0.conv2'))

>>> import torchvision
>>> blocks = find_blocks(torchvision.models.resnet18())
>>> [(b.name, b.kind, b.stage, b.stride, b.shortcut) for b in blocks][1:3]
[('layer1.1', 'basic', 0, 1, 'identity'), ('layer2.0', 'basic', 1, 2, 'projection')]
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ..errors import NoBlocksError
from .match import BlockMatch, match_block
from .patterns import KINDS, analyse_add, branch_operand, branch_region, host_kind, layer_of, node_shape
from ..tracing.graph import (
    GraphView, common_path, is_add, is_cat, is_layout, region_from, tensor_entry,
)
from ..tracing.modes import kept_modes
from ..tracing.tracer import node_scope, trace

__all__ = ["Block", "KINDS", "find_blocks", "propagate_shapes", "is_add", "common_path", "branch_operand"]



@dataclass(frozen=True)
class Block:
    """One residual block, as found in the traced graph.

    ``name`` is the module path a user recognises (``layer2.0``); ``kind`` the
    host kind (:data:`KINDS`); ``convs`` the module paths of the branch's
    convolutions (or Linear layers, for Linear-only branches) in order;
    ``order`` is ``"pre"`` (BN-act before each conv, WRN) or ``"post"``
    (conv-BN, ResNet); ``shortcut`` is ``"identity"`` or ``"projection"``;
    ``width`` the branch's inner width (the k×k conv's or hidden layer's
    channels, which ``B(b)`` divides by b). ``match`` holds the nodes the
    rewrite replaces (:mod:`fxswap.blocks.match`: the add, its branch operand, the
    branch's region); the remaining fields describe the block further.

    >>> import fxswap
    >>> b = fxswap.find_blocks(fxswap.models.wrn(16, 1))[3]
    >>> b.name, b.kind, b.stage, b.in_channels, b.out_channels, b.stride, b.order, b.shortcut
    ('layer2.1', 'basic', 1, 32, 32, 1, 'pre', 'identity')
    >>> b.convs
    ('layer2.1.conv1', 'layer2.1.conv2')
    """

    name: str
    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    convs: tuple[str, ...]
    order: str
    shortcut: str
    norm: str | None = None
    act: str | None = None
    kind: str = "basic"
    width: int = 0
    # where the block sits (qualnames / module paths in the traced graph); the rewrite reads ``match``
    add: str = field(default="", repr=False)
    first_conv: str = field(default="", repr=False)
    last_conv: str = field(default="", repr=False)
    tail: str = field(default="", repr=False)
    #: whether ``tail`` is a module path (a norm or layer) or the qualname of an op (the sum or concat joining
    #: the branch's paths)
    tail_is_module: bool = field(default=True, repr=False)
    region_scope: str = field(default="", repr=False)
    add_scope: str = field(default="", repr=False)
    #: the module in whose forward the add itself runs (what ``I`` retraces)
    add_owner: str = field(default="", repr=False)
    region_problem: str | None = field(default=None, repr=False)
    act_type: type | None = field(default=None, repr=False, compare=False)
    #: convs that ``G`` rewrites: k×k with k > 1 and a single group
    full_convs: tuple[str, ...] = field(default=(), repr=False)
    #: convs that ``S-2x2`` rewrites: any k×k with k > 1
    spatial_convs: tuple[str, ...] = field(default=(), repr=False)
    #: cumulative downsampling of the block output relative to the model input
    downsampling: float = field(default=1.0, repr=False)
    #: layout ops (permute back to NCHW) after ``tail`` that belong to the replaced branch
    tail_skip: int = field(default=0, repr=False)
    #: the branch works on channels-last tokens (a Linear MLP on ``(B, N, C)``), not NCHW maps
    channels_last: bool = field(default=False, repr=False)
    #: the stride inside the replaced region (a pool after the region, Xception's, is not part of it)
    branch_stride: int = field(default=1, repr=False)
    #: groups of the branch's widest k×k conv (a grouped bottleneck keeps its cardinality under ``B``)
    groups: int = field(default=1, repr=False)
    #: whether the branch's spatial conv is depthwise (kept depthwise by ``B``)
    depthwise: bool = field(default=False, repr=False)
    #: qualname of the add's operand that is the branch (what ``I`` removes; the other operand is kept)
    branch_out: str = field(default="", repr=False)
    #: the replaced region turns NCHW maps into channels-last ``(B, H, W, C)`` (a Linear MLP whose permute
    #: back to NCHW comes after a layer scale): branch substitutes are followed by that permute
    channels_last_out: bool = field(default=False, repr=False)
    #: the k×k padding that keeps the region's output size (an int, or "same" where only an uneven pad
    #: does: a 2×2 conv after a ZeroPad2d); None when shapes are unknown (then k // 2)
    padding: int | str | None = field(default=None, repr=False)
    #: the matched nodes (add, branch operand, region) that the rewrite replaces (:mod:`fxswap.blocks.match`)
    match: BlockMatch | None = field(default=None, repr=False, compare=False)



def find_blocks(model: nn.Module | fx.GraphModule, leaf_modules=(), example_input=None) -> list[Block]:
    """Find every residual block (an add whose branch has a conv or Linear layer), in graph order.

    Accepts a model (traced with :func:`fxswap.trace`, which never mutates it)
    or a GraphModule made by :func:`fxswap.trace`. With ``example_input`` the
    graph is run once (eval mode, no grad; the model's flags are restored) so
    the channel counts come from real shapes (branches that convolve a slice
    of their input, FasterNet's partial conv). Raises
    :class:`fxswap.NoBlocksError` if there is no residual add at all.

    >>> from fxswap.models import wrn
    >>> blocks = find_blocks(wrn(10, 2))
    >>> [(b.name, b.kind, b.in_channels, b.out_channels, b.stride, b.order) for b in blocks]
    [('layer1.0', 'basic', 16, 32, 1, 'pre'), ('layer2.0', 'basic', 32, 64, 2, 'pre'), ('layer3.0', 'basic', 64, 128, 2, 'pre')]
    """
    gm = model if isinstance(model, fx.GraphModule) and _has_qualnames(model) else trace(model, leaf_modules)
    if example_input is not None:
        propagate_shapes(gm, example_input)
    view = GraphView(gm)
    found = []
    for add in view.nodes:
        if not is_add(add):
            continue
        analysed = analyse_add(view, add)
        if analysed is None:
            continue
        *analysed, k = analysed
        found.append(_describe(view, add, *analysed, index=len(found), branch_out=add.args[k].meta.get("qualname", ""),
                               branch_index=k))
    if not found:
        raise NoBlocksError(
            f"no residual block was found in {type(model).__name__}: fxswap looks for an add whose two operands "
            f"share an input, with a conv or Linear layer between them (ResNet/MobileNet/ConvNeXt/ViT-style "
            f"blocks). Plain feed-forward CNNs (VGG, AlexNet), concatenating (DenseNet) and channel-shuffling "
            f"(ShuffleNet) models have none."
        )
    return _finalise(found)


def _region_of(view: GraphView, branch, convs, last):
    """The region a branch-level rewrite replaces: ``(region, problem, entry, tail, tail_skip, order)``.

    From the first conv to the last mixer (pre-activation) or the norm right after it (post-activation), widened
    where the branch's paths join later or a permute back to NCHW follows; ``problem`` says why there is none."""
    norms_after = [n for n in branch if view.is_norm(n) and view.index[n] > view.index[last]]
    order = "post" if norms_after else "pre"
    tail = norms_after[0] if norms_after else last
    region, problem, entry = branch_region(view, branch, convs, tail)
    if entry is not None and (problem is not None or not set(convs) <= set(region or ())):
        # the branch's paths join after its last norm (RepVGG's sum of conv-BNs, GhostNet's concat):
        # the region ends at the first node where it is one piece holding every convolution
        for cand in sorted((n for n in branch if view.index[n] > view.index[tail]), key=view.index.get):
            cand_region, cand_problem = region_from(view, branch, entry, cand)
            if cand_problem is None and set(convs) <= set(cand_region):
                region, problem, tail = cand_region, None, cand
                break
    tail_skip = 0
    if region and any(is_layout(n) for n in region):
        # channels-last inside the branch (ConvNeXt: permute, LayerNorm, Linear, permute back):
        # the substitute works in NCHW, so the permute back belongs to what it replaces
        branch_set = set(branch)
        nxt = tail
        while len(nxt.users) == 1 and is_layout(next(iter(nxt.users))) and next(iter(nxt.users)) in branch_set:
            nxt = next(iter(nxt.users))
            tail_skip += 1
            region = region + [nxt]
    if problem is None and any(c.op != "call_module" for c in convs):
        problem = "its convolutions are functional calls (F.conv2d), not modules"
    opaque = [c for c in convs if view.is_unit(c)]
    if opaque:
        unit = view.module(opaque[0])
        problem = (f"its layer {opaque[0].target!r} ({type(unit).__name__}) is one opaque call that torch.fx "
                   f"does not trace into, so no substitute can be built from its layers")
    if problem is None and region is not None and any(c not in set(region) for c in convs):
        problem = ("its convolutions run on parallel paths that are summed (a re-parameterisable multi-branch "
                   "block, RepVGG/MobileOne style), not one chain of layers that a substitute can replace")
    return region, problem, entry, tail, tail_skip, order, opaque


def _describe(view: GraphView, add: fx.Node, src: fx.Node, branch, shortcut, convs, index: int,
              branch_out: str = "", branch_index: int = 0) -> Block:
    # gates (SE, SK attention) run on globally pooled maps: not the main path
    on_map = [n for n in branch if view.scale[view.index[n]] not in (None, float("inf"))]
    convs = [n for n in convs if n in on_map] or convs
    mixers = [n for n in on_map if view.is_mixer(n)] or convs
    first, last = convs[0], mixers[-1]
    last_conv = convs[-1]
    region, problem, entry, tail, tail_skip, order, opaque = _region_of(view, branch, convs, last)
    conv_mods = [view.module(n) for n in convs]
    mixer_mods = [view.module(n) for n in mixers]
    # an opaque unit's channels are those of the first / last conv or Linear inside it
    first_mod, last_mod = layer_of(view.module(first)), layer_of(view.module(last), last=True)
    only_linear = all(isinstance(m, nn.Linear) for m in conv_mods)
    in_ch = getattr(first_mod, "in_channels", None) or getattr(first_mod, "in_features", 0)
    split_paths = [c for c in convs if entry is not None and c.args[0] is not entry and tensor_entry(c.args[0]) is entry]
    if split_paths:  # selective kernel: each path convolves a slice of the input
        in_ch = sum(getattr(view.module(c), "in_channels", None) or getattr(view.module(c), "in_features", 0)
                    for c in split_paths if view.module(c) is not None)
    out_ch = getattr(last_mod, "out_channels", None) or getattr(last_mod, "out_features", 0)
    joined = [u for u in last.users if is_cat(u)]
    if joined and all(view.is_conv(a) and view.module(a) is not None for a in joined[0].args[0]):
        # mixed kernels (MixConv): parallel convs on channel slices, concatenated
        out_ch = sum(view.module(a).out_channels for a in joined[0].args[0])
    # a Linear acts on the last dim: channels-last there (ConvNeXt's MLP between permutes), NCHW for a conv
    in_dim = -1 if isinstance(first_mod, nn.Linear) else 1
    out_dim = -1 if isinstance(last_mod, nn.Linear) else 1
    entry_shape, tail_shape = node_shape(entry), node_shape(tail)
    # a Linear on a 4-D map acts on its last dim: the branch ends channels-last unless a permute back follows
    channels_last_out = (isinstance(first_mod, nn.Conv2d) and isinstance(last_mod, nn.Linear) and tail_skip == 0
                         and tail_shape is not None and len(tail_shape) == 4)
    if entry_shape and len(entry_shape) > 1:  # real shapes beat module attributes (partial convs, splits)
        in_ch = entry_shape[in_dim]
    if tail_shape and len(tail_shape) > 1:
        out_ch = tail_shape[out_dim]
    kernel = max((m.kernel_size[0] for m in conv_mods if isinstance(m, nn.Conv2d)), default=1)
    norm = next((type(view.module(n)).__name__ for n in branch if view.is_norm(n) and view.module(n) is not None), None)
    act_type = next((t for t in (view.act_type(n) for n in on_map) if t is not None), None)
    scope_add = node_scope(add)
    add_scope = common_path([scope_add] + [node_scope(n) for n in branch])
    region_scope = common_path(node_scope(n) for n in region) if region else add_scope
    name = scope_add or common_path(str(n.target) for n in branch if n.op == "call_module") or add.meta["qualname"]
    ratio = view.scale[view.index[add]] / view.scale[view.index[src]] if view.scale[view.index[src]] else 1.0
    stride = ratio if math.isfinite(ratio) and ratio > 0 else 1.0  # gates and global pools: no map stride
    kind = host_kind(view, branch, [m for m in mixer_mods if m is not None])
    spatial = [m for m in conv_mods if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    depthwise = any(m.groups > 1 and m.groups == m.in_channels for m in spatial)
    groups = max(spatial, key=lambda m: m.out_channels).groups if spatial else 1
    width = _inner_width(kind, mixer_mods, spatial, int(out_ch))
    downsampling = view.scale[view.index[add]]
    inner = view.scale[view.index[tail]] / view.scale[view.index[entry]] if entry is not None and view.scale[view.index[entry]] else 1.0
    branch_stride = int(inner) if math.isfinite(inner) and inner >= 1 and inner == int(inner) else 1
    padding = None
    if isinstance(first_mod, nn.Conv2d) and entry_shape and tail_shape and len(entry_shape) == len(tail_shape) == 4:
        out_size = tail_shape[1:3] if channels_last_out else tail_shape[2:]
        padding = _padding_for(entry_shape[2:], out_size, kernel, branch_stride)
    return Block(
        name=name, index=index, stage=0,
        in_channels=int(in_ch), out_channels=int(out_ch),
        stride=int(stride) if stride == int(stride) else stride,
        kernel_size=kernel,
        convs=tuple(str(n.target) if n.op == "call_module" else n.meta["qualname"] for n in convs),
        order=order,
        shortcut="projection" if any(not isinstance(view.module(n), nn.Identity) for n in shortcut) else "identity",
        norm=norm, act=act_type.__name__ if act_type else None, kind=kind, width=width,
        add=add.meta["qualname"], first_conv=str(first.target),
        last_conv=str(last_conv.target) if not (only_linear or opaque) else "",
        tail=str(tail.target) if tail.op == "call_module" else tail.meta["qualname"],
        tail_is_module=tail.op == "call_module", region_scope=region_scope, add_scope=add_scope, add_owner=scope_add,
        region_problem=problem, act_type=act_type,
        full_convs=tuple(str(n.target) for n, m in zip(convs, conv_mods)
                         if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1),
        spatial_convs=tuple(str(n.target) for n, m in zip(convs, conv_mods)
                            if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1),
        downsampling=downsampling if downsampling is not None and math.isfinite(downsampling) else float("inf"),
        tail_skip=tail_skip, channels_last=only_linear, depthwise=depthwise, branch_stride=branch_stride, groups=groups,
        branch_out=branch_out, channels_last_out=channels_last_out, padding=padding,
        match=match_block(add, branch_index, branch, entry, region if problem is None else None),
    )


def _padding_for(in_size, out_size, kernel: int, stride: int) -> int | str | None:
    """The symmetric padding of a k×k conv with ``stride`` that maps ``in_size`` to ``out_size`` (k // 2
    preferred), ``"same"`` where only an uneven pad does at stride 1, else None.

    >>> _padding_for((8, 8), (8, 8), 3, 1), _padding_for((5, 5), (4, 4), 2, 1), _padding_for((4, 4), (4, 4), 2, 1)
    (1, 0, 'same')
    """
    for p in sorted(range(kernel), key=lambda p: abs(p - kernel // 2)):
        if all((i + 2 * p - kernel) // stride + 1 == o for i, o in zip(in_size, out_size)):
            return p
    if stride == 1 and tuple(in_size) == tuple(out_size):
        return "same"
    return None


def _inner_width(kind: str, mixers: list, spatial: list, out_channels: int) -> int:
    """The width ``B(b)`` divides: Moonshine's N (= out) on a basic block, else the host's inner width."""
    if kind in ("bottleneck", "inverted") and spatial:
        return max(m.out_channels for m in spatial)
    if kind in ("mlp", "mixer"):
        hidden = [getattr(m, "out_features", None) or getattr(m, "out_channels", 0) for m in mixers[:-1]
                  if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and max(m.kernel_size) == 1)]
        if hidden:
            return max(hidden)
    return out_channels


def propagate_shapes(gm: fx.GraphModule, example_input) -> bool:
    """Record each node's output shape (``node.meta["tensor_meta"]``) by one eval-mode run.

    The run is under ``torch.no_grad`` with every module in eval mode; the
    modules' ``training`` flags are restored afterwards. Returns whether it ran.

    >>> from fxswap.models import wrn
    >>> gm = trace(wrn(10, 1))
    >>> propagate_shapes(gm, torch.randn(1, 3, 32, 32)), tuple(gm.graph.find_nodes(op="output")[0].args[0].meta["tensor_meta"].shape)
    (True, (1, 10))
    """
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        # kept_modes: each module's own flag comes back; ShapeProp prints what it re-raises
        with kept_modes(gm), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            gm.eval()
            ShapeProp(gm).propagate(example_input)
        return True
    except Exception:  # a model that cannot run on this input: shapes stay unknown
        return False


def _finalise(found: list[Block]) -> list[Block]:
    """Number stages by resolution and make names unique (two adds in one module)."""
    scales = sorted({b.downsampling for b in found})
    counts: dict[str, int] = {}
    for b in found:
        counts[b.name] = counts.get(b.name, 0) + 1
    return [
        dataclasses.replace(b, name=b.name if counts[b.name] == 1 else b.add, stage=scales.index(b.downsampling))
        for b in found
    ]


def _has_qualnames(gm: fx.GraphModule) -> bool:
    return all("qualname" in n.meta for n in gm.graph.nodes)
