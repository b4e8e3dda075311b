"""Fisher potential (BlockSwap §3.3/§4) against an independent hook-based computation; sensitivity."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fxswap
from fxswap.search.fisher import channel_fisher, fisher_potential, probe_points, random_init, sensitivity
from fxswap.models import cifar_resnet, wrn


def _batch(n=6, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)


def _reference_fisher(model, points, batch):
    """Straightforward: forward hooks on the probe convs, full loss.backward(), float64 loops."""
    model = copy.deepcopy(model).train()
    acts = {}

    def hook(name):
        def fn(mod, inp, out):
            out.retain_grad()
            acts[name] = out
        return fn

    handles = [model.get_submodule(path).register_forward_hook(hook(name)) for name, path in points.items()]
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    scores = {}
    for name, a in acts.items():
        A, g = a.detach().double(), a.grad.double()
        n, c = A.shape[:2]
        total = 0.0
        for ch in range(c):
            per_image = [(A[i, ch] * g[i, ch]).sum().item() for i in range(n)]
            total += sum(v * v for v in per_image) / (2 * n)
        scores[name] = total
    return scores


@pytest.mark.parametrize("make, plan", [
    (lambda: wrn(10, 1), None),
    (lambda: wrn(10, 2), {"layer2.*": "B(2)", "*": "G(N/4)"}),
    (lambda: cifar_resnet(8), {"layer1.*": "BG(2,M/2)"}),
])
def test_matches_independent_computation(make, plan):
    torch.manual_seed(0)
    model = make()
    if plan is not None:
        model = fxswap.cheapen(model, plan)
    points = probe_points(model)
    batch = _batch()
    got = fisher_potential(model, batch, precision="fp32")  # against an fp32 reference
    ref = _reference_fisher(model, points, batch)
    assert list(got.blocks) == list(ref)
    for name in ref:
        assert got.blocks[name] == pytest.approx(ref[name], rel=1e-5)
    assert got.total == pytest.approx(sum(ref.values()), rel=1e-5)


def test_probe_is_after_last_conv_before_add():
    pts = probe_points(fxswap.cheapen(wrn(10, 1), {"layer1.*": "B(2)", "layer2.*": "G(4)"}))
    assert pts == {"layer1.0": "layer1.0.substitute.up", "layer2.0": "layer2.0.conv2.pointwise",
                   "layer3.0": "layer3.0.conv2"}


def test_channel_formula():
    a = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.0]]]])  # N=2, C=1, 1x2
    g = torch.tensor([[[[0.5, 1.0]]], [[[2.0, 7.0]]]])
    # image sums: 1*.5+2*1 = 2.5 ; 3*2 = 6  ->  (2.5² + 6²) / (2·2)
    assert channel_fisher(a, g).item() == pytest.approx((2.5 ** 2 + 36) / 4)


def test_no_side_effects():
    model = wrn(10, 1).eval()
    state = copy.deepcopy(model.state_dict())
    fisher_potential(model, _batch())
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_batchnorm_is_used():
    # in eval mode with fresh running stats BN is the identity; train mode normalises by batch stats
    model = wrn(10, 1)
    fp = fisher_potential(model.eval(), _batch(), precision="fp32")
    model2 = copy.deepcopy(model).train()
    ref = _reference_fisher(model2, probe_points(model2), _batch())
    assert fp.total == pytest.approx(sum(ref.values()), rel=1e-5)


def test_random_init_reproducible():
    a, b = random_init(wrn(10, 1), 5), random_init(wrn(10, 1), 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = random_init(wrn(10, 1), 6)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_sensitivity_table():
    rep = sensitivity(wrn(10, 1), "G(N/4)", _batch(4))
    assert [r.block for r in rep.rows] == [b.name for b in fxswap.find_blocks(wrn(10, 1))]
    teacher_params = sum(p.numel() for p in wrn(10, 1).parameters())
    assert rep.teacher_params == teacher_params
    for r in rep.rows:
        student = fxswap.cheapen(wrn(10, 1), {r.block: "G(N/4)"})
        assert r.params == sum(p.numel() for p in student.parameters())
        assert r.saved == teacher_params - r.params > 0
    text = rep.table()
    assert "layer3.0" in text and "(none)" in text
    # reproducible
    again = sensitivity(wrn(10, 1), "G(N/4)", _batch(4))
    assert [r.fisher for r in again.rows] == [r.fisher for r in rep.rows]


def test_fisher_leaves_every_training_flag_as_found():
    # a teacher in train mode with its BN layers in eval (a common fine-tuning set-up)
    from fxswap.models import wrn

    model = wrn(10, 1).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    fisher_potential(model, (x, y))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
