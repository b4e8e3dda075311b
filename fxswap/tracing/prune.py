"""What a graph edit disconnects, and removing it.

fx's ``eliminate_dead_code`` keeps every impure node and all it reads. A shape
check is impure: timm's SelectiveKernel attention starts with
``_assert(x.shape[1] == self.num_paths)`` on the stacked paths, so once a
rewrite cuts that block's branch off the output, the check alone keeps every
path conv in the graph, running in each forward and holding weights no loss
ever reaches (skresnet34 ``B(2)``: 9.8M of 14.6M parameters). A check is only
meaningful while what it checks is used, so :func:`prune_disconnected` drops
the checks that read a value the edit disconnected, then eliminates dead code
and deletes the submodules, parameters and buffers no node uses any more.

>>> import operator, torch, torch.fx as fx
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.branch = torch.nn.Linear(4, 4)
...     def forward(self, x):
...         y = self.branch(x)
...         torch._assert(y.shape[1] == 4, "width")
...         return x + y
>>> gm = fx.symbolic_trace(Net())
>>> before = live_nodes(gm.graph)
>>> add = next(n for n in gm.graph.nodes if n.target is operator.add)
>>> _ = add.replace_all_uses_with(add.args[0]); gm.graph.erase_node(add)
>>> prune_disconnected(gm, before)
>>> [name for name, _ in gm.named_parameters()], [n.op for n in gm.graph.nodes]
([], ['placeholder', 'output'])
"""
from __future__ import annotations

import torch
import torch.fx as fx

__all__ = ["live_nodes", "prune_disconnected", "ancestors", "CHECKS"]

#: calls that only check a value (they return nothing the forward uses)
CHECKS = tuple(f for f in (getattr(torch, name, None) for name in (
    "_assert", "_assert_async", "_assert_scalar", "_check", "_check_is_size", "_check_index", "_check_value",
    "_check_type", "_check_with", "_check_not_implemented", "_check_tensor_all")) if f is not None)


def _is_check(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in CHECKS


def live_nodes(graph: fx.Graph, stands_for: dict[fx.Node, fx.Node] | None = None) -> set[fx.Node]:
    """The nodes the output or a side effect other than a check depends on.

    ``stands_for`` answers "what if": ``{add: shortcut}`` reads every use of
    ``add`` as a use of ``shortcut`` (an ``I`` not yet applied), so a caller
    can see what an edit would disconnect before making it.

    >>> import torch
    >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.ReLU()))
    >>> sorted(n.op for n in live_nodes(gm.graph))
    ['call_module', 'output', 'placeholder']
    """
    stands_for = stands_for or {}
    roots = [n for n in graph.nodes if n.op == "output" or (n.is_impure() and not _is_check(n))]
    live: set[fx.Node] = set()
    stack = [stands_for.get(n, n) for n in roots]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(stands_for.get(i, i) for i in node.all_input_nodes)
    return live


def prune_disconnected(gm: fx.GraphModule, live_before: set[fx.Node]) -> None:
    """Remove from ``gm`` what an edit disconnected: checks of values that were live in ``live_before`` and
    are not now, the dead code behind them, and every submodule, parameter and buffer no node uses.

    Only ``gm``'s own attributes go; a module that something outside ``gm``
    also holds stays alive there.

    >>> import torch
    >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    >>> before = live_nodes(gm.graph)
    >>> last = list(gm.graph.nodes)[-2]                 # the second Linear
    >>> _ = last.replace_all_uses_with(last.args[0]); gm.graph.erase_node(last)
    >>> prune_disconnected(gm, before)
    >>> [name for name, _ in gm.named_parameters()]
    ['0.weight', '0.bias']
    """
    live = live_nodes(gm.graph)
    for node in reversed(list(gm.graph.nodes)):
        if _is_check(node) and not node.users and any(
                i in live_before and i not in live for i in ancestors(node)):
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [name for name, _ in gm.named_parameters(recurse=False) if name not in used]:
        delattr(gm, name)
    for name in [name for name, _ in gm.named_buffers(recurse=False) if name not in used]:
        delattr(gm, name)


def ancestors(node: fx.Node) -> set[fx.Node]:
    """Every node ``node`` reads, directly or not.

    >>> import torch
    >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.ReLU()))
    >>> sorted(n.name for n in ancestors(list(gm.graph.nodes)[-1]))
    ['_0', '_1', 'input_1']
    """
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen

