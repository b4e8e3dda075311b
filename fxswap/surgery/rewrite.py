"""``cheapen``: the rewrite passes that turn a teacher into a cheaper student.

The student is a deep copy of the user's model (same class, methods and
attributes) in which only the rewritten regions change:

* conv-level specs (``G``, ``S-2x2``) swap each targeted ``nn.Conv2d`` module
  for its substitute;
* branch-level specs (``B``, ``BG``) and ``I`` rewrite the graph of the
  smallest module owning the block (``layer2.0``) and put that GraphModule
  back in its place. They replace the nodes :func:`fxswap.find_blocks`
  matched (``Block.match``, see :mod:`fxswap.blocks.match`): the owner is re-traced,
  :func:`fxswap.blocks.match.locate` maps the match onto that trace (or says why it
  cannot), and :func:`replace_branch` / :func:`remove_branch` edit exactly the
  located nodes. Nothing is searched for again by name.

Before / after ``B(2)`` on a pre-activation WRN block ``layer2.1``::

    x ─┬─ bn1 ─ relu1 ─ conv1 ─ bn2 ─ relu2 ─ conv2 ─┐        x ─┬─ bn1 ─ relu1 ─ substitute ─┐
       └───────────────────────────────────────── add     →      └──────────────────────── add

>>> from fxswap.models import wrn
>>> student = cheapen(wrn(16, 2), {"layer3.*": "B(2)", "*": "G(N/4)"})
>>> type(student).__name__, type(student.layer1[0].conv1).__name__
('WideResNet', 'Sequential')
"""
from __future__ import annotations

import contextlib
import copy
import io
import fnmatch
import operator
import warnings
from dataclasses import replace
from typing import Mapping, Sequence, Union

import torch

import torch.fx as fx
from torch import nn

from ..blocks.block import KINDS as KIND_TEXT, Block, find_blocks, propagate_shapes
from ..errors import MatchError, SpecError
from ..blocks.match import BlockMatch, LocatedAdd, LocatedBranch, locate
from ..blocks.patterns import node_shape
from .applied import AppliedPlan, attach, detach
from .partial import submodule_at, with_part
from .spec import BlockSpec, parse_spec
from .substitutes import SUBSTITUTES, BuildOptions, conv_targets, for_host
from ..tracing.modes import kept_modes
from ..tracing.prune import ancestors, live_nodes
from ..tracing.tracer import callers, retrace_both_modes, trace, unpassed_defaults

__all__ = ["cheapen", "cheapen_part", "resolve_plan", "Plan", "example_input_for", "replace_branch", "remove_branch",
           "is_larger", "param_count"]

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
            inner = plan["plan"]  # a saved search result: unwrapped once, so a crafted nesting cannot recurse
            if isinstance(inner, Mapping) and isinstance(inner.get("plan"), (Mapping, list)):
                raise SpecError("a saved search result holds one plan, {'plan': {glob: spec}}; got a 'plan' "
                                "nested inside another 'plan'")
            return resolve_plan(blocks, inner)
        bad_keys = [key for key in plan if not isinstance(key, str)]
        if bad_keys:
            raise SpecError(f"plan keys are block-name globs (strings, e.g. 'layer3.*'); got "
                            f"{_summarise([repr(k) for k in bad_keys])} of type {type(bad_keys[0]).__name__}")
        parsed = [(key, parse_spec(value)) for key, value in plan.items()]
        unused = [key for key, _ in parsed if not any(fnmatch.fnmatchcase(n, key) for n in names)]
        if unused:
            raise SpecError(
                f"plan key(s) {_summarise([repr(k) for k in unused], 10)} match no block; blocks are: "
                f"{_summarise(names)} (keys are globs, e.g. 'layer3.*')"
            )
        out = {}
        for n in names:
            out[n] = next((spec for key, spec in parsed if fnmatch.fnmatchcase(n, key)), BlockSpec("S"))
        return out
    if isinstance(plan, Sequence) and not isinstance(plan, (bytes, bytearray)):
        if len(plan) != len(names):
            raise SpecError(f"a list plan needs one spec per block: got {len(plan)} for {len(names)} blocks ({_summarise(names)})")
        return {n: parse_spec(s) for n, s in zip(names, plan)}
    raise SpecError(f"a plan is a spec string, a {{glob: spec}} dict or a list of specs; got {type(plan).__name__}")


def _summarise(names: Sequence[str], at_most: int = 12) -> str:
    """At most ``at_most`` names, then how many there are in all."""
    if len(names) <= at_most:
        return ", ".join(names)
    return ", ".join(names[:at_most]) + f", ... ({len(names)} in all)"


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _like(new: nn.Module, replaced: Sequence[nn.Module], caller: nn.Module) -> nn.Module:
    """Put ``new`` where ``replaced`` were: on the device/dtype of their first parameter (else ``caller``'s),
    and in their train/eval mode.

    The one place a substitute gets its mode. A fresh module trains; left so,
    an eval student would normalise with batch statistics and overwrite the
    new BatchNorms' running stats in a ``no_grad`` eval forward. Where the
    replaced modules agree, every module of ``new`` takes their flag; where
    they disagree (a fine-tuning teacher with its BatchNorms frozen in eval),
    each module of ``new`` takes the flag of the replaced modules of its own
    sort (normalisation or not) when those agree, else the flag of ``caller``,
    the module whose forward calls it.

    >>> conv = nn.Conv2d(4, 4, 3).eval()
    >>> [m.training for m in _like(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), [conv], conv).modules()]
    [False, False, False]
    """
    ref = next((p for m in (*replaced, caller) for p in m.parameters()), None)
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    flags = {m.training for m in replaced}
    for m in new.modules():
        kin = {o.training for o in replaced if _is_norm(o) == _is_norm(m)}
        m.training = (next(iter(flags)) if len(flags) == 1 else next(iter(kin)) if len(kin) == 1
                      else caller.training)
    return new


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def _applicable(block: Block) -> str:
    """Which registered specs serve this block's kind (for error messages)."""
    names = [name for name, sub in SUBSTITUTES.items() if sub.serves(block.kind) and not
             (sub.level == "branch" and block.region_problem) and not (sub.level == "conv" and not conv_targets(name, block))]
    return f"specs that apply to this {block.kind} block: {', '.join(names)}"


class _Kept(SpecError):
    """A block a whole-model spec leaves as it is (why: ``reason``)."""


def _located(gm: fx.GraphModule, block: Block, spec: BlockSpec, owner: str, part: str):
    """The block's match in ``gm`` (the trace of ``owner``); a match that does not map is an error naming the
    block and the specs that apply."""
    if block.match is None:
        why = "it was not found by fxswap.find_blocks (it carries no match)"
        raise SpecError(f"{spec} cannot rewrite block {block.name!r}: {why}; {_applicable(block)}", reason=why)
    try:
        return locate(block.match, gm, owner, part)
    except MatchError as exc:
        raise SpecError(f"{spec} cannot rewrite block {block.name!r}: {exc}; {_applicable(block)}",
                        reason=exc.reason) from None


def replace_branch(gm: fx.GraphModule, found: LocatedBranch, name: str, module: nn.Module) -> fx.Node:
    """Call ``module`` (registered as ``name``) on the located branch's entry in place of its exit.

    Exactly the located nodes go (a node something else still uses would
    stay: :func:`fxswap.blocks.match.locate` has checked there is none); returns
    the new call. Before / after, in the trace of WRN's ``layer1.0``::

        relu1 ─ conv1 ─ bn2 ─ relu2 ─ conv2 ─ add        relu1 ─ substitute ─ add

    >>> from fxswap import find_blocks, trace
    >>> from fxswap.blocks.match import locate
    >>> from fxswap.models import wrn
    >>> model = wrn(10, 1)
    >>> gm = trace(model.layer1[0])
    >>> found = locate(find_blocks(model)[0].match, gm, "layer1.0", "branch")
    >>> new = replace_branch(gm, found, "substitute", nn.Identity())
    >>> [n.name for n in gm.graph.nodes]
    ['x', 'bn1', 'relu1', 'substitute', 'add', 'output']
    """
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(found.exit):
        new = gm.graph.call_module(name, (found.entry,))
    found.exit.replace_all_uses_with(new)
    for n in reversed(found.nodes):
        if not n.users:
            gm.graph.erase_node(n)
    return new


def remove_branch(gm: fx.GraphModule, found: LocatedAdd) -> fx.Node:
    """Replace the located residual add by its shortcut operand (``I``); returns what now stands for the add.

    The branch is left to dead-code elimination. An in-place consumer of the
    add (``ReLU(inplace=True)``) gets a clone, as it must not overwrite the
    shortcut that autograd or later blocks still read.

    >>> from fxswap import find_blocks, trace
    >>> from fxswap.blocks.match import locate
    >>> from fxswap.models import wrn
    >>> model = wrn(10, 1)
    >>> gm = trace(model.layer1[0])
    >>> remove_branch(gm, locate(find_blocks(model)[0].match, gm, "layer1.0", "add")).name
    'x'
    """
    keep = found.shortcut
    if any(_in_place(gm, u) for u in found.add.users):
        with gm.graph.inserting_before(found.add):
            keep = gm.graph.call_method("clone", (keep,))
    found.add.replace_all_uses_with(keep)
    gm.graph.erase_node(found.add)
    return keep


def _replace_branch(gm: fx.GraphModule, block: Block, spec: BlockSpec, owner: str, sub_name: str, sub: nn.Module,
                    costs: dict, caller: nn.Module, cheaper_only: bool = False) -> None:
    found = _located(gm, block, spec, owner, "branch")
    called = dict.fromkeys(n.target for n in found.nodes if n.op == "call_module")
    region = [gm.get_submodule(t) for t in called]
    old = param_count(*region)
    # what the substitute replaces: the region's modules nothing outside it calls (a ReLU module the block
    # also applies after its add stays, with its own flag)
    outside = {n.target for n in gm.graph.nodes if n.op == "call_module" and n not in set(found.nodes)}
    replaced = [gm.get_submodule(t) for t in called if t not in outside] or region
    if cheaper_only and is_larger(old, param_count(sub)):
        raise _Kept(f"would be larger: {old:,} -> {param_count(sub):,} parameters")
    costs.setdefault(block.name, old)
    replace_branch(gm, found, sub_name, _like(sub, replaced, caller))


def _remove_branch(gm: fx.GraphModule, block: Block, spec: BlockSpec, owner: str) -> None:
    """``I`` on one block, refused when it would disconnect no parameter: the branch still feeds the output
    some other way, so the student would be as large as the teacher and compute something else."""
    found = _located(gm, block, spec, owner, "add")
    before, after = live_nodes(gm.graph), live_nodes(gm.graph, {found.add: found.shortcut})
    # a call that stops running counts even when its module runs elsewhere (a module shared by two blocks,
    # both given I: each add removed frees its own call); a branch that still feeds the output frees none
    freed = _modules_of(gm, before - after)
    if not param_count(*(gm.get_submodule(t) for t in freed)):
        own = ancestors(found.branch) - ancestors(found.shortcut)
        still = [t for t in sorted(_modules_of(gm, after & own)) if param_count(gm.get_submodule(t))]
        why = (f"would free no parameter: with its residual add removed, its branch "
               f"({_summarise([repr(t) for t in still], 3)}) still reaches the output another way (a partial "
               f"residual such as ReXNet's, which adds to some channels and concatenates the rest), so no "
               f"parameter goes; give this block 'S' or a spec that replaces its branch")
        raise _Kept(f"{spec} on block {block.name!r}: {why}", reason=why)
    remove_branch(gm, found)


def _modules_of(gm: fx.GraphModule, nodes) -> set[str]:
    """The submodules (``get_attr``: the module holding the tensor) that ``nodes`` use."""
    return {str(n.target) if n.op == "call_module" else str(n.target).rpartition(".")[0]
            for n in nodes if n.op in ("call_module", "get_attr")} - {""}


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        in_place_operator = node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        return bool(node.kwargs.get("inplace", False)) or in_place_operator
    return False


def param_count(*modules: nn.Module) -> int:
    """The parameters of ``modules``, each tensor counted once (shared ones too): the count
    :func:`is_larger` compares, the search's cost table holds and the CLI prints.

    >>> conv = nn.Conv2d(4, 4, 3, bias=False)
    >>> param_count(conv), param_count(conv, nn.Sequential(conv, nn.BatchNorm2d(4)))
    (144, 152)
    """
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def example_input_for(model: nn.Module, gm: fx.GraphModule | None = None) -> list[torch.Tensor]:
    """Candidate inputs for checking a rewrite, smallest first: from the model's config or its first conv.

    timm models carry ``pretrained_cfg["input_size"]``; a model whose config
    says ``fixed_input_size`` gets that size only. Otherwise 32×32 and 64×64
    maps with the channels of the first conv, then the config's own size.

    >>> from fxswap.models import wrn
    >>> [tuple(x.shape) for x in example_input_for(wrn(10, 1))]
    [(1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 224, 224)]
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, 224, 224)
    c, h, w = (int(v) for v in size)
    if isinstance(cfg, dict) and cfg.get("fixed_input_size"):
        return [torch.zeros(1, c, h, w)]
    sizes = [(s, s) for s in (32, 64) if s < min(h, w)] + [(h, w)]
    ref = next(model.parameters(), None)
    kw = dict(device=ref.device, dtype=ref.dtype) if ref is not None and ref.is_floating_point() else {}
    return [torch.randn(1, c, a, b, generator=torch.Generator().manual_seed(0)).to(**kw) for a, b in sizes]


def _shapes_of(gm: fx.GraphModule, model: nn.Module, example_input) -> torch.Tensor | None:
    """Propagate shapes through the teacher's graph at the user's input or the first candidate that runs."""
    candidates = [example_input] if example_input is not None else example_input_for(model, gm)
    for x in candidates:
        if propagate_shapes(gm, x):
            return x
    if example_input is not None:
        raise SpecError("the teacher does not run on example_input=: give an input the model accepts "
                        "(e.g. torch.randn(1, 3, 224, 224))")
    return None


def _expected_shapes(gm: fx.GraphModule, blocks, specs) -> dict:
    """What each rewritten place must produce: conv paths and branch tails, from the teacher's shapes."""
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    by_qualname = {n.meta.get("qualname"): n for n in gm.graph.nodes}
    no_match = BlockMatch(add="", branch_index=0)
    out = {}
    for block in blocks:
        spec = specs[block.name]
        level = SUBSTITUTES[spec.kind].level
        if level == "conv":
            for path in conv_targets(spec.kind, block):
                out[("conv", path)] = node_shape(by_target.get(path))
        elif level == "branch":
            out[("branch", block.name)] = node_shape(by_qualname.get((block.match or no_match).exit))
        elif level == "remove":
            out[("remove", block.name)] = node_shape(by_qualname.get((block.match or no_match).add))
    return out


def cheapen(model: nn.Module, plan: Plan, *, reinit: bool = False, leaf_modules=(), example_input=None,
            allow_larger: bool = False, strict: bool = False, root: str | None = None) -> nn.Module:
    """A cheaper student of ``model``: each block rewritten by its spec.

    ``plan`` is a spec (``"G(N/4)"``), a ``{glob: spec}`` dict or a list, see
    :func:`resolve_plan`; what each spec does on each kind of block is in
    docs/specs.md. The teacher is never mutated and shares no tensor with the
    student; untouched modules keep copies of the teacher's weights and their
    state-dict keys, substitutes are freshly initialised. ``reinit=True``
    re-initialises everything and makes every parameter trainable
    (``requires_grad=True``, even where the teacher froze it: the papers train
    students from scratch).

    The rewrite checks itself before it returns: the student is run once (at
    ``example_input``, else an input from the model's config or its first
    conv) and every rewritten conv or branch must produce the shape its
    original produced; a rewritten block with more parameters than the
    original is a :class:`fxswap.SpecError` unless ``allow_larger=True``. A
    group count that does not divide a width is replaced by the nearest one
    that does (one warning lists them) unless ``strict=True``.

    >>> from fxswap.models import wrn
    >>> student = cheapen(wrn(40, 2), "G(N/4)")
    >>> sum(p.numel() for p in student.parameters())
    363066

    ``root="backbone.body"`` rewrites only that submodule (see :mod:`fxswap.surgery.partial`).
    """
    if root is not None:  # surgery on part of the model: fxswap.surgery.partial traces only the submodule
        return cheapen_part(model, plan, root, reinit=reinit, leaf_modules=leaf_modules,
                            example_input=example_input, allow_larger=allow_larger, strict=strict)
    gm = trace(model, leaf_modules)
    whole_model = isinstance(plan, (str, BlockSpec))
    # a spec that applies to no block fails here, before any forward (the warning comes from the second check:
    # an argument, not warnings.catch_warnings, whose filters are the whole process's, other threads' too)
    _check_kinds(find_blocks(gm), resolve_plan(find_blocks(gm), plan), whole_model=whole_model, warn=False)
    x = _shapes_of(gm, model, example_input)
    blocks = find_blocks(gm)
    asked = resolve_plan(blocks, plan)
    specs, skipped = _check_kinds(blocks, asked, whole_model=whole_model)
    expected = _expected_shapes(gm, blocks, specs) if x is not None else {}
    called_by = callers(gm)
    del gm
    # one spec for the whole model keeps a block it cannot rewrite, or would make larger, as it is (one
    # warning); a per-block plan names its blocks, so there each of these is an error
    kept: dict[str, str] | None = {} if whole_model else None
    student, adjusted, places = _rewrite_checked(model, blocks, specs, leaf_modules, kept, called_by, x, expected,
                                                 allow_larger=allow_larger, strict=strict)
    if kept:
        _warn_kept(blocks, asked, specs, kept)
    _check_cheaper(model, student, places, allow_larger)
    if adjusted:
        listed = sorted({f"{name} ({spec}: {wanted} -> {used} groups on {ch} channels)"
                         for name, spec, ch, wanted, used in adjusted if name not in (kept or {})})
        warnings.warn(f"group counts that do not divide the channels were set to the nearest that does (ties to "
                      f"more groups) in {len(listed)} place(s): {_summarise(listed, 10)}; strict=True makes "
                      f"this an error", stacklevel=2)
    attach(student, AppliedPlan({b.name: str(specs[b.name]) for b in blocks},
                                {b.name: str(asked[b.name]) for b in blocks}, {**skipped, **(kept or {})},
                                None, allow_larger))
    if reinit:
        for m in student.modules():
            if hasattr(m, "reset_parameters") and m is not student:
                m.reset_parameters()
        for p in student.parameters():
            p.requires_grad_(True)
    return student


def _rewrite_checked(model, blocks, specs: dict, leaf_modules, kept: dict | None, called_by, x, expected, *,
                     allow_larger: bool, strict: bool):
    """Rewrite, check costs and shapes; with ``kept`` (a whole-model spec), rewrite again without the blocks
    that failed. Returns the student, the group counts adjusted and the places rewritten (``_rewrite``'s);
    ``specs`` ends as the plan applied.

    The student returned is exactly ``cheapen(model, specs)`` for the final ``specs``: when a branch-level
    block was kept during a rewrite, its owner's other substitutes were named and traced with it present,
    so the rewrite runs again without it (a saved student is rebuilt from the applied plan).
    """
    failed_rounds = 0
    while True:
        options = BuildOptions(strict=strict)  # this round's builds only: a round that keeps a block rebuilds
        before, was = set(kept or ()), dict(specs)
        student, costs, places = _rewrite(model, blocks, specs, leaf_modules, kept,
                                          cheaper_only=kept is not None and not allow_larger,
                                          called_by=called_by, options=options)
        if kept:
            specs.update({name: BlockSpec("S") for name in kept})
        if not allow_larger:
            _check_costs(blocks, specs, costs)
        if any(SUBSTITUTES[was[name].kind].level != "conv" for name in set(kept or ()) - before):
            continue  # each round keeps at least one more block, so this ends
        failures = _check_shapes(student, x, places, expected, blocks, specs) if x is not None else []
        if not failures:
            return student, options.adjusted, places
        failed_rounds += 1
        if kept is None or failed_rounds == _SELF_CHECK_ROUNDS:
            raise failures[0][1]
        for name, error in failures:  # rewrite again with these blocks kept
            kept[name] = error.reason
            specs[name] = BlockSpec("S")


#: rewrites tried when the self-check finds blocks whose substitute does not fit (a whole-model spec then
#: keeps them and rewrites the rest again)
_SELF_CHECK_ROUNDS = 4


def cheapen_part(model: nn.Module, plan, root: str, **cheapen_options) -> nn.Module:
    """A deep copy of ``model`` whose submodule ``root`` is ``fxswap.cheapen(submodule, plan)``.

    ``cheapen_options`` (``reinit``, ``leaf_modules``) go to
    :func:`fxswap.cheapen`. The user's model is never mutated.

    >>> from fxswap.models import wrn
    >>> teacher = wrn(16, 1)
    >>> student = cheapen_part(teacher, "G(N/4)", "layer3")
    >>> type(student.layer3[0].conv1).__name__, type(student.layer1[0].conv1).__name__
    ('Sequential', 'Conv2d')
    """
    part = cheapen(submodule_at(model, root), plan, **cheapen_options)
    record = detach(part)  # it describes the whole student (rebuilt from the model with root=), not the part
    student = with_part(model, root, part)
    return attach(student, replace(record, root=root)) if record is not None else student


def _warn_kept(blocks, asked: dict, specs: dict, kept: dict) -> None:
    """One warning listing the blocks a whole-model spec kept as they are, and why; an error if it kept all."""
    spec = asked[next(iter(kept))]
    rewritten = [b.name for b in blocks if str(specs[b.name]) != "S"]
    listed = [f"{name} ({why})" for name, why in kept.items()]
    if not rewritten:
        larger = all(why.startswith("would be larger") for why in kept.values())
        first = next(b for b in blocks if b.name in kept)
        raise SpecError(f"{spec} would make no block cheaper: {_summarise(listed, 6)}"
                        + ("; use a spec that is cheaper on these blocks (docs/specs.md), or allow_larger=True to "
                           "accept (fxswap cheapen --allow-larger)" if larger else f"; {_applicable(first)}"))
    warnings.warn(f"{spec} cannot rewrite {len(kept)} block(s), kept as they are: {_summarise(listed, 10)}",
                  stacklevel=3)


def _check_kinds(blocks, specs, whole_model: bool, warn: bool = True) -> tuple[dict[str, BlockSpec], dict[str, str]]:
    """Every block's spec must serve its kind. One spec for the whole model skips the blocks it does not
    serve (attention blocks under ``B(2)``) with one warning (``warn``), unless it serves none of them.
    Returns the specs to apply and, per skipped block, why."""
    out = dict(specs)
    skipped = []
    why: dict[str, str] = {}
    for block in blocks:
        spec = specs[block.name]
        sub = SUBSTITUTES.get(spec.kind)
        if sub is None:
            raise SpecError(f"spec {spec} has no registered substitute; register one with fxswap.register_substitute")
        if sub.serves(block.kind) and not (sub.level == "branch" and block.region_problem and whole_model):
            continue
        if whole_model:
            skipped.append(block)
            out[block.name] = BlockSpec("S")
            why[block.name] = (f"{spec} does not apply to {block.kind} blocks" if not sub.serves(block.kind)
                               else f"{spec} cannot replace its branch: {block.region_problem}")
            continue
        raise SpecError(f"{spec} does not apply to block {block.name!r}, a {block.kind} block "
                        f"({KIND_TEXT.get(block.kind, block.kind)}); {_applicable(block)}")
    if skipped and len(skipped) == len(blocks):
        block = skipped[0]
        sub = SUBSTITUTES[specs[block.name].kind]
        problems = [b for b in skipped if sub.serves(b.kind) and b.region_problem]
        why = (f"; on the {', '.join(sorted({b.kind for b in problems}))} block(s) it serves ({_summarise([b.name for b in problems], 3)}): "
               f"{problems[0].region_problem}" if problems else "")
        raise SpecError(f"{specs[block.name]} applies to none of the blocks (kinds: "
                        f"{', '.join(sorted({b.kind for b in blocks}))}){why}; {_applicable(block)}")
    if skipped and warn:
        kinds = ", ".join(sorted({b.kind for b in skipped}))
        warnings.warn(f"{specs[skipped[0].name]} does not apply to some {kinds} blocks (docs/specs.md); kept as "
                      f"they are: {_summarise([b.name for b in skipped], 10)}", stacklevel=3)
    return out, why


def _rewrite(model, blocks, specs, leaf_modules, kept: dict | None = None, cheaper_only: bool = False,
             called_by: dict | None = None, options: BuildOptions | None = None):
    """The student, each block's (old params, new params), and the module path checked for each rewrite.

    With ``kept`` (a whole-model spec), a block that cannot be rewritten, or with ``cheaper_only`` would be
    larger, is left as it is and ``kept[name]`` says why; otherwise that is an error. ``options`` go to
    every builder (group counts adjusted are appended to ``options.adjusted``).
    """
    options = options if options is not None else BuildOptions()
    student = copy.deepcopy(model)
    unchanged = []
    replaced: set[str] = set()  # a conv shared by nested blocks (Res2Net, HRNet) is replaced once
    costs: dict[str, list[int]] = {}
    places: dict = {}
    by_owner: dict[str, list[tuple[Block, BlockSpec]]] = {}
    for block in blocks:
        spec = specs[block.name]
        sub = SUBSTITUTES[spec.kind]
        if sub.level == "conv":
            targets = conv_targets(spec.kind, block)
            if not targets:
                unchanged.append(block.name)
            try:
                swaps = _build_convs(student, block, spec, [t for t in targets if t not in replaced], options)
            except SpecError as exc:
                if kept is None:
                    raise
                kept[block.name] = exc.reason
                continue
            old, new = sum(param_count(o) for _, o, _ in swaps), sum(param_count(n) for _, _, n in swaps)
            if cheaper_only and is_larger(old, new):
                kept[block.name] = f"would be larger: {old:,} -> {new:,} parameters"
                continue
            for path, conv, substitute in swaps:
                replaced.add(path)
                parent = student.get_submodule(path.rpartition(".")[0])
                _set_module(student, path, _like(substitute, [conv], parent))
                places[("conv", path)] = (block, spec, path)
            if swaps:
                costs[block.name] = [old, new]
        elif sub.level in ("branch", "remove"):
            if block.region_problem and sub.level == "branch":
                raise SpecError(f"{spec} cannot replace the branch of block {block.name!r}: {block.region_problem}; "
                                f"{_applicable(block)}")
            by_owner.setdefault(_owner(block, sub.level), []).append((block, spec))
    if unchanged:
        warnings.warn(f"the plan changes nothing in block(s) {_summarise(unchanged)}: they have no convolution "
                      f"that the spec applies to (G needs a full k×k conv, S-2x2 a k×k conv)", stacklevel=4)
    # deepest owners first, so an enclosing owner traces the already rewritten child; a module that does not
    # trace on its own (HRNet's HighResolutionModule indexes the list its parent passes) hands its edits up
    pending = {owner: list(edits) for owner, edits in by_owner.items()}
    while pending:
        owner = max(pending, key=lambda p: (len(p.split(".")) if p else 0, p))
        edits = pending.pop(owner)
        before = dict(kept) if kept is not None else None
        try:
            student = _rewrite_owner(student, owner, edits, leaf_modules, costs, places, kept, cheaper_only,
                                     called_by, options)
        except SpecError:
            raise
        except Exception as exc:  # an fx failure while retracing (TraceError included)
            if kept is not None:  # what this attempt decided is decided again by the next
                kept.clear()
                kept.update(before)
            if owner:
                pending.setdefault(owner.rpartition(".")[0], []).extend(edits)
                continue
            listed = ", ".join(f"{b.name} ({s})" for b, s in edits)
            message = (f"torch.fx could not retrace the model to rewrite block(s) {listed}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
            if kept is None:
                raise SpecError(message + "; pass its offending submodule as leaf_modules=[...], or give these "
                                          "blocks 'S'") from exc
            for b, _ in edits:
                kept[b.name] = f"torch.fx could not retrace the model ({type(exc).__name__})"
                places.pop(("branch", b.name), None)
                places.pop(("remove", b.name), None)
                costs.pop(b.name, None)
    return student, costs, places


def _owner(block: Block, level: str) -> str:
    """The module whose forward a branch-level or remove edit retraces: the smallest one holding the region
    (``B``), or the add and its branch operand (``I``: the add's own module unless the branch is passed in)."""
    if block.match is None:
        return block.region_scope if level == "branch" else block.add_owner
    return block.match.owner("branch" if level == "branch" else "add")


def _build_convs(student: nn.Module, block: Block, spec: BlockSpec, paths, options: BuildOptions) -> list:
    """(path, old conv, substitute) for each conv of ``block`` that a conv-level spec replaces."""
    substitute = SUBSTITUTES[spec.kind]
    swaps = []
    for path in paths:
        old = student.get_submodule(path)
        try:
            new = substitute.create(block.kind, spec, old, block, options=options)
        except SpecError as exc:
            raise SpecError(f"{exc} (the conv is {path!r})", reason=f"{exc.reason} (the conv is {path!r})") from None
        except Exception as exc:  # a conv class the builder does not know how to copy
            why = f"its conv {path!r} ({type(old).__name__}) cannot be rebuilt: {type(exc).__name__}: {exc}"
            raise SpecError(f"{spec} cannot rewrite block {block.name!r}: {why}; {_applicable(block)}",
                            reason=why) from exc
        swaps.append((path, old, new))
    return swaps


def _rewrite_owner(student: nn.Module, owner: str, edits, leaf_modules, costs, places, kept=None,
                   cheaper_only=False, called_by: dict | None = None,
                   options: BuildOptions | None = None) -> nn.Module:
    called_by = called_by or {}
    owner_mod = student.get_submodule(owner) if owner else student
    built = []
    for i, (block, spec) in enumerate(edits):
        sub = SUBSTITUTES[spec.kind]
        if sub.level == "branch":
            name = _free_name(owner_mod, "substitute", i)
            new = for_host(sub.create(block.kind, spec, block, options=options), block)
            built.append((block, spec, name, new))
            places[("branch", block.name)] = (block, spec, f"{owner}.{name}" if owner else name)
        else:
            built.append((block, spec, None, None))
            places[("remove", block.name)] = (block, spec, None)
    old_costs: dict[str, int] = {}
    left: set[str] = set()  # blocks kept as they are (decided on the first trace, kept on the second)

    def edit(gm: fx.GraphModule) -> None:
        for block, spec, name, sub in built:
            if block.name in left:
                continue
            try:
                if name is None:
                    _remove_branch(gm, block, spec, owner)
                else:
                    _replace_branch(gm, block, spec, owner, name, sub, old_costs, owner_mod, cheaper_only)
            except SpecError as exc:
                if kept is None:
                    raise
                left.add(block.name)
                kept[block.name] = exc.reason

    subs = tuple(sub for *_, sub in built if sub is not None)
    # a submodule is traced with the arguments its parent leaves at their default frozen ({}: none known),
    # the model itself as model(x) runs it (None defaults frozen: fxswap.trace's default)
    fixed = (unpassed_defaults(student, owner, tuple(leaf_modules), caller=called_by.get(owner)) or {}) if owner else None
    new = retrace_both_modes(owner_mod, edit, tuple(leaf_modules) + subs, concrete_args=fixed)
    for block, spec, name, sub in built:
        if block.name in left:
            places.pop(("branch" if sub is not None else "remove", block.name), None)
        elif sub is not None:
            costs[block.name] = [old_costs.get(block.name, 0), param_count(sub)]
        else:
            costs[block.name] = [None, 0]
    if len(left) == len(built):
        return student  # nothing changed in this module: keep the original (not a retraced copy)
    if not owner:
        warnings.warn(f"block(s) {[b.name for b, _ in edits]} live in the model's own forward: the student is a "
                      f"GraphModule, not a {type(student).__name__}", stacklevel=5)
        return new
    _set_module(student, owner, new)
    return student


def _check_cheaper(model: nn.Module, student: nn.Module, places: dict, allow_larger: bool) -> None:
    """A plan that rewrites something must leave fewer parameters (docs/specs.md), or more only with
    ``allow_larger``: a student as large as its teacher but computing something else is never asked for.
    (A plan that rewrites nothing has had its warning.)"""
    rewritten = list(dict.fromkeys(f"{block.name} ({spec})" for block, spec, _ in places.values()))
    before, after = param_count(model), param_count(student)
    if not rewritten or after < before or (after > before and allow_larger):
        return
    how = "as many as" if after == before else "more than"
    raise SpecError(f"the plan makes nothing cheaper: the student has {after:,} parameters, {how} the teacher's "
                    f"{before:,}, although it rewrites {_summarise(rewritten, 6)}; the modules these rewrites "
                    f"replace are still used elsewhere in the forward. Use a spec that is cheaper on these blocks "
                    f"(docs/specs.md)" + ("" if after == before else ", or allow_larger=True to accept"))


def _check_costs(blocks, specs, costs) -> None:
    larger = [(b.name, specs[b.name], *costs[b.name]) for b in blocks
              if b.name in costs and is_larger(*costs[b.name])]
    if larger:
        listed = [f"{name} ({spec}: {old:,} -> {new:,} parameters)" for name, spec, old, new in larger]
        raise SpecError(f"the student would be larger than the teacher in {len(larger)} block(s): "
                        f"{_summarise(listed, 10)}; use a spec that is cheaper on these blocks (docs/specs.md), or "
                        f"allow_larger=True (fxswap cheapen --allow-larger) to accept")


def is_larger(teacher_params: int | None, student_params: int) -> bool:
    """The one cost rule of :func:`cheapen` and of the search: is a rewritten block larger than the teacher's?

    Parameters of the block before (``None``: nothing to compare, as for ``I``,
    which removes the branch) and after. ``cheapen`` refuses a larger block
    unless ``allow_larger=True`` (a whole-model spec keeps it as it is), and
    :class:`fxswap.search.plans.CostModel` never offers that spec for that
    block unless it was built with ``allow_larger=True``, so every plan the
    search samples builds.

    >>> is_larger(4_608, 5_184), is_larger(4_608, 4_608), is_larger(None, 0)
    (True, False, False)
    """
    return teacher_params is not None and student_params > teacher_params


def _check_shapes(student: nn.Module, x, places: dict, expected: dict, blocks,
                  specs) -> list[tuple[str, SpecError]]:
    """Run the student once; every rewritten place must give the shape its original gave.

    Returns ``(block name, error)`` for each rewritten block that does not (a student that fails to run:
    the innermost rewritten block running at the time); a failure no rewritten block was running is raised.
    """
    got: dict = {}
    stack: list = []
    handles = []
    for key, (block, spec, path) in places.items():
        if path is None:
            continue
        try:
            module = student.get_submodule(path)
        except AttributeError:
            continue

        def pre(mod, args, key=key):
            stack.append(key)

        def post(mod, args, out, key=key):
            if stack and stack[-1] == key:
                stack.pop()
            got.setdefault(key, tuple(out.shape) if isinstance(out, torch.Tensor) else None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        # kept_modes: each module's own flag comes back (a frozen BN stays frozen); fx prints what it re-raises
        with kept_modes(student), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            student.eval()
            student(x)
    except Exception as exc:
        wrong = _compare(got, expected, places)  # a wrong shape upstream is the better explanation
        if wrong:
            return wrong
        if stack:
            block, spec, path = places[stack[-1]]
            where = f"block {block.name!r} ({spec}{', conv ' + repr(path) if stack[-1][0] == 'conv' else ''})"
            return [(block.name, SpecError(f"the rewritten student does not run: {where} fails with "
                                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"))]
        where = "block(s) " + _summarise([f"{b.name} ({specs[b.name]})" for b in blocks
                                          if str(specs[b.name]) != "S"], 6)
        raise SpecError(f"the rewritten student does not run: {where} fails with {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    finally:
        for h in handles:
            h.remove()
    return _compare(got, expected, places)


def _compare(got: dict, expected: dict, places: dict) -> list[tuple[str, SpecError]]:
    wrong = []
    for key, shape in got.items():
        want = expected.get(key)
        if want is not None and shape is not None and shape != want:
            block, spec, path = places[key]
            what = f"conv {path!r}" if key[0] == "conv" else "its branch"
            why = f"{what} now gives shape {shape} instead of {want}"
            wrong.append((block.name, SpecError(f"{spec} on block {block.name!r}: {why}; {_applicable(block)}",
                                                reason=why)))
    return wrong


def _free_name(module: nn.Module, base: str, i: int) -> str:
    name = base if i == 0 else f"{base}_{i}"
    while hasattr(module, name):
        i += 1
        name = f"{base}_{i}"
    return name
