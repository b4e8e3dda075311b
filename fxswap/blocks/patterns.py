"""Residual-add patterns: which operand of an ``add`` is a block's branch, its region, its host kind.

The analysis :func:`fxswap.blocks.find_blocks` runs on each add, kept apart from
the :class:`~fxswap.blocks.Block` record it builds so that the match
(:mod:`fxswap.blocks.match`) can re-pick a branch operand without importing the
block finder.

>>> from fxswap.models import wrn
>>> from fxswap.tracing.tracer import trace
>>> view = GraphView(trace(wrn(10, 1)))
>>> add = next(n for n in view.nodes if is_add(n))
>>> branch_operand(view, add)
1
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..tracing.graph import GraphView, ancestry, is_add, path_between, region_from, tensor_entry  # noqa: F401 (is_add: doctest)

__all__ = ["KINDS", "analyse_add", "branch_operand", "branch_region", "node_shape", "host_kind", "layer_of"]

#: Host kinds, by what the branch computes (docs/specs.md says what each spec does on each).
KINDS = {
    "basic": "k×k convs only (ResNet/WRN basic block)",
    "bottleneck": "1×1 reduce, full or grouped k×k, 1×1 expand (ResNet-50, ResNeXt, RegNet)",
    "inverted": "1×1 expand, depthwise k×k, 1×1 project (MobileNetV2, MBConv, optional SE)",
    "mixer": "depthwise or partial spatial conv, then a pointwise MLP (ConvNeXt, FasterNet, MetaFormer)",
    "mlp": "pointwise layers only: Linear/1×1 - act - Linear/1×1 (a transformer's MLP)",
    "attention": "self-attention (Linear/1×1 projections, matmul or softmax; or one opaque attention module)",
    "other": "any other branch with convolutions (multi-branch, nested adds) or one opaque module with weights",
}

_ATTENTION_FUNCTIONS = (F.scaled_dot_product_attention, torch.matmul, torch.bmm, torch.softmax, F.softmax,
                        operator.matmul, torch.einsum, torch.baddbmm)
_ATTENTION_METHODS = ("softmax", "matmul", "bmm")


def analyse_add(view: GraphView, add: fx.Node):
    a, b = add.args[0], add.args[1]
    common = ancestry(view, a) & ancestry(view, b)
    if not common:
        return None
    src = common.bit_length() - 1
    paths = [path_between(view, src, a), path_between(view, src, b)]
    mixers = [[n for n in view.members(p) if view.is_mixer(n)] for p in paths]
    if not mixers[0] and not mixers[1]:
        return _analyse_opaque_add(view, add, src, paths)
    # the branch has more mixers (ties: the longer path)
    k = max((0, 1), key=lambda i: (len(mixers[i]), bin(paths[i]).count("1")))
    convs = [n for n in mixers[k] if view.is_conv(n)]
    if not convs:
        # Linear-only: a residual only if the other operand is the input itself (not two heads summed)
        # and the branch works on maps or tokens, not on pooled features (a classifier)
        if mixers[1 - k] or view.scale[view.index[add]] in (None, float("inf")):
            return None
        convs = mixers[k]
    return view.nodes[src], view.members(paths[k]), view.members(paths[1 - k]), convs, k


def _analyse_opaque_add(view: GraphView, add: fx.Node, src: int, paths: list[int]):
    """An add whose branch's only layers are opaque units (:meth:`GraphView.is_unit`: a leaf attention module,
    torchvision Swin's ``ShiftedWindowAttention``): a residual when one operand has units and the other none,
    on maps or tokens (not pooled features)."""
    units = [[n for n in view.members(p) if view.is_unit(n) and _reads_data(view, n, src, p)] for p in paths]
    if bool(units[0]) == bool(units[1]) or view.scale[view.index[add]] in (None, float("inf")):
        return None
    k = 0 if units[0] else 1
    return view.nodes[src], view.members(paths[k]), view.members(paths[1 - k]), units[k], k


def _reads_data(view: GraphView, unit: fx.Node, src: int, path: int) -> bool:
    """Whether ``unit`` takes a tensor from the block input, not only sizes read off it (a positional encoding
    built from ``x.shape`` is no branch of ``x``)."""
    inputs = [i for i in unit.all_input_nodes if view.index[i] == src or path >> view.index[i] & 1]
    return any(not _is_size(i) for i in inputs)


_SIZE_ARITHMETIC = (operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub, operator.truediv)


def _is_size(n: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()`` and integers computed from them."""
    if n.op == "call_function" and n.target is getattr:
        return n.args[1] in ("shape", "ndim")
    if n.op == "call_method":
        return n.target in ("size", "dim")
    if n.op == "call_function" and n.target in _SIZE_ARITHMETIC:
        return bool(n.all_input_nodes) and all(_is_size(i) for i in n.all_input_nodes)
    return False


def layer_of(module: nn.Module | None, last: bool = False) -> nn.Module | None:
    """The conv or Linear that reads (``last``: writes) a unit's channels: itself, else its first (last) one."""
    if module is None or isinstance(module, (nn.Conv2d, nn.Linear)):
        return module
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return (layers[-1] if last else layers[0]) if layers else module


def branch_operand(view: GraphView, add: fx.Node) -> int | None:
    """Which operand of a residual ``add`` is its branch (0 or 1), by the rule :func:`find_blocks` uses.

    >>> from fxswap.models import wrn
    >>> from fxswap.tracing.tracer import trace
    >>> view = GraphView(trace(wrn(10, 1)))
    >>> add = next(n for n in view.nodes if is_add(n))
    >>> branch_operand(view, add), add.args[branch_operand(view, add)].meta["qualname"]
    (1, 'layer1.0.conv2')
    """
    analysed = analyse_add(view, add)
    return None if analysed is None else analysed[-1]


def branch_region(view: GraphView, branch: list[fx.Node], convs: list[fx.Node], tail: fx.Node):
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
        common &= ancestry(view, inp)
    if common <= 0:
        return None, "its convolutions share no input", None
    entry = tensor_entry(view.nodes[common.bit_length() - 1])
    return (*region_from(view, branch, entry, tail), entry)


def node_shape(node: fx.Node | None):
    meta = node.meta.get("tensor_meta") if node is not None else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_attention(view: GraphView, branch: list[fx.Node]) -> bool:
    for n in branch:
        if n.op == "call_function" and n.target in _ATTENTION_FUNCTIONS:
            return True
        if n.op == "call_method" and n.target in _ATTENTION_METHODS:
            return True
        if n.op == "call_module" and any(w in type(view.module(n)).__name__.lower() for w in ("attn", "attention")):
            return True
        if view.is_unit(n) and _computes_attention(type(view.module(n))):
            return True
    return False


_ATTENTION_NAMES = {"softmax", "matmul", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention"}


def _computes_attention(cls: type) -> bool:
    """Whether an opaque unit's own code multiplies tensors or takes a softmax (timm's GPSA, LiteMLA): read from
    the bytecode of the methods its classes define, since fx does not trace into it."""
    import dis

    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.") or klass is object:
            continue
        for fn in vars(klass).values():
            code = getattr(fn, "__code__", None)
            if code is None:
                continue
            if _ATTENTION_NAMES & set(code.co_names):
                return True
            if any(i.argrepr in ("@", "@=") for i in dis.get_instructions(code) if i.opname.startswith("BINARY")):
                return True
    return False


def host_kind(view: GraphView, branch: list[fx.Node], mixers: list[nn.Module]) -> str:
    convs = [m for m in mixers if isinstance(m, nn.Conv2d)]
    spatial = [m for m in convs if max(m.kernel_size) > 1]
    pointwise = [m for m in mixers if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and max(m.kernel_size) == 1)]
    if not spatial:  # (a softmax next to k×k convs is a gate, SK/ResNeSt split attention, not a token mixer)
        return "attention" if _is_attention(view, branch) else "mlp" if pointwise else "other"
    dw = [m for m in spatial if m.groups > 1 and m.groups == m.in_channels]
    first_spatial = next(i for i, m in enumerate(mixers) if m in spatial)
    if dw:
        return "inverted" if first_spatial > 0 else "mixer"
    if len(spatial) == len(convs) == len(mixers):
        return "basic"
    if first_spatial > 0 and len(mixers) >= 3 and mixers[-1] in pointwise:
        return "bottleneck"
    return "mixer" if first_spatial == 0 and len(spatial) == 1 and pointwise else "other"
