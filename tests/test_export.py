"""fxswap.export: the written file reproduces the PyTorch outputs; failures are clear errors."""
import sys

import pytest
import torch

import fxswap
from fxswap.errors import FxswapError
from fxswap.models import wrn


@pytest.fixture(scope="module")
def student():
    return fxswap.cheapen(wrn(10, 1), {"layer1.*": "B(2)", "layer2.*": "I", "*": "G(N/4)"})


def test_pt2_export_loads_back_and_matches_pytorch(tmp_path, student):
    x = torch.randn(2, 3, 32, 32)
    student.train()
    r = fxswap.export(student, x, tmp_path / "s.pt2")
    assert student.training  # exported in eval mode on a copy; the user's model keeps its mode
    assert r.format == "pt2" and 0 <= r.max_abs_diff <= r.atol and r.path == str(tmp_path / "s.pt2")
    program = torch.export.load(str(tmp_path / "s.pt2"))
    with torch.no_grad():
        reference = student.eval()(x)
        assert torch.allclose(program.module()(x), reference, atol=1e-5)
    assert "s.pt2" in str(r) and r.to_dict()["max_abs_diff"] == r.max_abs_diff


def test_a_difference_above_the_tolerance_is_an_error_and_the_file_is_kept(tmp_path, student):
    with pytest.raises(FxswapError, match="differs from PyTorch"):
        fxswap.export(student, torch.randn(1, 3, 32, 32), tmp_path / "s.pt2", atol=-1.0)
    assert (tmp_path / "s.pt2").is_file()


@pytest.mark.parametrize("path, kwargs, words", [
    ("s.tflite", {}, "cannot tell the export format"),
    ("s.bin", {"format": "tflite"}, "unknown export format"),
    ("s.pt2", {"example_input": [1, 2, 3]}, "example_input is one input batch"),
    ("s.pt2", {"example_input": torch.randn(1, 5, 32, 32)}, "failed on example_input"),
])
def test_bad_arguments_are_clear_errors(tmp_path, student, path, kwargs, words):
    x = kwargs.pop("example_input", torch.randn(1, 3, 32, 32))
    with pytest.raises(FxswapError, match=words):
        fxswap.export(student, x, tmp_path / path, **kwargs)


def test_onnx_without_the_extra_says_how_to_install_it(tmp_path, student, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    # fxswap is not on the package index: the hint names the packages, and the extra of a checkout
    with pytest.raises(FxswapError, match=r"pip install onnx onnxscript onnxruntime .*pip install -e '\.\[onnx\]'"):
        fxswap.export(student, torch.randn(1, 3, 32, 32), tmp_path / "s.onnx")


def test_onnx_export_matches_pytorch(tmp_path, student):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    x = torch.randn(2, 3, 32, 32)
    r = fxswap.export(student, x, tmp_path / "s.onnx")
    assert r.format == "onnx" and r.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), student.eval()(x), atol=1e-4)
