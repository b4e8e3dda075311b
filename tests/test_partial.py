"""cheapen(model, plan, root=...): surgery on one submodule, the rest a faithful copy."""
import pytest
import torch

import fxswap
from fxswap.models import wrn


def _size(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("spec", ["G(N/4)", "B(2)", "I", "S-2x2"])
def test_root_equals_a_glob_plan_over_that_part(spec):
    teacher = wrn(16, 1)
    part = fxswap.cheapen(teacher, spec, root="layer2")
    whole = fxswap.cheapen(teacher, {"layer2.*": spec})
    assert _size(part) == _size(whole) < _size(teacher)
    assert _size(part.layer1) == _size(teacher.layer1) and _size(part.layer3) == _size(teacher.layer3)
    x = torch.randn(2, 3, 32, 32)
    assert part.eval()(x).shape == (2, 10)


def test_the_rest_is_a_copy_sharing_nothing_and_the_teacher_is_untouched():
    teacher = wrn(10, 1).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = fxswap.cheapen(teacher, "B(2)", root="layer3")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert type(teacher.layer3[0]).__name__ == "PreActBlock" and teacher.training
    assert student.conv1.weight is not teacher.conv1.weight
    assert torch.equal(student.conv1.weight, teacher.conv1.weight)
    assert student.layer3 is not teacher.layer3


def test_plan_keys_are_relative_to_the_root():
    teacher = wrn(16, 1)
    student = fxswap.cheapen(teacher, {"0": "G(N/4)"}, root="layer3")  # block names inside layer3 are "0", "1"
    assert type(student.layer3[0].conv1).__name__ == "Sequential"
    assert type(student.layer3[1].conv1).__name__ == "Conv2d"
    with pytest.raises(fxswap.SpecError, match="match no block"):
        fxswap.cheapen(teacher, {"layer3.0": "G(N/4)"}, root="layer3")


@pytest.mark.parametrize("root, words", [
    ("layer9", r"children of the model are \['conv1', 'layer1'"),
    ("layer2.7", r"children of 'layer2' are \['0', '1'\]"),
    ("", "dotted path"),
])
def test_a_bad_root_names_what_is_there(root, words):
    with pytest.raises(fxswap.SpecError, match=words):
        fxswap.cheapen(wrn(16, 1), "G(N/4)", root=root)
