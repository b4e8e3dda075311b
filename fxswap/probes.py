"""Probes: intermediate tensors returned as graph outputs, not collected by hooks.

``probe(model, points)`` traces the model and makes the chosen nodes extra
outputs, so the result works under ``torch.compile``, DDP and
``torch.export`` (no Python side effects), and the model's train/eval
behaviour is kept (see :func:`fxswap.tracing.tracer.retrace_both_modes`).

Before::

    x ─ conv1 ─ layer1.0 ─ … ─ layer3.5 ─ bn ─ relu ─ pool ─ flatten ─ fc ─▶ output

After ``probe(model, "stages")``::

    x ─ conv1 ─ … ─ fc ─▶ (output, {"layer1.5": ·, "layer2.5": ·, "layer3.5": ·})

Point selectors (a string or a list of them; the result is ordered and unique):

``"blocks"``       every block's output (names: ``layer2.0``)
``"stages"``       the last block of each resolution stage (attention-transfer points, Moonshine §4.1)
``"features"``     the last feature map before global pooling (SRRL's connector input)
``"penultimate"``  the pooled feature the classifier reads (SRRL, seed 004)
``"logits"``       the model output
a block name or glob  ``"layer3.*"``
a node name         any ``node.meta["qualname"]`` of :func:`fxswap.trace`, e.g. ``"layer2.0.conv2"``

>>> from fxswap.models import wrn
>>> import torch
>>> probed = probe(wrn(16, 1), "stages")
>>> out, feats = probed(torch.randn(2, 3, 32, 32))
>>> {k: tuple(v.shape) for k, v in feats.items()}
{'layer1.1': (2, 16, 32, 32), 'layer2.1': (2, 32, 16, 16), 'layer3.1': (2, 64, 8, 8)}
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch.fx as fx
from torch import nn

from .blocks.block import Block, find_blocks
from .tracing.graph import GraphView as _GraphView
from .errors import FxswapError, NoBlocksError
from .tracing.modes import kept_modes
from .tracing.tracer import retrace_both_modes

__all__ = ["probe", "resolve_points", "block_output"]

SELECTORS = ("blocks", "stages", "features", "penultimate", "logits")


def block_output(gm: fx.GraphModule, block: Block) -> fx.Node:
    """The node carrying the block's output out of its module (the add, or the act after it).

    >>> from fxswap import find_blocks, trace
    >>> from fxswap.models import cifar_resnet, wrn
    >>> gm = trace(cifar_resnet(8))                     # post-activation: add, then ReLU
    >>> block_output(gm, find_blocks(gm)[0]).meta["qualname"]
    'layer1.0.relu2'
    >>> gm = trace(wrn(10, 1))                          # pre-activation: the add itself
    >>> block_output(gm, find_blocks(gm)[0]).meta["qualname"]
    'layer1.0.add'
    """
    by_name = {n.meta.get("qualname"): n for n in gm.graph.nodes}
    add = by_name[block.add]
    prefix = block.name + "."
    node = add
    # follow single-user nodes still inside the block module (post-activation ReLU, drop-path)
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op == "output" or not _inside(user, prefix):
            break
        node = user
    return node


def _inside(node: fx.Node, prefix: str) -> bool:
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    return bool(stack) and (stack[-1] + ".").startswith(prefix)


def _classifier_input(view: _GraphView) -> tuple[fx.Node | None, fx.Node | None]:
    """(feature map before global pooling, pooled feature read by the classifier)."""
    out = [n for n in view.nodes if n.op == "output"][0]
    result = out.args[0]
    if not isinstance(result, fx.Node):
        return None, None
    inf = float("inf")
    # the pooled feature: the last node on the output's path that is globally pooled
    # and feeds the last linear / 1x1 classifier
    classifier = None
    for n in reversed(view.nodes):
        if view.index[n] > view.index[result] or not (view.anc[view.index[result]] >> view.index[n] & 1 or n is result):
            continue
        if view.is_mixer(n) and view.scale[view.index[n]] == inf:
            classifier = n
            break
    if classifier is None:
        return None, None
    pooled = classifier.args[0]
    feature = None
    for n in reversed(view.nodes[: view.index[pooled] + 1]):
        s = view.scale[view.index[n]]
        if s is not None and s != inf and (view.anc[view.index[pooled]] >> view.index[n] & 1):
            feature = n
            break
    return feature, pooled


def resolve_points(gm: fx.GraphModule, points: str | Sequence[str]) -> dict[str, fx.Node]:
    """Map point selectors to nodes of a graph made by :func:`fxswap.trace`.

    >>> from fxswap import trace
    >>> from fxswap.models import wrn
    >>> list(resolve_points(trace(wrn(10, 1)), ["layer2.*", "penultimate"]))
    ['layer2.0', 'penultimate']
    """
    if isinstance(points, str):
        points = [points]
    try:
        blocks = find_blocks(gm)
    except NoBlocksError:
        blocks = []
    by_qualname = {n.meta.get("qualname"): n for n in gm.graph.nodes}
    view = None
    out: dict[str, fx.Node] = {}
    for p in points:
        if p == "blocks":
            out.update((b.name, block_output(gm, b)) for b in blocks)
        elif p == "stages":
            last = {}
            for b in blocks:
                last[b.stage] = b
            out.update((b.name, block_output(gm, b)) for b in last.values())
        elif p in ("features", "penultimate"):
            view = view or _GraphView(gm)
            feature, pooled = _classifier_input(view)
            node = feature if p == "features" else pooled
            if node is None:
                raise FxswapError(f"cannot find the {p} of {gm.__class__.__name__}: no classifier after a global pool")
            out[p] = node
        elif p == "logits":
            result = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
            if not isinstance(result, fx.Node):
                raise FxswapError("'logits' needs a model that returns one tensor")
            out[p] = result
        else:
            matched = [b for b in blocks if fnmatch.fnmatchcase(b.name, p)]
            if matched:
                out.update((b.name, block_output(gm, b)) for b in matched)
            elif p in by_qualname:
                out[p] = by_qualname[p]
            else:
                names = [b.name for b in blocks]
                raise FxswapError(
                    f"probe point {p!r} matches no block and no node. Accepted: {', '.join(SELECTORS)}, a block name "
                    f"or glob (blocks: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}), or a node name "
                    f"from fxswap.trace(model) (node.meta['qualname'], e.g. 'layer1.0.conv1')"
                )
    return out


def probe(model: nn.Module, points: str | Iterable[str], leaf_modules=()) -> nn.Module:
    """A copy of ``model`` whose forward returns ``(output, {point: tensor})``.

    Shares parameters with ``model`` (it is a view for training, not a copy
    of the weights): train the probed module and the model trains. The
    selectors are described in the module docstring.

    >>> import torch, fxswap
    >>> s = fxswap.cheapen(fxswap.models.wrn(10, 1), "G(N/4)")
    >>> out, f = probe(s, ["blocks", "penultimate"])(torch.randn(1, 3, 32, 32))
    >>> list(f)
    ['layer1.0', 'layer2.0', 'layer3.0', 'penultimate']
    """
    check_model(model, "probe")
    points = point_list(points, "probe")

    def edit(gm: fx.GraphModule) -> None:
        nodes = resolve_points(gm, points)
        output = [n for n in gm.graph.nodes if n.op == "output"][0]
        output.args = ((output.args[0], dict(nodes)),)

    # the probed module shares the model's submodules, and tracing switches their
    # modes: give every one its own flag back (a frozen BN stays frozen)
    with kept_modes(model):
        return retrace_both_modes(model, edit, tuple(leaf_modules))


def check_model(model, who: str) -> None:
    """Raise a clear :class:`FxswapError` unless ``model`` is an ``nn.Module``.

    >>> check_model("resnet18", "probe")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: probe needs a torch.nn.Module (the model object, not its name), got str 'resnet18'
    """
    if not isinstance(model, nn.Module):
        shown = f" {model!r}" if isinstance(model, (str, bytes, int, float)) else ""
        raise FxswapError(f"{who} needs a torch.nn.Module (the model object, not its name), "
                          f"got {type(model).__name__}{shown[:80]}")


def point_list(points, who: str) -> list[str]:
    """``points`` (one selector or an iterable of them) as a list of strings, or a clear error.

    >>> point_list("stages", "probe"), point_list(("layer1.0", "logits"), "probe")
    (['stages'], ['layer1.0', 'logits'])
    """
    if isinstance(points, str):
        return [points]
    try:
        out = list(points)
    except TypeError:
        out = None
    if not out or not all(isinstance(p, str) for p in out):
        raise FxswapError(f"{who} needs point selectors: a string or a non-empty list of strings "
                          f"({', '.join(SELECTORS)}, a block name or glob, or a node name); got {points!r}")
    return out
