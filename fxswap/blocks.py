"""Finding residual blocks by graph pattern (analysis only: nothing is mutated).

A residual block is an ``add`` whose two operands meet at a common ancestor
(the block input), with at least one convolution between that ancestor and
the add. The operand path with the convolutions is the *branch*; the other is
the *shortcut* (identity when it is the block input itself). Matching is by
role, not by module class: any ``nn.Conv2d`` (or ``F.conv2d``) is a
convolution, any batch/group/layer norm a normalisation, so timm's fused
``BatchNormAct2d``, torchvision's ``Conv2dNormActivation`` and user blocks are
all recognised.

Before (torchvision ``BasicBlock``, as traced)::

    x ─┬─ conv1 ─ bn1 ─ relu ─ conv2 ─ bn2 ─┐
       └──────────────────────────────────── add ─ relu

``find_blocks`` reports it as::

    Block(name='layer1.0', stage=0, in_channels=64, out_channels=64, stride=1,
          order='post', shortcut='identity', convs=('layer1.0.conv1', 'layer1.0.conv2'))

>>> import torchvision
>>> blocks = find_blocks(torchvision.models.resnet18())
>>> [(b.name, b.stage, b.stride, b.shortcut) for b in blocks][1:3]
[('layer1.1', 0, 1, 'identity'), ('layer2.0', 1, 2, 'projection')]
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import NoBlocksError
from .trace import node_scope, trace

__all__ = ["Block", "find_blocks", "is_add", "common_path"]

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_NORM_FUNCTIONS = (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, torch.batch_norm)
_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU,
    nn.PReLU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.SELU, nn.CELU,
)
_ACT_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.mish, F.leaky_relu, F.elu, torch.sigmoid)
_ACT_METHODS = ("relu", "relu_", "sigmoid", "tanh")
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Block:
    """One residual block, as found in the traced graph.

    ``name`` is the module path a user recognises (``layer2.0``); ``convs`` the
    module paths of the branch's convolutions in order; ``order`` is ``"pre"``
    (BN-act before each conv, WRN) or ``"post"`` (conv-BN, ResNet);
    ``shortcut`` is ``"identity"`` or ``"projection"``. The remaining fields
    anchor the rewrite passes (see :mod:`fxswap.rewrite`).

    >>> import fxswap
    >>> b = fxswap.find_blocks(fxswap.models.wrn(16, 1))[3]
    >>> b.name, b.stage, b.in_channels, b.out_channels, b.stride, b.order, b.shortcut
    ('layer2.1', 1, 32, 32, 1, 'pre', 'identity')
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
    # anchors for rewriting (qualnames / module paths in the traced graph)
    add: str = field(default="", repr=False)
    first_conv: str = field(default="", repr=False)
    last_conv: str = field(default="", repr=False)
    tail: str = field(default="", repr=False)
    region_scope: str = field(default="", repr=False)
    add_scope: str = field(default="", repr=False)
    region_problem: str | None = field(default=None, repr=False)
    act_type: type | None = field(default=None, repr=False, compare=False)
    #: convs that ``G`` rewrites: k×k with k > 1 and a single group
    full_convs: tuple[str, ...] = field(default=(), repr=False)
    #: convs that ``S-2x2`` rewrites: any k×k with k > 1
    spatial_convs: tuple[str, ...] = field(default=(), repr=False)
    #: cumulative downsampling of the block output relative to the model input
    scale: float = field(default=1.0, repr=False)
    #: layout ops (permute back to NCHW) after ``tail`` that belong to the replaced branch
    tail_skip: int = field(default=0, repr=False)



def is_add(node: fx.Node) -> bool:
    """True for ``a + b``, ``a += b``, ``torch.add(a, b)`` and ``a.add(b)`` on two tensors.

    >>> from fxswap import trace
    >>> from fxswap.models import wrn
    >>> [n.meta["qualname"] for n in trace(wrn(10, 1)).graph.nodes if is_add(n)]
    ['layer1.0.add', 'layer2.0.add', 'layer3.0.add']
    """
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        pass
    elif node.op == "call_method" and node.target in ("add", "add_"):
        pass
    else:
        return False
    if "alpha" in node.kwargs:
        return False
    return len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2])


def common_path(paths: Iterable[str]) -> str:
    """Longest common dotted prefix: ``common_path(["a.b.c", "a.b.d"]) == "a.b"``.

    Whole path components only (never a partial name):

    >>> common_path(["layer2.0.conv1", "layer2.0.bn2"]), common_path(["layer1.0", "layer10.0"])
    ('layer2.0', '')
    """
    parts = None
    for p in paths:
        items = p.split(".") if p else []
        if parts is None:
            parts = items
        else:
            k = 0
            while k < min(len(parts), len(items)) and parts[k] == items[k]:
                k += 1
            parts = parts[:k]
    return ".".join(parts or [])


class _GraphView:
    """Roles and ancestry of a traced graph's nodes (ancestor sets as int bitsets)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(gm.named_modules())
        self.anc: list[int] = []
        for n in self.nodes:
            bits = 0
            for inp in n.all_input_nodes:
                j = self.index[inp]
                bits |= self.anc[j] | (1 << j)
            self.anc.append(bits)
        self.scale = self._scales()
        out = [n for n in self.nodes if n.op == "output"]
        self._live = _bits(self, out[-1]) if out else 0

    def live(self, n: fx.Node) -> bool:
        """Whether ``n`` feeds the output (``torch._assert`` chains do not)."""
        return bool(self._live >> self.index[n] & 1)

    def module(self, n: fx.Node) -> nn.Module | None:
        return self.modules.get(n.target) if n.op == "call_module" else None

    def is_conv(self, n: fx.Node) -> bool:
        m = self.module(n)
        if m is not None:
            return isinstance(m, nn.Conv2d)
        return n.op == "call_function" and n.target in (F.conv2d, torch.conv2d)

    def is_mixer(self, n: fx.Node) -> bool:
        return self.is_conv(n) or isinstance(self.module(n), nn.Linear)

    def is_norm(self, n: fx.Node) -> bool:
        m = self.module(n)
        if m is not None:
            return isinstance(m, _NORM_MODULES)
        return n.op == "call_function" and n.target in _NORM_FUNCTIONS

    def act_type(self, n: fx.Node) -> type | None:
        m = self.module(n)
        if m is not None:
            if isinstance(m, _NORM_MODULES) and isinstance(getattr(m, "act", None), _ACT_MODULES):
                return type(m.act)  # timm's BatchNormAct2d
            return type(m) if isinstance(m, _ACT_MODULES) else None
        if n.op == "call_function" and n.target in _ACT_FUNCTIONS:
            return {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU, F.gelu: nn.GELU,
                    F.hardswish: nn.Hardswish, F.mish: nn.Mish}.get(n.target, nn.ReLU)
        if n.op == "call_method" and n.target in _ACT_METHODS:
            return nn.ReLU if n.target.startswith("relu") else None
        return None

    def _stride_of(self, n: fx.Node) -> float:
        m = self.module(n)
        if m is not None:
            if isinstance(m, nn.Conv2d) or isinstance(m, _POOL_MODULES):
                s = m.stride if m.stride is not None else m.kernel_size
                return float(s[0] if isinstance(s, tuple) else s)
            if isinstance(m, _GLOBAL_POOLS):
                return float("inf")
            s = getattr(m, "stride", None)  # e.g. timm's BlurPool2d, AvgPool2dSame
            if isinstance(s, (int, tuple)) and not isinstance(m, nn.Linear):
                return float(s[0] if isinstance(s, tuple) else s)
            return 1.0
        if n.op == "call_function":
            if n.target in (F.conv2d, torch.conv2d):
                s = n.kwargs.get("stride", n.args[3] if len(n.args) > 3 else 1)
                return float(s[0] if isinstance(s, (tuple, list)) else s)
            if n.target in (F.max_pool2d, F.avg_pool2d, torch.max_pool2d):
                k = n.kwargs.get("kernel_size", n.args[1] if len(n.args) > 1 else 1)
                s = n.kwargs.get("stride", n.args[2] if len(n.args) > 2 else None) or k
                return float(s[0] if isinstance(s, (tuple, list)) else s)
            if n.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
                return float("inf")
            if n.target in (torch.mean, torch.amax, torch.sum) and _reduces_space(n):
                return float("inf")
            if n.target is operator.getitem and isinstance(n.args[1], tuple):
                steps = [sl.step for sl in n.args[1][2:] if isinstance(sl, slice) and sl.step]
                return float(steps[0]) if steps else 1.0
        if n.op == "call_method" and n.target in ("mean", "amax", "sum", "max") and _reduces_space(n):
            return float("inf")
        return 1.0

    def _scales(self) -> list[float | None]:
        """Downsampling of each node's output relative to the input; None if it
        does not depend on the input (parameters, constants). A broadcast op
        (SE's ``x * gate``) keeps the finer resolution, hence ``min``."""
        out: list[float | None] = []
        for n in self.nodes:
            if n.op == "placeholder":
                out.append(1.0)
                continue
            known = [out[self.index[i]] for i in n.all_input_nodes if out[self.index[i]] is not None]
            out.append(min(known) * self._stride_of(n) if known else None)
        return out

    def members(self, bits: int) -> list[fx.Node]:
        res, i = [], 0
        while bits:
            if bits & 1:
                res.append(self.nodes[i])
            bits >>= 1
            i += 1
        return res


def _reduces_space(n: fx.Node) -> bool:
    """``x.mean((2, 3))`` and friends: a global pool written as a reduction."""
    dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
    dims = set(dims) if isinstance(dims, (tuple, list)) else {dims}
    return {2, 3} <= dims or {-1, -2} <= dims


_TUPLE_OPS = (torch.split, torch.chunk, torch.unbind, torch.tensor_split, operator.getitem)


def _tensor_entry(node: fx.Node) -> fx.Node:
    """Step up from a split/chunk/getitem to the tensor it takes apart."""
    while (node.op == "call_function" and node.target in _TUPLE_OPS) or (
        node.op == "call_method" and node.target in ("split", "chunk", "unbind")
    ):
        node = node.args[0]
    return node


def _is_layout(n: fx.Node) -> bool:
    """A permute/transpose (function or method): moves channels, computes nothing."""
    if n.op == "call_method":
        return n.target in ("permute", "transpose", "contiguous")
    return n.op == "call_function" and n.target in (torch.permute, torch.transpose)


def _is_cat(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in (torch.cat, torch.concat) and isinstance(n.args[0], (list, tuple))


def _bits(view: _GraphView, n: fx.Node) -> int:
    return view.anc[view.index[n]] | (1 << view.index[n])


def _path_between(view: _GraphView, src: int, operand: fx.Node) -> int:
    """Bitset of nodes on the way from node ``src`` (exclusive) to ``operand`` (inclusive)."""
    bits = _bits(view, operand) >> (src + 1) << (src + 1)
    keep = 0
    for n in view.members(bits):
        if view.anc[view.index[n]] >> src & 1:
            keep |= 1 << view.index[n]
    return keep


def _analyse_add(view: _GraphView, add: fx.Node):
    a, b = add.args[0], add.args[1]
    common = _bits(view, a) & _bits(view, b)
    if not common:
        return None
    src = common.bit_length() - 1
    paths = [_path_between(view, src, a), _path_between(view, src, b)]
    convs = [[n for n in view.members(p) if view.is_conv(n)] for p in paths]
    if not convs[0] and not convs[1]:
        return None
    # the branch has more convolutions (ties: the longer path)
    k = max((0, 1), key=lambda i: (len(convs[i]), bin(paths[i]).count("1")))
    return view.nodes[src], view.members(paths[k]), view.members(paths[1 - k]), convs[k]


def _region(view: _GraphView, branch: list[fx.Node], convs: list[fx.Node], tail: fx.Node):
    """The single-entry, single-exit part of the branch from its convolutions to ``tail``.

    The entry is the lowest common ancestor of the convs' inputs (one tensor
    even when a selective-kernel conv splits it into parallel paths), so a
    pre-activation BN-act before the first conv stays outside the region.
    """
    inputs = [c.args[0] for c in convs if c.args and isinstance(c.args[0], fx.Node)]
    if not inputs:
        return None, "its first convolution has no tensor input", None
    common = -1
    for inp in inputs:
        common &= _bits(view, inp)
    if common <= 0:
        return None, "its convolutions share no input", None
    entry = _tensor_entry(view.nodes[common.bit_length() - 1])
    return (*_region_from(view, branch, entry, tail), entry)


def _region_from(view: _GraphView, branch: list[fx.Node], entry: fx.Node, tail: fx.Node):
    e = view.index[entry]
    branch_set = set(branch)
    region = [n for n in view.members(_bits(view, tail)) if n in branch_set and view.anc[view.index[n]] >> e & 1]
    region_set = set(region)
    for n in region:
        for inp in n.all_input_nodes:
            if inp not in region_set and inp is not entry and inp.op != "get_attr":
                return region, f"the branch takes a second input ({inp.meta.get('qualname', inp.name)}) between its convolutions"
        # users with no users of their own are checks (torch._assert), not data flow
        if n is not tail and any(u not in region_set and view.live(u) for u in n.users):
            return region, f"{n.meta.get('qualname', n.name)} is used outside the branch"
    return region, None


def find_blocks(model: nn.Module | fx.GraphModule, leaf_modules=()) -> list[Block]:
    """Find every residual block with a convolution on its branch, in graph order.

    Accepts a model (traced with :func:`fxswap.trace`, which never mutates it)
    or a GraphModule made by :func:`fxswap.trace`. Raises
    :class:`fxswap.NoBlocksError` if there is none.

    >>> from fxswap.models import wrn
    >>> blocks = find_blocks(wrn(10, 2))
    >>> [(b.name, b.in_channels, b.out_channels, b.stride, b.order) for b in blocks]
    [('layer1.0', 16, 32, 1, 'pre'), ('layer2.0', 32, 64, 2, 'pre'), ('layer3.0', 64, 128, 2, 'pre')]
    """
    gm = model if isinstance(model, fx.GraphModule) and _has_qualnames(model) else trace(model, leaf_modules)
    view = _GraphView(gm)
    found = []
    for add in view.nodes:
        if not is_add(add):
            continue
        analysed = _analyse_add(view, add)
        if analysed is None:
            continue
        src, branch, shortcut, convs = analysed
        # gates (SE, SK attention) run on globally pooled maps: not the main path
        on_map = [n for n in branch if view.scale[view.index[n]] not in (None, float("inf"))]
        convs = [n for n in convs if n in on_map] or convs
        mixers = [n for n in on_map if view.is_mixer(n)] or convs
        first, last = convs[0], mixers[-1]
        last_conv = convs[-1]
        norms_after = [n for n in branch if view.is_norm(n) and view.index[n] > view.index[last]]
        order = "post" if norms_after else "pre"
        tail = norms_after[0] if norms_after else last
        region, problem, entry = _region(view, branch, convs, tail)
        tail_skip = 0
        if region and any(_is_layout(n) for n in region):
            # channels-last inside the branch (ConvNeXt: permute, LayerNorm, Linear, permute back):
            # the substitute works in NCHW, so the permute back belongs to what it replaces
            branch_set = set(branch)
            nxt = tail
            while len(nxt.users) == 1 and _is_layout(next(iter(nxt.users))) and next(iter(nxt.users)) in branch_set:
                nxt = next(iter(nxt.users))
                tail_skip += 1
                region = region + [nxt]
        if problem is None and (first.op != "call_module" or tail.op != "call_module"):
            problem = "its convolutions or norms are functional calls, not modules"
        conv_mods = [view.module(n) for n in convs]
        first_mod, last_mod = view.module(first), view.module(last)
        in_ch = getattr(first_mod, "in_channels", None) or getattr(first_mod, "in_features", 0)
        split_paths = [c for c in convs if entry is not None and c.args[0] is not entry and _tensor_entry(c.args[0]) is entry]
        if split_paths:  # selective kernel: each path convolves a slice of the input
            in_ch = sum(view.module(c).in_channels for c in split_paths)
        out_ch = getattr(last_mod, "out_channels", None) or getattr(last_mod, "out_features", 0)
        joined = [u for u in last.users if _is_cat(u)]
        if joined and all(view.is_conv(a) and view.module(a) is not None for a in joined[0].args[0]):
            # mixed kernels (MixConv): parallel convs on channel slices, concatenated
            out_ch = sum(view.module(a).out_channels for a in joined[0].args[0])
        kernel = max((m.kernel_size[0] for m in conv_mods if m is not None), default=1)
        norm = next((type(view.module(n)).__name__ for n in branch if view.is_norm(n) and view.module(n) is not None), None)
        act_type = next((t for t in (view.act_type(n) for n in on_map) if t is not None), None)
        scope_add = node_scope(add)
        scopes = [node_scope(n) for n in branch]
        add_scope = common_path([scope_add] + scopes)
        region_scope = common_path(node_scope(n) for n in region) if region else add_scope
        name = scope_add or common_path(str(n.target) for n in branch if n.op == "call_module") or add.meta["qualname"]
        stride = view.scale[view.index[add]] / view.scale[view.index[src]]
        block = Block(
            name=name, index=len(found), stage=0,
            in_channels=int(in_ch), out_channels=int(out_ch),
            stride=int(stride) if stride == int(stride) else stride,
            kernel_size=kernel,
            convs=tuple(str(n.target) if n.op == "call_module" else n.meta["qualname"] for n in convs),
            order=order,
            shortcut="projection" if any(not isinstance(view.module(n), nn.Identity) for n in shortcut) else "identity",
            norm=norm, act=act_type.__name__ if act_type else None,
            add=add.meta["qualname"], first_conv=str(first.target), last_conv=str(last_conv.target),
            tail=str(tail.target), region_scope=region_scope, add_scope=add_scope,
            region_problem=problem, act_type=act_type,
            full_convs=tuple(str(n.target) for n, m in zip(convs, conv_mods)
                             if m is not None and m.groups == 1 and max(m.kernel_size) > 1),
            spatial_convs=tuple(str(n.target) for n, m in zip(convs, conv_mods)
                                if m is not None and max(m.kernel_size) > 1),
            scale=view.scale[view.index[add]],
            tail_skip=tail_skip,
        )
        found.append(block)
    if not found:
        raise NoBlocksError(
            f"no residual block with a convolution on its branch was found in {type(model).__name__}: fxswap looks "
            f"for an add whose two operands share an input, with a conv between them (ResNet/WRN/MobileNetV2-style "
            f"blocks). Plain feed-forward CNNs (VGG, AlexNet) have none."
        )
    return _finalise(found)


def _finalise(found: list[Block]) -> list[Block]:
    """Number stages by resolution and make names unique (two adds in one module)."""
    scales = sorted({b.scale for b in found})
    counts: dict[str, int] = {}
    for b in found:
        counts[b.name] = counts.get(b.name, 0) + 1
    return [
        dataclasses.replace(b, name=b.name if counts[b.name] == 1 else b.add, stage=scales.index(b.scale))
        for b in found
    ]


def _has_qualnames(gm: fx.GraphModule) -> bool:
    return all("qualname" in n.meta for n in gm.graph.nodes)
