"""save_student / load_student: the record rebuilds the student; mismatches are clear errors."""
import pytest
import torch

import fxswap
from fxswap.errors import FxswapError
from fxswap.models import wrn


def _trained(student, seed=0):
    """Weights that differ from any fresh initialisation, as a trained student's would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in student.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.01)
    return student


def _same_outputs(a, b, shape=(2, 3, 32, 32)):
    x = torch.randn(shape)
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("model, plan, kwargs", [
    ("wrn-16-1", {"layer3.*": "B(2)", "layer1.0": "I", "*": "G(N/4)"}, {}),
    ("tv:resnet18", "BG(2,M/4)", {"num_classes": 7}),
    ("wrn-16-1", "S-2x2", {"root": "layer2"}),
])
def test_round_trip_rebuilds_the_same_student(tmp_path, model, plan, kwargs):
    teacher = fxswap.models.create_model(model, kwargs.get("num_classes"))
    student = _trained(fxswap.cheapen(teacher, plan, root=kwargs.get("root")))
    shape = (3, 32, 32)
    record = fxswap.save_student(student, tmp_path / "s.pt", model=model, plan=plan, input_shape=shape, **kwargs)
    again = fxswap.load_student(tmp_path / "s.pt")
    assert type(again) is type(student)
    assert student.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in student.state_dict().items())
    assert _same_outputs(student, again)
    assert record == fxswap.read_record(tmp_path / "s.pt")
    assert record["input_shape"] == [3, 32, 32] and record["versions"]["torch"] == str(torch.__version__)
    assert record["versions"]["fxswap"] == fxswap.__version__
    assert record.get("num_classes") == kwargs.get("num_classes") and record["root"] == kwargs.get("root")


def test_the_file_is_plain_data_loadable_weights_only(tmp_path):
    student = fxswap.cheapen(wrn(10, 1), "G(N/4)")
    fxswap.save_student(student, tmp_path / "s.pt", model="wrn-10-1", plan="G(N/4)")
    data = torch.load(tmp_path / "s.pt", weights_only=True)
    assert set(data) == {"fxswap_student", "record", "state_dict"}
    assert data["record"]["plan"] == {"layer1.0": "G(N/4)", "layer2.0": "G(N/4)", "layer3.0": "G(N/4)"}


def test_saving_does_not_touch_the_student(tmp_path):
    student = fxswap.cheapen(wrn(10, 1), "B(2)").train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    fxswap.save_student(student, tmp_path / "s.pt", model="wrn-10-1", plan="B(2)")
    assert student.training and all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_plan_made_for_another_model_is_an_error(tmp_path):
    # the case: a WRN-16-2 plan on WRN-40-2 used to leave 12 of 18 blocks silently S
    student = fxswap.cheapen(wrn(16, 2), {"layer2.*": "G(N/4)"})
    fxswap.save_student(student, tmp_path / "s.pt", model="wrn-16-2", plan={"layer2.*": "G(N/4)"})
    with pytest.raises(FxswapError, match=r"made for wrn-16-2.*\(6 blocks\).*\(18 blocks\)"):
        fxswap.load_student(tmp_path / "s.pt", model=wrn(40, 2))


def test_a_record_that_does_not_describe_the_student_is_refused_before_writing(tmp_path):
    student = fxswap.cheapen(wrn(16, 2), "G(N/4)")
    with pytest.raises(FxswapError, match="not the plan this student was cheapened with"):
        fxswap.save_student(student, tmp_path / "a.pt", model="wrn-16-2", plan="B(2)")   # wrong plan
    with pytest.raises(FxswapError, match="not those of cheapen"):
        fxswap.save_student(student, tmp_path / "b.pt", model="wrn-16-2", plan="G(N/4)", num_classes=100)
    with pytest.raises(fxswap.SpecError, match="match no block"):
        fxswap.save_student(student, tmp_path / "c.pt", model="wrn-16-2", plan={"stage9.*": "G(N/4)"})
    assert not list(tmp_path.iterdir())


def test_files_that_are_not_saved_students(tmp_path):
    with pytest.raises(FxswapError, match="no such file"):
        fxswap.load_student(tmp_path / "missing.pt")
    torch.save(wrn(10, 1).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(FxswapError, match="bare state_dict"):
        fxswap.load_student(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FxswapError, match="cannot read"):
        fxswap.load_student(tmp_path / "junk.pt")


def test_an_import_path_is_only_followed_when_trusted(tmp_path):
    student = fxswap.cheapen(wrn(10, 1), "B(2)")
    fxswap.save_student(student, tmp_path / "s.pt", model="fxswap.models:wrn", plan="B(2)",
                        model_kwargs={"depth": 10, "width": 1})
    with pytest.raises(FxswapError, match="trust_import=True"):
        fxswap.load_student(tmp_path / "s.pt")
    again = fxswap.load_student(tmp_path / "s.pt", trust_import=True)
    assert _same_outputs(student, again)


def test_bad_model_names_are_clear_errors(tmp_path):
    student = fxswap.cheapen(wrn(10, 1), "B(2)")
    with pytest.raises(FxswapError, match="unknown model"):
        fxswap.save_student(student, tmp_path / "s.pt", model="no-such-net", plan="B(2)")
    with pytest.raises(FxswapError, match="named by a string"):
        fxswap.save_student(student, tmp_path / "s.pt", model=wrn(10, 1), plan="B(2)")
