"""The match-then-replace contract (issue 8 item 6): the analysis matches each block's nodes once, the rewrite
replaces exactly those nodes.

Expected node names come from the blocks' definitions (fxswap.testing, fxswap.models.wrn), not from the code
under test.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from fxswap import SpecError, cheapen, find_blocks, trace
from fxswap.errors import MatchError
from fxswap.blocks.match import BlockMatch, LocatedAdd, LocatedBranch, locate
from fxswap.models import wrn
from fxswap.surgery.rewrite import _rewrite, remove_branch, replace_branch
from fxswap.surgery.spec import parse_spec
from fxswap.testing import (BottleneckBlock, InvertedBlock, NetSpec, PostActBlock, PreActBlock, StageSpec,
                            TransformerBlock, build, residual_nets)
from fxswap.tracing.tracer import retrace_both_modes


class Wrap(nn.Module):
    """One block between a stem and a head, at ``body``."""

    def __init__(self, block: nn.Module, cin: int):
        super().__init__()
        self.stem = nn.Conv2d(3, cin, 3, padding=1)
        self.body = block

    def forward(self, x):
        return self.body(self.stem(x))


def _names(nodes):
    return [n.meta["qualname"] for n in nodes]


# --- the match's nodes are exactly the branch --------------------------------------------------------

@pytest.mark.parametrize("block, entry, nodes", [
    # pre-activation: the BN-ReLU before conv1 feeds the projection too, so it is the entry, not replaced
    (PreActBlock(8, 16, 2), "body.relu1", ["conv1", "bn2", "relu2", "conv2"]),
    # post-activation: from the block input to the norm after the last conv; the ReLU after the add stays
    (PostActBlock(8, 8, 1), "stem", ["conv1", "bn1", "relu", "conv2", "bn2"]),
    # one ReLU module called three times: its first two calls are in the branch, the third (after the add) not
    (BottleneckBlock(8, 8, 1), "stem", ["conv1", "bn1", "relu", "conv2", "bn2", "relu_1", "conv3", "bn3"]),
    (InvertedBlock(8, 8, 1), "stem", ["expand.0", "expand.1", "expand.2", "dw.0", "dw.1", "dw.2",
                                       "project.0", "project.1"]),
])
def test_match_is_exactly_the_branch(block, entry, nodes):
    match = find_blocks(Wrap(block, 8))[0].match
    assert match.entry == entry
    assert match.nodes == tuple(f"body.{n}" for n in nodes)
    assert match.exit == f"body.{nodes[-1]}"
    assert match.add == "body.add" and match.owner("branch") == "body" and match.owner("add") == "body"
    # the add's branch operand is the region's exit
    assert match.branch_out == match.exit


def test_transformer_matches_its_attention_and_mlp_branches():
    attn, mlp = (b.match for b in find_blocks(Wrap(TransformerBlock(8), 8)))
    assert attn.entry == "body.norm1" and attn.exit == "body.proj" and "body.qkv" in attn.modules
    assert mlp.entry == "body.norm2" and mlp.modules == ("body.fc1", "body.act", "body.fc2")
    assert (attn.add, mlp.add) == ("body.add", "body.add_1")


def test_match_within_names_nodes_as_the_owner_trace_does():
    model = wrn(16, 1)
    match = find_blocks(model)[3].match  # layer2.1
    inner = match.within("layer2.1")
    assert inner.nodes == ("conv1", "bn2", "relu2", "dropout", "conv2") and inner.entry == "relu1"
    assert set(inner.nodes) <= {n.meta["qualname"] for n in trace(model.layer2[1]).graph.nodes}
    assert match.within("layer3").nodes == ("",) * len(match.nodes)  # nothing of it is inside layer3


# --- locate: onto the owner's trace, or a clear error ----------------------------------------------------

def test_locate_finds_the_matched_nodes_in_both_modes():
    model = wrn(16, 1, dropout=0.3)  # an nn.Dropout inside the branch, traced in train and eval mode
    match = find_blocks(model)[3].match
    seen = []

    def edit(gm):
        found = locate(match, gm, "layer2.1", "branch")
        assert isinstance(found, LocatedBranch)
        seen.append((found.entry.name, _names(found.nodes)))

    retrace_both_modes(model.layer2[1], edit)
    assert seen == [("relu1", ["conv1", "bn2", "relu2", "dropout", "conv2"])] * 2
    assert model.training  # the model's mode is restored


def test_locate_reports_what_does_not_map():
    model = wrn(16, 1)
    match = find_blocks(model)[3].match
    with pytest.raises(MatchError, match=r"'layer2.1.conv1' is not inside module 'layer2.0'"):
        locate(match, trace(model.layer2[0]), "layer2.0", "branch")
    gone = dataclasses.replace(match, nodes=match.nodes[:-1] + ("layer2.1.conv9",))
    with pytest.raises(MatchError, match=r"'layer2.1.conv9' does not run in the trace of 'layer2.1'"):
        locate(gone, trace(model.layer2[1]), "layer2.1", "branch")
    # conv1 and conv2 without what lies between them: conv1 feeds, and conv2 reads, nodes outside the match
    holey = dataclasses.replace(match, nodes=("layer2.1.conv1", "layer2.1.conv2"))
    with pytest.raises(MatchError, match="no longer one piece: conv1 is used outside the branch"):
        locate(holey, trace(model.layer2[1]), "layer2.1", "branch")
    with pytest.raises(MatchError, match=r"its residual add 'layer2.1.add' is not inside module 'layer2.0'"):
        locate(match, trace(model.layer2[0]), "layer2.0", "add")
    with pytest.raises(MatchError, match="not one piece"):
        locate(dataclasses.replace(match, nodes=()), trace(model.layer2[1]), "layer2.1", "branch")


def test_locate_add_gives_branch_and_shortcut():
    model = Wrap(PostActBlock(8, 16, 2), 8)  # projection shortcut: downsample.0, downsample.1
    match = find_blocks(model)[0].match
    found = locate(match, trace(model.body), "body", "add")
    assert isinstance(found, LocatedAdd)
    assert found.branch.meta["qualname"] == "bn2" and found.shortcut.meta["qualname"] == "downsample.1"


# --- the rewrite replaces exactly the matched nodes ------------------------------------------------------

def test_rewriting_a_hand_edited_match_changes_exactly_its_nodes():
    model = wrn(16, 1).eval()
    block = find_blocks(model)[3]  # layer2.1: relu1 -> conv1 bn2 relu2 dropout conv2 -> add
    narrowed = dataclasses.replace(block.match, entry="layer2.1.relu2", nodes=("layer2.1.dropout", "layer2.1.conv2"))
    owner = model.layer2[1]
    before = {n.meta["qualname"] for n in trace(owner).graph.nodes}
    same_conv = copy.deepcopy(owner.conv2)  # a substitute computing what the two nodes computed

    def edit(gm):
        new = replace_branch(gm, locate(narrowed, gm, "layer2.1", "branch"), "substitute", same_conv)
        assert new.args[0].meta["qualname"] == "relu2" and [u.name for u in new.users] == ["add"]

    student = retrace_both_modes(owner, edit)
    after = {n.meta.get("qualname", n.name) for n in student.graph.nodes}
    assert after == before - {"dropout", "conv2"} | {"substitute"}
    x = torch.randn(2, 32, 8, 8)  # layer2 of WRN-16-1 is 32 wide
    with torch.no_grad():
        assert torch.allclose(student(x), owner(x), atol=1e-6)


def test_rewrite_uses_the_match_not_the_legacy_names():
    """Garbage in the string anchors the old rewrite searched by changes nothing: the match is what is used."""
    model = wrn(16, 1)
    block = find_blocks(model)[3]
    garbled = dataclasses.replace(block, tail="nowhere", tail_is_module=True, first_conv="nowhere.conv",
                                  add="nowhere.add", branch_out="nowhere.x", tail_skip=3)
    spec = parse_spec("B(2)")
    student, costs, _ = _rewrite(model, [garbled], {block.name: spec}, ())
    reference, ref_costs, _ = _rewrite(model, [block], {block.name: spec}, ())
    assert costs == ref_costs and costs[block.name][0] > costs[block.name][1] > 0
    assert [n for n, _ in student.named_modules()] == [n for n, _ in reference.named_modules()]
    for spec_name in ("I",):
        student, costs, _ = _rewrite(model, [garbled], {block.name: parse_spec(spec_name)}, ())
        assert costs[block.name] == [None, 0]


def test_remove_branch_replaces_exactly_the_add():
    model = Wrap(PostActBlock(8, 8, 1), 8).eval()
    match = find_blocks(model)[0].match
    gm = trace(model.body)
    before = [n.name for n in gm.graph.nodes]
    keep = remove_branch(gm, locate(match, gm, "body", "add"))
    # the in-place ReLU after the add reads a clone of the block input, not the input itself
    assert keep.target == "clone" and keep.args[0].name == "x"
    assert before == ["x", "conv1", "bn1", "relu", "conv2", "bn2", "add", "relu_1", "output"]
    assert [n.name for n in gm.graph.nodes] == ["x", "conv1", "bn1", "relu", "conv2", "bn2", "clone", "relu_1", "output"]


def test_a_match_that_cannot_be_rewritten_is_an_error_in_the_users_terms():
    model = wrn(16, 1)
    block = find_blocks(model)[3]
    moved = dataclasses.replace(block, match=dataclasses.replace(block.match, nodes=("layer2.1.conv7",)))
    with pytest.raises(SpecError, match=r"B\(2\) cannot rewrite block 'layer2.1': node 'layer2.1.conv7' does not run"
                                        r".*specs that apply to this basic block"):
        _rewrite(model, [moved], {block.name: parse_spec("B(2)")}, ())
    # a whole-model spec keeps it instead, saying why
    kept: dict = {}
    _rewrite(model, [moved], {block.name: parse_spec("B(2)")}, (), kept=kept)
    assert "layer2.1.conv7" in kept[block.name]


# --- property: every block's match maps onto its owner's re-trace ---------------------------------------

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_nets(max_stages=2, max_blocks=2, max_width=24))
def test_every_match_maps_onto_its_owner_retrace(net: NetSpec):
    model = build(net)
    for block in find_blocks(model):
        match = block.match
        for part in ("branch", "add"):
            owner = match.owner(part)
            if part == "branch" and not match.nodes:
                assert block.region_problem is not None
                continue
            located = []
            retrace_both_modes(model.get_submodule(owner), lambda gm: located.append(locate(match, gm, owner, part)))
            for found in located:  # train and eval mode
                if part == "branch":
                    assert _names(found.nodes) == list(match.within(owner).nodes)
                    # every conv the block reports is replaced, and nothing outside the block
                    assert {c for c in block.convs} <= set(match.modules)
                    module = ".".join(block.name.split(".")[:2])  # layer{s}.{i}; two adds in one are .add, .add_1
                    assert all(m.startswith(module + ".") for m in match.modules)
                else:
                    assert found.add.meta["qualname"] == match.within(owner).add
                    assert found.branch.meta["qualname"] == match.within(owner).branch_out
        # the branch a rewrite replaces is the add's branch operand
        assert not match.nodes or match.exit == match.branch_out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_nets(max_stages=2, max_blocks=2, max_width=24))
def test_branch_rewrite_leaves_everything_but_the_match(net: NetSpec):
    """B(2) on every block: the student's modules are the teacher's minus exactly the matched modules."""
    model = build(net)
    blocks = find_blocks(model)
    plan = {b.name: ("B(2)" if b.match.nodes and b.kind in ("basic", "bottleneck", "inverted", "mlp") else "S")
            for b in blocks}
    if set(plan.values()) == {"S"}:
        return
    student = cheapen(model, plan, allow_larger=True)
    replaced_nodes = {q for b in blocks if plan[b.name] == "B(2)" for q in b.match.nodes}
    # a module the branch shares with the rest of the block (one ReLU called before and after the add) stays
    called_elsewhere = {n.target for n in trace(model).graph.nodes
                        if n.op == "call_module" and n.meta["qualname"] not in replaced_nodes}
    replaced = {m for b in blocks if plan[b.name] == "B(2)" for m in b.match.modules} - called_elsewhere
    teacher_layers = {n for n, m in model.named_modules() if not list(m.children())}
    student_layers = {n for n, m in student.named_modules() if not list(m.children()) and ".substitute" not in n
                      and not n.startswith("substitute")}
    assert student_layers == teacher_layers - replaced
