import pytest
import torch
import timm

import fxswap
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
    hooks = [sec.register_forward_pre_hook(lambda m, args: fed.append(args[0])) for sec in lit._sections]
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
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert {id(p) for p in lit.parameters()} == {id(p) for p in student.parameters()}


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
