"""Splitting a model into sections at probe points (LIT's sections, SRRL's teacher head).

``split_sections(model, ["layer1.5", "layer2.5"])`` returns modules
``[S_1, S_2, S_3]`` with ``S_3(S_2(S_1(x))) == model(x)``: ``S_1`` maps the
input to the ``layer1.5`` output, ``S_2`` that to the ``layer2.5`` output, and
``S_3`` the rest to the model's output. Each section is a GraphModule cut out
of the traced graph and shares its parameters with ``model``.

Before::

    x ─ conv1 ─ layer1 ─┬─ layer2 ─┬─ layer3 ─ bn ─ pool ─ fc
                        ▲ cut      ▲ cut

After: ``S_1 = conv1 ─ layer1``, ``S_2 = layer2``, ``S_3 = layer3 ─ bn ─ pool ─ fc``.

>>> import torch
>>> from fxswap.models import wrn
>>> m = wrn(10, 1).eval()
>>> s1, s2, s3 = split_sections(m, ["layer1.0", "layer2.0"])
>>> x = torch.randn(2, 3, 32, 32)
>>> torch.allclose(s3(s2(s1(x))), m(x))
True
"""
from __future__ import annotations

from typing import Sequence

import torch.fx as fx
from torch import nn

from .tracing.graph import GraphView as _GraphView
from .errors import FxswapError
from .tracing.modes import kept_modes
from .probes import check_model, point_list, resolve_points
from .tracing.tracer import ModeSwitch, trace

__all__ = ["split_sections"]


def _cut(gm: fx.GraphModule, view: _GraphView, start: fx.Node | None, end: fx.Node | None) -> fx.GraphModule:
    """The subgraph computing ``end`` (or the model output) from ``start`` (or the model input)."""
    output = [n for n in view.nodes if n.op == "output"][0]
    targets = [end] if end is not None else output.all_input_nodes
    needed, stack = set(), list(targets)
    while stack:  # walk back from the section's output, stopping at the cut
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        if n is start:
            continue
        if start is not None and n.op == "placeholder":
            raise FxswapError(f"cannot cut the model at {start.meta.get('qualname')}: a later node reads the "
                              f"model input {n.name!r} directly")
        stack.extend(n.all_input_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in view.nodes:
        if n not in needed:
            continue
        env[n] = graph.placeholder("x") if n is start else graph.node_copy(n, lambda a: env[a])
    result = env[end] if end is not None else fx.node.map_arg(output.args[0], lambda a: env[a])
    graph.output(result)
    sec = fx.GraphModule(gm, graph, gm.__class__.__name__ + "Section")
    sec.recompile()
    return sec


def _split(gm: fx.GraphModule, points: Sequence[str]) -> list[fx.GraphModule]:
    nodes = list(resolve_points(gm, list(points)).values())
    if len(nodes) != len(points):
        raise FxswapError(f"section points {list(points)} must each name one point")
    view = _GraphView(gm)
    order = [view.index[n] for n in nodes]
    if order != sorted(order):
        raise FxswapError(f"section points {list(points)} are not in graph order")
    bounds = [None, *nodes, None]
    return [_cut(gm, view, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def split_sections(model: nn.Module, points: Sequence[str], leaf_modules=()) -> list[nn.Module]:
    """Cut ``model`` at ``points`` (probe selectors naming one node each) into ``len(points)+1`` sections.

    Train/eval behaviour is kept as in :func:`fxswap.probe`; see the module docstring.

    >>> import torch
    >>> from fxswap.models import wrn
    >>> head, tail = split_sections(wrn(10, 1), ["layer2.0"])
    >>> feat = head(torch.randn(2, 3, 32, 32))
    >>> feat.shape, tail(feat).shape
    (torch.Size([2, 32, 16, 16]), torch.Size([2, 10]))
    """
    check_model(model, "split_sections")
    points = point_list(points, "split_sections")
    was = model.training
    per_mode = []
    # the sections share the model's submodules; kept_modes gives each its own
    # flag back, where model.train(was) would reset a frozen BN to train mode
    with kept_modes(model):
        for mode in (True, False):
            model.train(mode)
            per_mode.append(_split(trace(model, leaf_modules), points))
        out = []
        for tr, ev in zip(*per_mode):
            sec = tr if tr.code == ev.code else ModeSwitch(tr, ev)
            sec.train(was)
            out.append(sec)
    return out
