"""Every fxswap call that switches a model to eval for a moment gives each module its own flag back: a user's
model with one frozen BatchNorm (eval inside a training model) keeps it frozen after evaluate, a Distiller's
connector sizing, FitNets' hint sizing and a whole fit. ``model.train(was)`` would unfreeze it."""
import pytest
import torch

import fxswap
from fxswap.distillation.evaluation import evaluate
from fxswap.distillation.fitnets import HintStage


def _flags(model):
    return {name: m.training for name, m in model.named_modules()}


def _mixed(depth=10, width=1, frozen=("layer1.0.bn1", "layer2.0.bn2")):
    torch.manual_seed(0)
    model = fxswap.models.wrn(depth, width).train()
    for name in frozen:
        model.get_submodule(name).eval()
    return model


def _loader(n=8, batch=4):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_evaluate_keeps_each_modules_flag():
    model = _mixed()
    before = _flags(model)
    assert not before["layer1.0.bn1"] and before["layer1.0.bn2"]  # mixed, as the test needs
    evaluate(model, _loader(), "cpu")
    assert _flags(model) == before


@pytest.mark.parametrize("losses", [{"ce": 1.0, "at": 1000.0}, {"ce": 1.0, "hint": 1.0}])
def test_sizing_the_connectors_keeps_the_students_flags(losses):
    teacher, student = _mixed(10, 2, ()), _mixed()
    before = _flags(student)
    fxswap.Distiller(teacher, student, losses)
    assert _flags(student) == before


def test_fitnets_hint_sizing_keeps_the_students_flags():
    teacher, student = _mixed(10, 2, ()), _mixed()
    before = _flags(student)
    HintStage(teacher, student)
    assert _flags(student) == before


def test_fit_gives_every_module_its_flag_back(tmp_path):
    student = _mixed()
    distiller = fxswap.Distiller(None, student, {"ce": 1.0})
    before = _flags(distiller)
    fxswap.fit(distiller, _loader(), _loader(), epochs=1, preset="cosine", progress=False, device="cpu")
    assert _flags(distiller) == before
