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


# --- issue 18 class 7: the batch dimension is dynamic, checked at two batch sizes -------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fxswap.testing import build, residual_nets, specs  # noqa: E402


def _run_file(path, fmt, x):
    """Run a written file the way a user would, with no help from fxswap."""
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                HealthCheck.function_scoped_fixture])
@given(net_and_spec=residual_nets(max_stages=2, max_blocks=2, max_width=16).flatmap(
           lambda n: st.tuples(st.just(n), specs(n))),
       fmt=st.sampled_from(["pt2", "onnx"]))
def test_an_exported_student_runs_at_any_batch_size_and_matches_pytorch(tmp_path_factory, net_and_spec, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    net, spec = net_and_spec
    student = fxswap.cheapen(build(net), spec, allow_larger=True)
    path = tmp_path_factory.mktemp("export") / f"s.{fmt}"
    r = fxswap.export(student, torch.randn(1, 3, 16, 16), path)
    assert r.dynamic_batch and r.batch_sizes == (1, 3) and r.max_abs_diff <= r.atol and r.note == ""
    assert r.files == (str(path),) and sorted(p.name for p in path.parent.iterdir()) == [path.name]  # one file
    student.eval()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(_run_file(path, fmt, x), student(x), atol=1e-4, rtol=1e-4)


class _LoopsOverTheBatch(torch.nn.Module):
    """Runs at every batch size in PyTorch, but a Python loop over the batch unrolls it into the program."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.cat([self.fc(x[i:i + 1]) for i in range(x.shape[0])])


class _FlattensTheBatch(torch.nn.Module):
    """Works only at batch 1 (``reshape(1, -1)``): a static export is all it can have."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.reshape(1, -1))


@pytest.mark.parametrize("model, x, words", [
    (_LoopsOverTheBatch(), torch.randn(1, 4), "a dynamic batch did not export"),
    (_FlattensTheBatch(), torch.randn(1, 2, 4), "the model itself fails at batch 3"),
])
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_model_that_fixes_its_batch_is_exported_static_with_a_warning_saying_why(tmp_path, model, x, words, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    with pytest.warns(UserWarning, match="batch size is fixed at 1"):
        r = fxswap.export(model, x, tmp_path / f"m.{fmt}")
    assert not r.dynamic_batch and r.batch_sizes == (1,) and words in r.note and words in str(r)
    with torch.no_grad():
        torch.testing.assert_close(_run_file(tmp_path / f"m.{fmt}", fmt, x), model(x), atol=1e-5, rtol=1e-5)


def test_static_batch_on_request(tmp_path, student):
    r = fxswap.export(student, torch.randn(2, 3, 32, 32), tmp_path / "s.pt2", dynamic_batch=False)
    assert not r.dynamic_batch and r.batch_sizes == (2,) and r.note == "" and "fixed batch size" in str(r)
    with pytest.raises(Exception):  # a static program guards its batch size
        torch.export.load(str(tmp_path / "s.pt2")).module()(torch.randn(3, 3, 32, 32))


def test_onnx_weights_over_the_single_file_limit_go_beside_it_and_the_result_says_so(tmp_path, student, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    export_module = sys.modules["fxswap.io.export"]  # `import fxswap.io.export` gives the function it exports

    monkeypatch.setattr(export_module, "ONNX_SINGLE_FILE_BYTES", 0)  # as if the student were over 2 GB
    r = fxswap.export(student, torch.randn(1, 3, 32, 32), tmp_path / "s.onnx")
    data = tmp_path / "s.onnx.data"
    assert data.is_file() and r.files == (str(tmp_path / "s.onnx"), str(data))
    assert "s.onnx.data" in r.note and "must stay beside" in str(r) and r.to_dict()["files"] == list(r.files)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_run_file(tmp_path / "s.onnx", "onnx", x), student.eval()(x), atol=1e-4, rtol=1e-4)
    monkeypatch.undo()  # a second export to the same path, small again: one file, the stale .data removed
    r = fxswap.export(student, torch.randn(1, 3, 32, 32), tmp_path / "s.onnx")
    assert r.files == (str(tmp_path / "s.onnx"),) and not data.exists()
