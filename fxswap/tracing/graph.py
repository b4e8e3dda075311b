"""Graph analysis shared by the passes: roles, ancestry and regions of a traced graph.

:class:`GraphView` indexes a :func:`fxswap.trace` graph once: each node's
ancestors as an int bitset, its role (conv, norm, activation, token mixer) and
its downsampling relative to the model input. The helpers below answer the
questions block finding, rewriting, probing and sectioning ask of it.

>>> from fxswap import trace
>>> from fxswap.models import wrn
>>> view = GraphView(trace(wrn(10, 1)))
>>> adds = [n for n in view.nodes if is_add(n)]
>>> [n.meta["qualname"] for n in adds], [view.scale[view.index[n]] for n in adds]
(['layer1.0.add', 'layer2.0.add', 'layer3.0.add'], [1.0, 2.0, 4.0])
"""
from __future__ import annotations

import math
import operator
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GraphView", "is_add", "common_path", "ancestry", "path_between", "region_from", "region_problem",
    "tensor_entry",
    "is_layout", "is_cat",
]

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


class GraphView:
    """Roles and ancestry of a traced graph's nodes (ancestor sets as int bitsets).

    ``nodes`` in graph order, ``index`` their positions, ``anc[i]`` the bitset
    of node i's ancestors, ``scale[i]`` its downsampling relative to the input
    (``None`` for constants, ``inf`` after a global pool).

    >>> from fxswap import trace
    >>> from fxswap.models import wrn
    >>> view = GraphView(trace(wrn(10, 1)))
    >>> [n.target for n in view.nodes if view.is_conv(n)][:2]
    ['conv1', 'layer1.0.conv1']
    """

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
        self._live = ancestry(self, out[-1]) if out else 0

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

    def is_unit(self, n: fx.Node) -> bool:
        """An opaque layer: a leaf module with parameters that is no conv, Linear, norm or activation.

        fx keeps such a module as one call (timm's not-traceable attention, ``nn.MultiheadAttention``, a
        module handing its weights to a ``torch.fx.wrap``-ped function): fxswap cannot see its layers, but a
        branch made of it is still a residual branch (``I`` removes it; no substitute can be built from it).
        """
        m = self.module(n)
        if m is None or isinstance(m, (nn.Conv2d, nn.Linear)) or self.is_norm(n) or self.act_type(n) is not None:
            return False
        return next(m.parameters(), None) is not None

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


def tensor_entry(node: fx.Node) -> fx.Node:
    """Step up from a split/chunk/getitem to the tensor it takes apart.

    >>> g = fx.symbolic_trace(lambda x: torch.split(x, 2)[0] + 1).graph
    >>> [n.name for n in g.nodes], tensor_entry(list(g.nodes)[2]).name
    (['x', 'split', 'getitem', 'add', 'output'], 'x')
    """
    while (node.op == "call_function" and node.target in _TUPLE_OPS) or (
        node.op == "call_method" and node.target in ("split", "chunk", "unbind")
    ):
        node = node.args[0]
    return node


def is_layout(n: fx.Node) -> bool:
    """A permute/transpose (function or method): moves channels, computes nothing.

    >>> g = fx.symbolic_trace(lambda x: x.permute(0, 2, 3, 1).relu()).graph
    >>> [is_layout(n) for n in g.nodes]
    [False, True, False, False]
    """
    if n.op == "call_method":
        return n.target in ("permute", "transpose", "contiguous")
    return n.op == "call_function" and n.target in (torch.permute, torch.transpose)


def is_cat(n: fx.Node) -> bool:
    """A ``torch.cat`` of a list of tensors (the join of parallel convs).

    >>> g = fx.symbolic_trace(lambda x: torch.cat([x, x], 1)).graph
    >>> [is_cat(n) for n in g.nodes]
    [False, True, False]
    """
    return n.op == "call_function" and n.target in (torch.cat, torch.concat) and isinstance(n.args[0], (list, tuple))


def ancestry(view: GraphView, n: fx.Node) -> int:
    """Bitset of ``n`` and all its ancestors (bit i = ``view.nodes[i]``).

    >>> view = GraphView(fx.symbolic_trace(lambda x: (x + 1) * 2))
    >>> bin(ancestry(view, view.nodes[2]))
    '0b111'
    """
    return view.anc[view.index[n]] | (1 << view.index[n])


def path_between(view: GraphView, src: int, operand: fx.Node) -> int:
    """Bitset of nodes on the way from node ``src`` (exclusive) to ``operand`` (inclusive).

    >>> view = GraphView(fx.symbolic_trace(lambda x: (x + 1) * 2))
    >>> [n.name for n in view.members(path_between(view, 0, view.nodes[2]))]
    ['add', 'mul']
    """
    bits = ancestry(view, operand) >> (src + 1) << (src + 1)
    keep = 0
    for n in view.members(bits):
        if view.anc[view.index[n]] >> src & 1:
            keep |= 1 << view.index[n]
    return keep


def region_from(view: GraphView, branch: list[fx.Node], entry: fx.Node, tail: fx.Node):
    """The nodes of ``branch`` from ``entry`` (exclusive) to ``tail``, and what stops them being one region.

    Returns ``(region, problem)``; ``problem`` is ``None`` when the region has
    a single input (``entry``) and a single output (``tail``), see :func:`region_problem`.

    >>> view = GraphView(fx.symbolic_trace(lambda x: (x + 1) * 2 + x))
    >>> region, problem = region_from(view, view.nodes, view.nodes[0], view.nodes[2])
    >>> [n.name for n in region], problem
    (['add', 'mul'], None)
    """
    e = view.index[entry]
    branch_set = set(branch)
    region = [n for n in view.members(ancestry(view, tail)) if n in branch_set and view.anc[view.index[n]] >> e & 1]
    return region, region_problem(view, region, entry, tail)


def region_problem(view: GraphView, region: list[fx.Node], entry: fx.Node, tail: fx.Node) -> str | None:
    """Why ``region`` is not one piece that reads only ``entry`` and hands on only ``tail`` (``None``: it is).

    A substitute can replace exactly such a region: its one input is the
    substitute's input, its one output what the substitute's output replaces.
    Parameters (``get_attr``) may be read from anywhere.

    >>> view = GraphView(fx.symbolic_trace(lambda x: (x + 1) * 2 + x))
    >>> x, add, mul, add_1 = view.nodes[:4]
    >>> region_problem(view, [add, mul], x, mul), region_problem(view, [mul], x, mul)
    (None, 'the branch takes a second input (add) between its convolutions')
    >>> region_problem(view, [add, mul], x, add)
    'mul is used outside the branch'
    """
    region_set = set(region)
    for n in region:
        for inp in n.all_input_nodes:
            if inp not in region_set and inp is not entry and inp.op != "get_attr":
                return f"the branch takes a second input ({inp.meta.get('qualname', inp.name)}) between its convolutions"
        # users with no users of their own are checks (torch._assert), not data flow
        if n is not tail and any(u not in region_set and view.live(u) for u in n.users):
            return f"{n.meta.get('qualname', n.name)} is used outside the branch"
    return None
