"""The procedures as the reference code runs them (issue 10, item 4): LIT's frozen stem and head, SRRL's
separate L_FM / L_SR weights, FitNets' two-stage hint training, BlockSwap's reference candidates and its
fresh minibatch / fresh initialisation per candidate."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fxswap
from fxswap import losses as L
from fxswap.distillation import Distiller, LITDistiller
from fxswap.models import cifar_resnet, wrn


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BN statistics, so that "copied from the teacher" can be told from "initialised alike"."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.copy_(t + 0.1 * torch.randn(t.shape, generator=g))
            if t.ndim == 1 and t.min() < 0.05:  # keep running variances positive
                t.abs_().add_(0.05)
    return model


def _batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------------------
# LIT: the teacher's stem and head, copied and frozen; only the sections train
# ---------------------------------------------------------------------------

STEM_HEAD = ("conv1.", "bn1.", "fc.")  # cifar_resnet: the reference's conv1, bn1 and linear


def _lit_pair(seed=0):
    torch.manual_seed(seed)
    teacher = _perturbed(cifar_resnet(14), seed)
    student = fxswap.cheapen(teacher, {"layer*.1": "I"}, reinit=True)
    return teacher, student


def test_lit_copies_the_teachers_stem_and_head_and_trains_only_the_sections():
    teacher, student = _lit_pair()
    t_before = _state(teacher)
    t_flags = [(n, m.training) for n, m in teacher.named_modules()]
    assert not torch.equal(student.conv1.weight, teacher.conv1.weight)
    lit = LITDistiller(teacher, student)
    s_state, t_state = student.state_dict(), teacher.state_dict()
    fixed_keys = [k for k in s_state if k.startswith(STEM_HEAD)]
    assert fixed_keys and all(torch.equal(s_state[k], t_state[k]) for k in fixed_keys)
    # parameters(): the sections only
    trained = {id(p) for p in lit.parameters()}
    assert trained == {id(p) for n, p in student.named_parameters() if n.startswith("layer")}
    # a few optimiser steps (with weight decay, which would move any parameter handed to SGD)
    opt = torch.optim.SGD(lit.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    frozen = _state(student)
    lit.train()
    for step in range(3):
        x, y = _batch(seed=step)
        loss, _ = lit(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = student.state_dict()
    assert all(torch.equal(after[k], frozen[k]) for k in fixed_keys), "the stem or head moved"
    assert all(p.grad is None for n, p in student.named_parameters() if n.startswith(STEM_HEAD))
    assert all(p.requires_grad for p in student.parameters()), "the student's requires_grad flags are given back"
    moved = [k for k in after if k.startswith("layer") and not torch.equal(after[k], frozen[k])]
    assert moved, "the sections did not train"
    # the teacher passed in is untouched: weights, statistics, modes
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert [(n, m.training) for n, m in teacher.named_modules()] == t_flags


def test_lit_stem_bn_stays_in_eval_and_section_one_sees_the_teachers_stem_output():
    teacher, student = _lit_pair(1)
    lit = LITDistiller(teacher, student).train()
    assert not student.bn1.training and not student.fc.training
    assert student.layer1[0].bn1.training and student.layer3[0].bn1.training
    seen = []
    hook = student.layer1[0].conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    x, y = _batch(seed=3)
    try:
        lit(x, y)
    finally:
        hook.remove()
    ref = copy.deepcopy(teacher).eval()
    with torch.no_grad():
        t_stem = F.relu(ref.bn1(ref.conv1(x)))
    assert len(seen) == 1 and torch.allclose(seen[0], t_stem, atol=1e-6)
    # eval() then train() again: still held
    lit.eval().train()
    assert not student.bn1.training and student.layer2[0].bn1.training


def test_lit_train_stem_and_head_trains_everything_and_copies_nothing():
    teacher, student = _lit_pair(2)
    own_stem = student.conv1.weight.detach().clone()
    lit = LITDistiller(teacher, student, train_stem_and_head=True)
    assert torch.equal(student.conv1.weight, own_stem) and lit.fixed == ()
    assert {id(p) for p in lit.parameters()} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(lit.parameters(), lr=0.1)
    lit.train()
    loss, _ = lit(*_batch())
    loss.backward()
    opt.step()
    assert not torch.equal(student.conv1.weight, own_stem)
    assert student.bn1.training


def test_lit_finetune_keeps_the_stem_and_head_fixed_as_the_reference():
    teacher, student = _lit_pair(3)
    ft = LITDistiller(teacher, student).finetune()
    trained = {id(p) for p in ft.parameters()}
    assert trained == {id(p) for n, p in student.named_parameters() if not n.startswith(STEM_HEAD)}
    ft.train()
    assert student.bn1.training  # the reference's fine-tune calls student.train()
    loss, _ = ft(*_batch())
    loss.backward()
    assert all(p.grad is None for n, p in student.named_parameters() if n.startswith(STEM_HEAD))


def test_lit_stem_and_head_of_a_wrn_and_a_mismatched_student():
    t = wrn(10, 1)
    names = fxswap.distillation.lit.stem_and_head(t)
    assert {n.rpartition(".")[0] for n in names} == {"conv1", "bn", "fc"}  # the pre-act WRN's final BN is the head's
    with pytest.raises(fxswap.DistillError, match="train_stem_and_head=True"):
        LITDistiller(wrn(10, 2), wrn(10, 1))  # widths differ: the teacher's stem does not fit
    LITDistiller(wrn(10, 2), wrn(10, 1), train_stem_and_head=True)  # ... unless the student keeps its own


def test_distill_lit_end_to_end_leaves_the_stem_and_head_as_the_teachers():
    teacher, student = _lit_pair(4)
    data = TensorDataset(*_batch(8, seed=5))
    fxswap.distill(teacher, student, DataLoader(data, batch_size=4), method="lit", epochs=1, finetune_epochs=1,
                   progress=False)
    s_state, t_state = student.state_dict(), teacher.state_dict()
    weights = [k for k in s_state if k.startswith(STEM_HEAD) and "running" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(s_state[k], t_state[k]) for k in weights)


def test_presets_carry_the_references_batch_size_and_cutout():
    from fxswap.distillation.presets import Preset, get_preset

    assert get_preset("lit").batch_size == 32  # lit-code cifar10/main.py: batch_size = 32
    assert get_preset("blockswap").cutout == get_preset("blockswap-paper").cutout == 16  # Cutout(length=16)
    assert get_preset("moonshine").cutout == 0
    with pytest.raises(fxswap.DistillError, match="cutout must be an integer >= 0"):
        Preset("bad", cutout=-1)


# ---------------------------------------------------------------------------
# SRRL: CE + fm · L_FM + sr · L_SR (the reference's current code: fm = 1, sr = --weight)
# ---------------------------------------------------------------------------


def _srrl_direct(d: Distiller, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_FM and L_SR recomputed from scratch: features by probes, the teacher's head cut off the teacher."""
    s_out, s_feat = fxswap.probe(d.student, ["features"])(x)
    teacher = d.teacher
    t_logits, t_feat = fxswap.probe(teacher, ["features"])(x)
    head = fxswap.split_sections(teacher, ["penultimate"])[-1]
    return L.srrl_losses(s_feat["features"], t_feat["features"], head, t_logits, d.connectors["srrl"].connector)


@pytest.mark.parametrize("weights", [{"fm": 1.0, "sr": 0.0}, {"fm": 0.0, "sr": 1.0}, 3.0])
def test_srrl_weights_scale_each_feature_loss_separately(weights):
    torch.manual_seed(0)
    teacher = wrn(10, 1)
    d = Distiller(teacher, fxswap.cheapen(teacher, "G(N/4)"), {"srrl": weights}).eval()
    x, y = _batch(6)
    _, logs = d(x, y)
    with torch.no_grad():
        fm, sr = _srrl_direct(d, x)
    fm_w, sr_w = (1.0, weights) if isinstance(weights, float) else (weights["fm"], weights["sr"])
    assert float(fm) > 0 and float(sr) > 0
    assert torch.allclose(logs["srrl"], fm_w * fm + sr_w * sr, rtol=1e-5, atol=1e-7)
    assert torch.allclose(logs["ce"], F.cross_entropy(d.student(x), y))


def test_srrl_rejects_an_unknown_weight():
    t = wrn(10, 1)
    with pytest.raises(fxswap.DistillError, match="accepted: fm, sr"):
        Distiller(t, t, {"srrl": {"weight": 1.0}})


# ---------------------------------------------------------------------------
# BlockSwap: the reference's candidate set; a fresh minibatch and initialisation per candidate
# ---------------------------------------------------------------------------

from fxswap.search.plans import (CANDIDATE_SETS, PAPER_CANDIDATES, REFERENCE_CANDIDATES, CostModel,  # noqa: E402
                              candidate_specs)
from fxswap.surgery.spec import parse_spec  # noqa: E402

# BayesWatch/pytorch-blockswap utils.py string_to_conv, read by hand: class → (kind, bottleneck, groups)
REFERENCE_CLASSES = {
    "Conv": "S", "DConvA2": "G(2)", "DConvA4": "G(4)", "DConvA8": "G(8)", "DConvA16": "G(16)",
    "DConvG16": "G(N/16)", "DConvG8": "G(N/8)", "DConvG4": "G(N/4)", "DConvG2": "G(N/2)", "DConv": "G(N)",
    "ConvB2": "B(2)", "ConvB4": "B(4)", "A2B2": "BG(2,2)", "A4B2": "BG(2,4)", "A8B2": "BG(2,8)",
    "A16B2": "BG(2,16)", "G16B2": "BG(2,M/16)", "G8B2": "BG(2,M/8)", "G8B4": "BG(4,M/8)", "G4B2": "BG(2,M/4)",
    "G2B2": "BG(2,M/2)", "G4B4": "BG(4,M/4)", "G2B4": "BG(4,M/2)",
}


def test_reference_candidates_are_the_reference_codes_23():
    assert len(REFERENCE_CANDIDATES) == 23 == len(set(REFERENCE_CANDIDATES))
    assert [str(parse_spec(s)) for s in REFERENCE_CLASSES.values()] == list(REFERENCE_CANDIDATES)
    assert set(REFERENCE_CANDIDATES) - set(PAPER_CANDIDATES) == {"BG(4,M/2)", "BG(4,M/4)", "BG(4,M/8)"}
    assert set(PAPER_CANDIDATES) - set(REFERENCE_CANDIDATES) == {"BG(2,M)"}
    assert candidate_specs("reference") == list(REFERENCE_CANDIDATES) == candidate_specs(["Reference"])
    assert candidate_specs(["reference", "BG(2,M)"]) == [*REFERENCE_CANDIDATES, "BG(2,M)"]
    assert set(CANDIDATE_SETS) == {"paper", "reference"}
    with pytest.raises(fxswap.SpecError, match="candidate set: paper, reference"):
        candidate_specs(["referenc"])


@pytest.mark.slow
def test_reference_candidates_all_apply_to_a_wrn_and_are_searchable_by_name():
    cm = CostModel(wrn(10, 2), "reference", macs=False)  # 23 cheapened networks
    assert cm.specs == list(REFERENCE_CANDIDATES)
    assert all(cm.options(n) == list(REFERENCE_CANDIDATES) for n in cm.names)
    x, y = _batch(4)
    r = fxswap.blockswap(wrn(10, 2), 0.4, (x, y), samples=2, cost_model=cm)
    assert all(set(c.plan.values()) <= set(REFERENCE_CANDIDATES) for c in r.candidates)


def _bs_setup():
    teacher = wrn(10, 1)
    cm = CostModel(teacher, ["S", "G(N/4)", "B(2)"], macs=False)
    return teacher, cm


def test_fresh_batch_gives_each_candidate_its_own_minibatch():
    teacher, cm = _bs_setup()
    drawn = []

    def fresh():
        b = _batch(4, seed=100 + len(drawn))
        drawn.append(b)
        return b

    r = fxswap.blockswap(teacher, 0.6, None, samples=3, tolerance=0.9, cost_model=cm, fresh_batch=fresh)
    assert len(drawn) == 1 + len(r.candidates)  # one for the input shape, then one per candidate
    # candidate i was scored on batch i + 1 (the i-th fresh one), not on a shared one
    order = {c.fisher: c for c in r.candidates}
    expected = {cm.score(c.plan, drawn[1 + i])[0] for i, c in enumerate(_in_sampling_order(cm, r))}
    assert {round(f, 6) for f in order} == {round(f, 6) for f in expected}
    on_first = {cm.score(c.plan, drawn[1])[0] for c in r.candidates}
    assert {round(f, 6) for f in on_first} != {round(f, 6) for f in order}


def _in_sampling_order(cm, result):
    plans = fxswap.search.plans.sample_plans(cm, result.budget, result.samples, tolerance=result.tolerance,
                                                        seed=result.seed)
    by_plan = {tuple(sorted(c.plan.items())): c for c in result.candidates}
    return [by_plan[tuple(sorted(p.items()))] for p in plans]


def test_fresh_batch_from_a_loader_cycles_through_it():
    teacher, cm = _bs_setup()
    x, y = _batch(12, seed=7)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # 3 batches; 4 draws wrap around
    r = fxswap.blockswap(teacher, 0.6, (x[:4], y[:4]), samples=4, tolerance=0.9, cost_model=cm, fresh_batch=loader)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8, 0)]
    got = {round(c.fisher, 6) for c in r.candidates}
    assert got == {round(cm.score(c.plan, b)[0], 6) for c, b in zip(_in_sampling_order(cm, r), batches)}
    with pytest.raises(fxswap.FxswapError, match="fresh_batch"):
        fxswap.blockswap(teacher, 0.6, None, samples=1, cost_model=cm, fresh_batch=42)


def test_fresh_init_scores_each_candidate_at_its_own_initialisation_and_leaves_the_table_alone():
    teacher, cm = _bs_setup()
    batch = _batch(4)
    shared = fxswap.blockswap(teacher, 0.6, batch, samples=2, tolerance=0.9, cost_model=cm, seed=0)
    fresh = fxswap.blockswap(teacher, 0.6, batch, samples=2, tolerance=0.9, cost_model=cm, seed=0, fresh_init=True)
    again = fxswap.blockswap(teacher, 0.6, batch, samples=2, tolerance=0.9, cost_model=cm, seed=0, fresh_init=True)
    assert [c.fisher for c in fresh.candidates] == [c.fisher for c in again.candidates]  # seeded
    assert {c.fisher for c in fresh.candidates}.isdisjoint({c.fisher for c in shared.candidates})
    # each fresh score is the plan's network, re-initialised with its own seed, scored directly
    for i, c in enumerate(_in_sampling_order(cm, fresh)):
        net = fxswap.search.fisher.random_init(cm.build(c.plan), fxswap.seeding.derived_seed(0, f"fresh-init/{i}"))
        assert c.fisher == pytest.approx(fxswap.fisher_potential(net, batch).total, rel=1e-5)
    # and the cost model's variants were not re-initialised: the shared scores come back
    later = fxswap.blockswap(teacher, 0.6, batch, samples=2, tolerance=0.9, cost_model=cm, seed=0)
    assert [c.fisher for c in later.candidates] == [c.fisher for c in shared.candidates]


def test_cli_search_names_a_candidate_set_and_rejects_a_misspelt_one(tmp_path, capsys):
    from fxswap.cli import main

    assert main(["search", "wrn-10-1", "--budget", "50%", "--samples", "2", "--batch-size", "4", "--no-macs",
                 "--candidates", "referenc", "--no-progress", "--out", str(tmp_path / "r.json")]) == 2
    assert "candidate set: paper, reference" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# FitNets: one hint, two stages
# ---------------------------------------------------------------------------

from fxswap.distillation import HintStage, fitnets_two_stage  # noqa: E402


def test_fitnets_stage_one_trains_only_the_layers_up_to_the_guided_one():
    torch.manual_seed(0)
    teacher, student = _perturbed(wrn(10, 2), 1), wrn(10, 1)
    t_before = _state(teacher)
    stage = HintStage(teacher, student)
    assert stage.points == ("layer2.0", "layer2.0")
    before = _state(student)
    x, y = _batch(8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    fxswap.fit(stage, loader, epochs=1, progress=False, preset="moonshine")
    after = student.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"conv1", "layer1", "layer2"}  # the guided part; layer3, the final BN and fc untouched
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    # the loss is the hint loss between the teacher's layer2 output and the regressed student layer2 output
    feats = {}
    hooks = [m.get_submodule("layer2.0").register_forward_hook(lambda mod, i, o, k=k: feats.__setitem__(k, o))
             for k, m in (("t", teacher), ("s", student))]
    stage.eval()
    student.eval()
    teacher.eval()
    with torch.no_grad():
        loss, logs = stage(x, y)
        teacher(x)
        student(x)
        expected = L.hint_loss(feats["s"], feats["t"], stage.regressor)
    for h in hooks:
        h.remove()
    assert torch.allclose(loss, expected, rtol=1e-5) and float(expected) > 0


def test_fitnets_two_stage_then_trains_the_whole_student_with_kd():
    torch.manual_seed(1)
    teacher, student = wrn(10, 2), wrn(10, 1)
    before = _state(student)
    x, y = _batch(8)
    hist = fitnets_two_stage(teacher, student, DataLoader(TensorDataset(x, y), batch_size=4), hint_epochs=1,
                             epochs=1, progress=False)
    assert [h["stage"] for h in hist] == ["hint", "kd"] and "train_kd" in hist[1]
    after = student.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])  # stage 2 reaches the head
    with pytest.raises(fxswap.DistillError, match="feature maps"):
        HintStage(teacher, student, ("layer2.0", "penultimate"))
