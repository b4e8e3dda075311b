import pytest
import torch
import timm

import fxswap
from fxswap import losses as L
from fxswap.distillation import Distiller, LITDistiller
from fxswap.models import cifar_resnet, wrn


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def batch(n=8, size=32, classes=10):
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


@pytest.mark.parametrize("losses", [{"at": 1000.0, "kd": 0.9}, {"hint": 1.0}, {"srrl": 1.0}, {"mimic": 1.0},
                                    {"kd": {"alpha": 0.5, "T": 2.0}, "at": 100.0}])
def test_gradients_reach_only_student_and_connectors(losses):
    teacher = wrn(10, 2)
    student = fxswap.cheapen(teacher, "G(N/4)") if "hint" not in losses else wrn(10, 1)
    before = snapshot(teacher)
    d = Distiller(teacher, student, losses)
    own = {id(p) for p in student.parameters()} | {id(p) for p in d.connectors.parameters()}
    assert {id(p) for p in d.parameters()} == own
    x, y = batch()
    loss, logs = d(x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if d.connectors:
        assert all(p.grad is not None for p in d.connectors.parameters())
    assert set(losses) <= set(logs) and abs(sum(v for k, v in logs.items() if k != "loss") - logs["loss"]) < 1e-3
    assert same(before, teacher.state_dict())


def test_three_line_loop_on_wrn_learns_and_leaves_teacher_alone():
    torch.manual_seed(0)
    teacher = wrn(16, 2)
    student = fxswap.cheapen(teacher, "G(N/4)", reinit=True)
    before = snapshot(teacher)
    d = Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})
    opt = torch.optim.SGD(d.parameters(), lr=0.05, momentum=0.9)
    x, y = batch(16)
    first = None
    for _ in range(8):
        loss, logs = d(x, y)
        first = first if first is not None else logs["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss"] < first
    assert same(before, teacher.state_dict())
    assert set(d.state_dict()) == {f"student.{k}" for k in student.state_dict()}


def test_three_line_loop_on_cheapened_timm_model():
    teacher = timm.create_model("resnet10t", num_classes=5)
    student = fxswap.cheapen(teacher, {"layer4.*": "B(2)", "*": "G(N/8)"})
    d = Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9}, example_input=torch.zeros(2, 3, 64, 64))
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    x, y = batch(4, 64, 5)
    loss, logs = d(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and logs["at"] > 0


def test_no_teacher_is_plain_cross_entropy():
    s = wrn(10, 1)
    d = Distiller(None, s)
    x, y = batch()
    loss, logs = d(x, y)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(s(x), y))
    with pytest.raises(fxswap.DistillError, match="need a teacher"):
        Distiller(None, s, {"kd": 0.9})
    with pytest.raises(fxswap.DistillError, match="unknown loss"):
        Distiller(s, s, {"kdd": 0.9})


def test_lit_sections_receive_the_teacher_irs():
    teacher = cifar_resnet(20)
    student = fxswap.cheapen(teacher, {"layer*.2": "I"})
    lit = LITDistiller(teacher, student)
    fed = []
    hooks = [sec.register_forward_pre_hook(lambda m, args: fed.append(args[0])) for sec in (h.module for h in lit.connectors["lit"].sections)]
    x, y = batch()
    loss, logs = lit(x, y)
    for h in hooks:
        h.remove()
    # the teacher's IRs, computed independently with hooks on the user's teacher in eval mode
    ref = {}
    teacher.eval()
    hs = [teacher.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: ref.__setitem__(n, o))
          for n in ("layer1.2", "layer2.2")]
    with torch.no_grad():
        teacher(x)
    for h in hs:
        h.remove()
    assert len(fed) == 2
    assert torch.equal(fed[0], ref["layer1.2"]) and torch.equal(fed[1], ref["layer2.2"])
    # and the loss is losses.lit_loss on the student's own first IR, the sections' outputs and the teacher IRs
    s_ref = {}
    hs = [student.get_submodule("layer1.1").register_forward_hook(lambda m, i, o: s_ref.__setitem__("first", o))]
    lit.eval()
    _, logs = lit(x, y)
    with torch.no_grad():
        s_logits = student.eval()(x)
        t_ref = {}
        ht = [teacher.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: t_ref.__setitem__(n, o))
              for n in ("layer1.2", "layer2.2", "layer3.2")]
        t_logits = teacher(x)
        for h in hs + ht:
            h.remove()
        secs = [h.module.eval() for h in lit.connectors["lit"].sections]
        s_irs = [s_ref["first"], secs[0](t_ref["layer1.2"]), secs[1](t_ref["layer2.2"])]
        t_irs = [t_ref[n] for n in ("layer1.2", "layer2.2", "layer3.2")]
        expected = L.lit_loss(s_logits, t_logits, y, s_irs, t_irs, beta=0.75, T=6.0, alpha=0.95)
    assert torch.allclose(logs["lit"], expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    # only the sections train: the stem and head are the teacher's, held fixed (tests/test_procedures.py)
    assert {id(p) for p in lit.parameters()} == {id(p) for n, p in student.named_parameters() if n.startswith("layer")}


def test_lit_needs_matching_stages():
    with pytest.raises(fxswap.DistillError, match="as many stages"):
        LITDistiller(cifar_resnet(20), wrn(10, 1).layer1)


def test_channels_last_and_autocast():
    t = wrn(10, 2).to(memory_format=torch.channels_last)
    s = fxswap.cheapen(t, "B(2)").to(memory_format=torch.channels_last)
    d = Distiller(t, s, {"at": 1000.0, "kd": 0.9, "srrl": 1.0})
    x, y = batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = d(x.to(memory_format=torch.channels_last), y)
    loss.backward()
    assert torch.isfinite(loss) and all(v == v for v in logs.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_distiller_on_cuda_with_autocast():
    t = wrn(10, 2)
    s = fxswap.cheapen(t, "G(N/4)")
    d = Distiller(t, s, {"at": 1000.0, "kd": 0.9, "hint": 1.0}).cuda()
    assert d.teacher is not None and next(d.teacher.parameters()).is_cuda
    x, y = batch(8)
    with torch.autocast("cuda", dtype=torch.float16):
        loss, logs = d(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in t.parameters())


def stage_outputs(model, x, names):
    """Block outputs captured with forward hooks on the model itself (independent of probes)."""
    got = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, [got[n] for n in names]


def test_adding_a_term_never_changes_another():
    # issue 9: with a hint term on layer1.*, AT ran on layer1.0, layer1.1, layer2.1, layer3.1 (6.93 -> 5.26)
    torch.manual_seed(0)
    teacher = wrn(16, 2)
    student = fxswap.cheapen(teacher, "G(N/4)")
    x, y = batch(4)
    alone = Distiller(teacher, student, {"at": 1000.0}).eval()(x, y)[1]
    for extra, points in [({"hint": 1.0}, {"hint": ["layer1.*"]}), ({"kd": 0.9, "srrl": 1.0}, None),
                          ({"hint": 1.0, "mimic": 1.0}, {"hint": ["layer2.0", "layer3.*"]})]:
        logs = Distiller(teacher, student, {"at": 1000.0, **extra}, points=points).eval()(x, y)[1]
        assert torch.equal(logs["at"], alone["at"]), extra
        assert "ce" not in logs or torch.equal(logs["ce"], alone["ce"])


def test_each_term_is_its_loss_on_the_right_points():
    torch.manual_seed(1)
    teacher = wrn(16, 2).eval()
    student = wrn(16, 1).eval()
    d = Distiller(teacher, student, {"at": 1000.0, "kd": {"alpha": 0.5, "T": 2.0}, "hint": 2.0}).eval()
    x, y = batch(4)
    _, logs = d(x, y)
    stages = ["layer1.1", "layer2.1", "layer3.1"]  # the last block of each stage, not every block
    s_logits, s_feats = stage_outputs(student, x, stages)
    t_logits, t_feats = stage_outputs(teacher, x, stages)
    assert torch.allclose(logs["at"], L.attention_transfer(s_feats, t_feats, beta=1000.0), rtol=1e-5)
    assert torch.allclose(logs["kd"], L.kd_loss(s_logits, t_logits, y, alpha=0.5, T=2.0), rtol=1e-5)
    with torch.no_grad():
        hint = 2.0 * sum(L.hint_loss(s, t, c) for s, t, c in zip(s_feats, t_feats, d.connectors["hint"]))
    assert [c.proj.in_channels for c in d.connectors["hint"]] == [16, 32, 64]
    assert torch.allclose(logs["hint"], hint, rtol=1e-5)
    assert "ce" not in logs  # kd carries its own label term


def test_a_registered_loss_is_used_by_name():
    name = "test_only_l1_logits"

    @L.register_loss(name)
    def l1(s, t, y, scale=1.0):
        return scale * (s - t).abs().mean()

    try:
        teacher = wrn(10, 1).eval()
        student = fxswap.cheapen(teacher, "G(N/4)").eval()
        d = Distiller(teacher, student, {name: {"weight": 3.0, "scale": 0.5}}).eval()
        x, y = batch(4)
        _, logs = d(x, y)
        with torch.no_grad():
            expected = 3.0 * 0.5 * (student(x) - teacher(x)).abs().mean()
        assert torch.allclose(logs[name], expected) and "ce" in logs
        with pytest.raises(fxswap.DistillError, match="cannot be called"):
            Distiller(teacher, student, {name: {"nope": 1.0}})
    finally:
        L.LOSSES.pop(name, None)


def test_unknown_options_are_refused():
    t = wrn(10, 1)
    with pytest.raises(fxswap.DistillError, match="unknown option.*accepted: alpha, T, reduction"):
        Distiller(t, t, {"kd": {"alpha": 0.9, "temperature": 4}})
    with pytest.raises(fxswap.DistillError, match="points given for"):
        Distiller(t, t, {"kd": 0.9}, points={"at": "stages"})


def test_teacher_copy_stays_in_eval_with_unchanged_buffers():
    teacher = wrn(10, 2)
    teacher.train()
    d = Distiller(teacher, fxswap.cheapen(teacher, "G(N/4)"), {"at": 1000.0, "kd": 0.9, "srrl": 1.0})
    before = snapshot(d.teacher)
    d.train()
    for _ in range(3):
        loss, _ = d(*batch(4))
        loss.backward()
    assert not any(m.training for m in d.teacher.modules())
    assert not d.connectors["srrl"].teacher_head.module.training
    assert same(before, d.teacher.state_dict())
    assert teacher.training and all(m.training for m in teacher.modules())
