"""``cheapen``: the rewrite passes that turn a teacher into a cheaper student.

The student is a deep copy of the user's model (same class, methods and
attributes) in which only the rewritten regions change:

* conv-level specs (``G``, ``S-2x2``) swap each targeted ``nn.Conv2d`` module
  for its substitute;
* branch-level specs (``B``, ``BG``) and ``I`` rewrite the graph of the
  smallest module owning the block (``layer2.0``) and put that GraphModule
  back in its place.

Before / after ``B(2)`` on a pre-activation WRN block ``layer2.1``::

    x ─┬─ bn1 ─ relu1 ─ conv1 ─ bn2 ─ relu2 ─ conv2 ─┐        x ─┬─ bn1 ─ relu1 ─ substitute ─┐
       └───────────────────────────────────────── add     →      └──────────────────────── add

>>> from fxswap.models import wrn
>>> student = cheapen(wrn(16, 2), {"layer3.*": "B(2)", "*": "G(N/4)"})
>>> type(student).__name__, type(student.layer1[0].conv1).__name__
('WideResNet', 'Sequential')
"""
from __future__ import annotations

import copy
import fnmatch
import operator
import warnings
from typing import Mapping, Sequence, Union

import torch.fx as fx
from torch import nn

from .blocks import Block, _bits, _GraphView, _region_from, _tensor_entry, find_blocks, is_add
from .errors import SpecError
from .spec import BlockSpec, parse_spec
from .substitutes import SUBSTITUTES
from .trace import retrace_both_modes, unpassed_defaults

__all__ = ["cheapen", "resolve_plan", "Plan"]

Plan = Union[str, BlockSpec, Mapping[str, Union[str, BlockSpec]], Sequence[Union[str, BlockSpec]]]


def resolve_plan(blocks: Sequence[Block], plan: Plan) -> dict[str, BlockSpec]:
    """One spec per block name.

    ``plan`` is a spec for every block, a ``{glob: spec}`` dict (first matching
    key wins, unmatched blocks keep ``S``; a key matching no block is an
    error, as it is almost always a typo) or a list with one spec per block.

    >>> from fxswap.models import wrn
    >>> from fxswap import find_blocks
    >>> plan = resolve_plan(find_blocks(wrn(10, 1)), {"layer1.*": "G(2)"})
    >>> {k: str(v) for k, v in plan.items()}
    {'layer1.0': 'G(2)', 'layer2.0': 'S', 'layer3.0': 'S'}
    """
    names = [b.name for b in blocks]
    if isinstance(plan, (str, BlockSpec)):
        spec = parse_spec(plan)
        return {n: spec for n in names}
    if isinstance(plan, Mapping):
        if "plan" in plan and isinstance(plan["plan"], (Mapping, list)):
            return resolve_plan(blocks, plan["plan"])  # a saved search result
        parsed = [(key, parse_spec(value)) for key, value in plan.items()]
        unused = [key for key, _ in parsed if not any(fnmatch.fnmatchcase(n, key) for n in names)]
        if unused:
            raise SpecError(
                f"plan key(s) {unused} match no block; blocks are: {_summarise(names)} (keys are globs, e.g. 'layer3.*')"
            )
        out = {}
        for n in names:
            out[n] = next((spec for key, spec in parsed if fnmatch.fnmatchcase(n, key)), BlockSpec("S"))
        return out
    if isinstance(plan, Sequence):
        if len(plan) != len(names):
            raise SpecError(f"a list plan needs one spec per block: got {len(plan)} for {len(names)} blocks ({_summarise(names)})")
        return {n: parse_spec(s) for n, s in zip(names, plan)}
    raise SpecError(f"a plan is a spec string, a {{glob: spec}} dict or a list of specs; got {type(plan).__name__}")


def _summarise(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 12 else ", ".join(names[:6]) + f", ... ({len(names)} in all)"


def _relative(path: str, owner: str) -> str:
    return path[len(owner) + 1:] if owner else path


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Put ``new`` on the device/dtype of ``old``'s first parameter."""
    ref = next(old.parameters(), None)
    return new.to(device=ref.device, dtype=ref.dtype) if ref is not None else new


def _find_target(gm: fx.GraphModule, target: str, block: Block) -> fx.Node:
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == target:
            return n
    raise SpecError(f"block {block.name!r}: cannot find {target!r} when rewriting its owner module")


def _replace_branch(gm: fx.GraphModule, block: Block, owner: str, sub_name: str, sub: nn.Module) -> None:
    view = _GraphView(gm)
    tail = _find_target(gm, _relative(block.tail, owner), block)
    for _ in range(block.tail_skip):  # a permute back to NCHW after the last Linear (ConvNeXt)
        tail = next(iter(tail.users))
    convs = [_find_target(gm, _relative(c, owner), block) for c in block.convs]
    common = -1
    for c in convs:
        common &= _bits(view, c.args[0])
    entry = _tensor_entry(view.nodes[common.bit_length() - 1])
    region, problem = _region_from(view, list(view.nodes), entry, tail)
    if problem:
        raise SpecError(f"block {block.name!r} cannot take a branch-level spec: {problem}")
    gm.add_submodule(sub_name, sub)
    with gm.graph.inserting_after(tail):
        new = gm.graph.call_module(sub_name, (entry,))
    tail.replace_all_uses_with(new)
    for n in reversed(region):
        if not n.users:
            gm.graph.erase_node(n)


def _remove_branch(gm: fx.GraphModule, block: Block, owner: str) -> None:
    view = _GraphView(gm)
    first = _find_target(gm, _relative(block.first_conv, owner), block)
    f = view.index[first]
    for add in view.nodes:
        if not is_add(add):
            continue
        a, b = add.args[0], add.args[1]
        on_a, on_b = (_bits(view, a) >> f) & 1, (_bits(view, b) >> f) & 1
        if on_a != on_b:
            keep = b if on_a else a
            if any(_in_place(gm, u) for u in add.users):
                # the add made a fresh tensor; an in-place consumer (ReLU(inplace=True))
                # must not overwrite the shortcut that autograd or later blocks still need
                with gm.graph.inserting_before(add):
                    keep = gm.graph.call_method("clone", (keep,))
            add.replace_all_uses_with(keep)
            gm.graph.erase_node(add)
            return
    raise SpecError(f"block {block.name!r}: cannot find its residual add when removing the branch")


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        in_place_operator = node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        return bool(node.kwargs.get("inplace", False)) or in_place_operator
    return False


def cheapen(model: nn.Module, plan: Plan, *, reinit: bool = False, leaf_modules=(), root: str | None = None) -> nn.Module:
    """A cheaper student of ``model``: each block rewritten by its spec.

    ``plan`` is a spec (``"G(N/4)"``), a ``{glob: spec}`` dict or a list, see
    :func:`resolve_plan`. The teacher is never mutated and shares no tensor
    with the student; untouched modules keep copies of the teacher's weights
    and their state-dict keys, substitutes are freshly initialised, and
    ``reinit=True`` re-initialises everything (the papers train students from
    scratch).

    >>> from fxswap.models import wrn
    >>> student = cheapen(wrn(40, 2), "G(N/4)")
    >>> sum(p.numel() for p in student.parameters())
    363066

    ``root="backbone.body"`` rewrites only that submodule (see :mod:`fxswap.partial`).
    """
    if root is not None:  # surgery on part of the model: fxswap.partial traces only the submodule
        from .partial import cheapen_part
        return cheapen_part(model, plan, root, reinit=reinit, leaf_modules=leaf_modules)
    blocks = find_blocks(model, leaf_modules)
    specs = resolve_plan(blocks, plan)
    student = copy.deepcopy(model)
    unchanged = []
    replaced: set[str] = set()  # a conv shared by nested blocks (Res2Net, HRNet) is replaced once
    by_owner: dict[str, list[tuple[Block, BlockSpec]]] = {}
    for block in blocks:
        spec = specs[block.name]
        if spec.kind not in SUBSTITUTES:
            raise SpecError(f"spec {spec} has no registered substitute; register one with fxswap.register_substitute")
        sub = SUBSTITUTES[spec.kind]
        if sub.level == "conv":
            targets = block.full_convs if spec.kind == "G" else block.spatial_convs
            if not targets:
                unchanged.append(block.name)
            for path in targets:
                if path in replaced:
                    continue
                replaced.add(path)
                old = student.get_submodule(path)
                try:
                    new = sub.build(spec, old, block)
                except SpecError as exc:
                    raise SpecError(f"{exc} (the conv is {path!r})") from None
                _set_module(student, path, _like(new, old))
        elif sub.level in ("branch", "remove"):
            if block.region_problem and sub.level == "branch":
                raise SpecError(f"{spec} cannot replace the branch of block {block.name!r}: {block.region_problem}")
            owner = block.region_scope if sub.level == "branch" else block.add_scope
            by_owner.setdefault(owner, []).append((block, spec))
    if unchanged:
        warnings.warn(f"the plan changes nothing in block(s) {', '.join(unchanged)}: they have no convolution "
                      f"that the spec applies to (G needs a full k×k conv, S-2x2 a k×k conv)", stacklevel=2)
    # deepest owners first, so an enclosing owner traces the already rewritten child
    for owner in sorted(by_owner, key=lambda p: -len(p.split("."))):
        student = _rewrite_owner(student, owner, by_owner[owner], leaf_modules)
    if reinit:
        for m in student.modules():
            if hasattr(m, "reset_parameters") and m is not student:
                m.reset_parameters()
    return student


def _rewrite_owner(student: nn.Module, owner: str, edits, leaf_modules) -> nn.Module:
    owner_mod = student.get_submodule(owner) if owner else student
    built = []
    for i, (block, spec) in enumerate(edits):
        if SUBSTITUTES[spec.kind].level == "branch":
            name = _free_name(owner_mod, "substitute", i)
            ref = owner_mod.get_submodule(_relative(block.first_conv, owner))
            built.append((block, spec, name, _like(SUBSTITUTES[spec.kind].build(spec, block), ref)))
        else:
            built.append((block, spec, None, None))

    def edit(gm: fx.GraphModule) -> None:
        for block, spec, name, sub in built:
            if name is None:
                _remove_branch(gm, block, owner)
            else:
                _replace_branch(gm, block, owner, name, sub)

    subs = tuple(sub for *_, sub in built if sub is not None)
    fixed = unpassed_defaults(student, owner, tuple(leaf_modules))
    new = retrace_both_modes(owner_mod, edit, tuple(leaf_modules) + subs, concrete_args=fixed)
    if not owner:
        warnings.warn(f"block(s) {[b.name for b, _ in edits]} live in the model's own forward: the student is a "
                      f"GraphModule, not a {type(student).__name__}", stacklevel=3)
        return new
    _set_module(student, owner, new)
    return student


def _free_name(module: nn.Module, base: str, i: int) -> str:
    name = base if i == 0 else f"{base}_{i}"
    while hasattr(module, name):
        i += 1
        name = f"{base}_{i}"
    return name
