"""What a block's rewrite replaces, matched once by the analysis (the match-then-replace contract).

:func:`fxswap.find_blocks` matches each residual block once, on the trace of
the whole model, and records a :class:`BlockMatch` on it: the residual
``add``, which of its operands is the branch, and the branch's *region* (the
nodes a branch substitute replaces, from the tensor it reads, ``entry``,
exclusive, to the node whose output it hands on, ``exit``), each node by its
qualname (a layer by its module path, an op by its module's path and the op).
The rewrite (:mod:`fxswap.surgery.rewrite`) never searches the graph again. It edits
the re-trace of the block's *owner* (the smallest module whose forward runs
the region, or, for ``I``, the add), so that the student keeps the user's
classes, and :func:`locate` maps the match onto that trace node by node, or
raises :class:`fxswap.errors.MatchError` naming the node that did not map.
Analysis and mutation stay apart, as in ``torch.fx.subgraph_rewriter``
(match, then replace the matched nodes) and Torch-Pruning (the dependency
graph records a group, pruning consumes it).

WRN's pre-activation block ``layer2.1`` (the BN-ReLU before ``conv1`` stays
outside the region: it may feed a projection shortcut too)::

    x ─┬─ bn1 ─ relu1 ─┬ conv1 ─ bn2 ─ relu2 ─ dropout ─ conv2 ┬─┐
       │        entry  └──────────── region ───────────── exit ┘ │
       └──────────────────────────────────────────────────────── add

>>> from fxswap import find_blocks
>>> from fxswap.models import wrn
>>> match = find_blocks(wrn(16, 1))[3].match
>>> match.entry, match.nodes, match.exit, match.add, match.branch_index
('layer2.1.relu1', ('layer2.1.conv1', 'layer2.1.bn2', 'layer2.1.relu2', 'layer2.1.dropout', 'layer2.1.conv2'), 'layer2.1.conv2', 'layer2.1.add', 1)
>>> match.owner("branch"), match.within("layer2.1").nodes
('layer2.1', ('conv1', 'bn2', 'relu2', 'dropout', 'conv2'))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.fx as fx

from ..errors import MatchError
from ..tracing.graph import GraphView, common_path, is_add, region_problem
from ..tracing.tracer import node_scope
from .patterns import branch_operand

__all__ = ["BlockMatch", "LocatedBranch", "LocatedAdd", "match_block", "locate", "relative_path"]

#: what a rewrite edits: the branch's region (``B``, ``BG``) or the residual add (``I``)
PARTS = ("branch", "add")


def relative_path(path: str, owner: str) -> str | None:
    """``path`` relative to module ``owner`` (``None`` when it is not inside it).

    >>> relative_path("layer2.0.conv1", "layer2.0"), relative_path("layer2.0.conv1", ""), relative_path("layer20.x", "layer2")
    ('conv1', 'layer2.0.conv1', None)
    """
    if not owner:
        return path
    return path[len(owner) + 1:] if path.startswith(owner + ".") else None


@dataclass(frozen=True)
class BlockMatch:
    """The nodes of one residual block, by qualname in the trace they were matched in.

    ``add`` is the residual add and ``branch_index`` which of its operands is
    the branch (``branch_out`` names that operand). ``nodes`` is the branch's
    region in graph order, ``entry`` (exclusive) to ``exit`` (inclusive):
    empty when the branch is not one single-entry, single-exit piece (then
    ``Block.region_problem`` says why). ``modules`` are the module paths of
    the layers the region calls; ``region_owner`` / ``add_owner`` the
    modules whose re-trace a branch / add rewrite edits (see :meth:`owner`).
    Names are those of the model's trace; :meth:`within` gives them relative
    to an owner, as that owner's own trace names them.

    >>> m = BlockMatch(add="s.add", branch_index=1, branch_out="s.conv2", entry="s.relu",
    ...                nodes=("s.conv1", "s.relu_1", "s.conv2"), modules=("s.conv1", "s.conv2"), region_owner="s")
    >>> m.exit, m.within("s").entry, m.within("s").add
    ('s.conv2', 'relu', 'add')
    """

    add: str
    branch_index: int
    branch_out: str = ""
    entry: str = ""
    nodes: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    region_owner: str = ""
    add_owner: str = ""

    @property
    def exit(self) -> str:
        """The region's last node: what the substitute's output replaces ("" when there is no region)."""
        return self.nodes[-1] if self.nodes else ""

    def owner(self, part: str) -> str:
        """The module whose re-trace a rewrite of ``part`` (``"branch"`` or ``"add"``) edits.

        >>> BlockMatch(add="a.add", branch_index=0, region_owner="a.b", add_owner="a").owner("add")
        'a'
        """
        if part not in PARTS:
            raise ValueError(f"part is one of {PARTS}, got {part!r}")
        return self.region_owner if part == "branch" else self.add_owner

    def within(self, owner: str) -> BlockMatch:
        """The same match with every name relative to module ``owner`` ("" for a name outside it).

        A name outside ``owner`` is a tensor its forward receives (the block
        input, a branch passed in): in the owner's trace it is an input.

        >>> BlockMatch(add="a.add", branch_index=0, entry="stem", nodes=("a.conv",)).within("a").entry
        ''
        """
        def rel(name: str) -> str:
            return (relative_path(name, owner) or "") if name else ""

        return dataclasses.replace(
            self, add=rel(self.add), branch_out=rel(self.branch_out), entry=rel(self.entry),
            nodes=tuple(rel(n) for n in self.nodes), modules=tuple(rel(m) for m in self.modules),
            region_owner=rel(self.region_owner) if self.region_owner != owner else "",
            add_owner=rel(self.add_owner) if self.add_owner != owner else "",
        )


def _qualname(node: fx.Node) -> str:
    return node.meta.get("qualname", node.name)


def match_block(add: fx.Node, branch_index: int, branch: list[fx.Node], entry: fx.Node | None,
                region: list[fx.Node] | None) -> BlockMatch:
    """Record the match of one residual block from the nodes the analysis found.

    ``branch`` is the add's branch operand path, ``region`` the single-entry,
    single-exit part a substitute replaces (``None`` or empty when there is
    none), ``entry`` the tensor the region reads.

    >>> from fxswap import trace
    >>> from fxswap.models import wrn
    >>> nodes = {n.meta["qualname"]: n for n in trace(wrn(10, 1)).graph.nodes}
    >>> region = [nodes[q] for q in ("layer1.0.conv1", "layer1.0.bn2", "layer1.0.relu2", "layer1.0.conv2")]
    >>> m = match_block(nodes["layer1.0.add"], 1, region, nodes["layer1.0.relu1"], region)
    >>> m.modules, m.region_owner, m.add_owner
    (('layer1.0.conv1', 'layer1.0.bn2', 'layer1.0.relu2', 'layer1.0.conv2'), 'layer1.0', 'layer1.0')
    """
    branch_out = _qualname(add.args[branch_index])
    add_scope = node_scope(add)
    enclosing = common_path([add_scope] + [node_scope(n) for n in branch])
    region = list(region or ())
    # I retraces the add's own module, unless the branch is computed outside it (passed in as an argument)
    add_owner = add_scope if relative_path(branch_out, add_scope) is not None else enclosing
    return BlockMatch(
        add=_qualname(add), branch_index=branch_index, branch_out=branch_out,
        entry=_qualname(entry) if entry is not None and region else "",
        nodes=tuple(_qualname(n) for n in region),
        modules=tuple(str(n.target) for n in region if n.op == "call_module"),
        region_owner=common_path(node_scope(n) for n in region) if region else enclosing,
        add_owner=add_owner,
    )


@dataclass(frozen=True)
class LocatedBranch:
    """A match's region in a trace: what a branch substitute reads, replaces and hands on (see :func:`locate`).

    >>> import torch
    >>> g = fx.symbolic_trace(lambda x: x + torch.relu(x) * 2).graph
    >>> x, relu, mul = list(g.nodes)[:3]
    >>> LocatedBranch(x, mul, (relu, mul)).exit.name
    'mul'
    """

    entry: fx.Node
    exit: fx.Node
    nodes: tuple[fx.Node, ...]


@dataclass(frozen=True)
class LocatedAdd:
    """A match's residual add in a trace, with its branch and shortcut operands (see :func:`locate`).

    >>> import torch
    >>> g = fx.symbolic_trace(lambda x: x + torch.relu(x)).graph
    >>> x, relu, add = list(g.nodes)[:3]
    >>> LocatedAdd(add, relu, x).shortcut.name
    'x'
    """

    add: fx.Node
    branch: fx.Node
    shortcut: fx.Node


_WHY_MISSING = ("the module is shared with another block or called from elsewhere, or a nested block that this "
                "plan rewrites too changed it first: give the inner or the outer block 'S'")


def locate(match: BlockMatch, gm: fx.GraphModule, owner: str, part: str) -> LocatedBranch | LocatedAdd:
    """Map ``match`` onto ``gm``, the :func:`fxswap.trace` of module ``owner``, for a rewrite of ``part``.

    Every node of the match is found by its qualname relative to ``owner``
    (the trace of ``layer2.0`` calls ``layer2.0.conv1`` ``conv1``). For
    ``"branch"`` the located nodes must still be one region whose only input
    is the entry (the match's entry, or the owner's input when the entry lies
    outside it) and whose only output is the exit; for ``"add"`` the add must
    still be a residual add whose branch operand is the matched one (unless an
    earlier ``I`` in this trace replaced that operand: a running sum, where
    `fxswap.blocks.patterns.branch_operand` picks it again). Anything else
    raises :class:`fxswap.errors.MatchError` saying which node did not map.

    >>> from fxswap import find_blocks, trace
    >>> from fxswap.models import wrn
    >>> model = wrn(10, 1)
    >>> match = find_blocks(model)[1].match
    >>> found = locate(match, trace(model.layer2[0]), "layer2.0", "branch")
    >>> found.entry.name, found.exit.name, len(found.nodes)
    ('relu1', 'conv2', 5)
    >>> locate(match, trace(model.layer3[0]), "layer3.0", "branch")
    Traceback (most recent call last):
    ...
    fxswap.errors.MatchError: node 'layer2.0.conv1' is not inside module 'layer3.0'
    """
    if part not in PARTS:
        raise ValueError(f"part is one of {PARTS}, got {part!r}")
    where = repr(owner) if owner else "the model"
    by_name = {_qualname(n): n for n in gm.graph.nodes}

    def find(name: str, what: str) -> fx.Node:
        rel = relative_path(name, owner)
        if rel is None:
            raise MatchError(f"{what} {name!r} is not inside module {where}")
        node = by_name.get(rel)
        if node is None:
            raise MatchError(f"{what} {name!r} does not run in the trace of {where} ({_WHY_MISSING})")
        return node

    if part == "add":
        add = find(match.add, "its residual add")
        if not is_add(add) or match.branch_index >= 2:
            raise MatchError(f"{match.add!r} in the trace of {where} is not the residual add that was matched "
                             f"({add.op} {getattr(add.target, '__name__', add.target)})")
        branch, shortcut = add.args[match.branch_index], add.args[1 - match.branch_index]
        rel_out = relative_path(match.branch_out, owner) if match.branch_out else None
        if rel_out is not None and _qualname(branch) != rel_out:
            # a running sum (``out = a(x) + b(x); out += c(x)``) whose inner add an earlier I removed: the
            # matched operand is gone, and the branch is what find_blocks' rule picks in the edited graph
            k = branch_operand(GraphView(gm), add)
            if k is None:
                raise MatchError(f"the branch operand of {match.add!r} in the trace of {where} is "
                                 f"{_qualname(branch)!r}, not the matched {match.branch_out!r}, and its two "
                                 f"operands share no input ({_WHY_MISSING})")
            branch, shortcut = add.args[k], add.args[1 - k]
        return LocatedAdd(add, branch, shortcut)

    if not match.nodes:
        raise MatchError("its branch is not one piece with a single input and a single output")
    nodes = [find(name, "node") for name in match.nodes]
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes.sort(key=index.__getitem__)
    exit_node = find(match.exit, "the branch's last node")
    inside = set(nodes)
    inputs = {i for n in nodes for i in n.all_input_nodes if i not in inside and i.op != "get_attr"}
    rel_entry = relative_path(match.entry, owner) if match.entry else None
    entry = by_name.get(rel_entry) if rel_entry is not None else None
    if entry is None:  # the block input, outside the owner: an input of its forward
        if len(inputs) != 1:
            listed = ", ".join(sorted(_qualname(i) for i in inputs)) or "nothing"
            raise MatchError(f"in the trace of {where} the branch reads {listed}, not one input")
        entry = next(iter(inputs))
    problem = region_problem(GraphView(gm), nodes, entry, exit_node)
    if problem is not None:
        raise MatchError(f"in the trace of {where} the matched branch is no longer one piece: {problem}")
    return LocatedBranch(entry, exit_node, tuple(nodes))
