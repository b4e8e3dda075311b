"""Every recipe under examples/ runs at tiny size (skipped when its optional package is missing)."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite(logs: dict) -> bool:
    return all(math.isfinite(float(v)) for v in logs.values())


def test_plain_loop(capsys):
    out = load("plain_loop").main(tiny=True)
    assert set(out["logs"]) == {"at", "kd", "loss"} and _finite(out["logs"])
    assert 0.0 <= out["accuracy"] <= 1.0
    assert "epoch 1:" in capsys.readouterr().out


def test_lightning_checkpoint_holds_the_student_only():
    pytest.importorskip("lightning")
    out = load("lightning_module").main(tiny=True)
    student_keys = {f"distiller.student.{k}" for k in out["student"].state_dict()}
    assert set(out["state_keys"]) == student_keys  # no teacher tensor in the checkpoint


def test_accelerate_loop():
    pytest.importorskip("accelerate")
    out = load("accelerate_loop").main(tiny=True)
    assert set(out["logs"]) == {"at", "kd", "loss"} and _finite(out["logs"])


def test_timm_train_style():
    pytest.importorskip("timm")
    out = load("timm_train").main(tiny=True)
    assert set(out["logs"]) == {"kd", "loss"} and _finite(out["logs"])
    # the EMA copy follows the student's architecture
    assert out["ema"].state_dict().keys() == out["student"].state_dict().keys()


def test_timm_task_adds_fxswaps_terms_to_timms_training():
    pytest.importorskip("timm.task")
    out = load("timm_task").main(tiny=True)
    result, task, student = out["result"], out["task"], out["student"]
    terms = {"ce", "at", "hint", "srrl"}
    assert terms | {"loss", "output"} == set(result) and _finite({k: result[k].detach() for k in terms | {"loss"}})
    # the loss timm's loop backpropagates is the sum of the terms: timm's label loss and fxswap's
    assert float(result["loss"].detach()) == pytest.approx(sum(float(result[k]) for k in terms), rel=1e-5)
    assert result["output"].shape == (4, 10) and not result["output"].requires_grad
    # the optimiser trains the student and the connectors; the teacher has no parameter in it
    trained = {id(p) for p in task.get_trainable_module().parameters()}
    assert {id(p) for p in student.parameters()} < trained
    assert not trained & {id(p) for p in task.get_trainable_module().teacher.parameters()}
    assert not trained & {id(p) for p in out["teacher"].parameters()}
    # validation, the EMA and timm's checkpoint see the student alone
    assert task.get_eval_model() is student
    assert out["checkpoint"]["state_dict"].keys() == student.state_dict().keys()
    assert out["ema"].state_dict().keys() == student.state_dict().keys()


def test_detection_backbone_surgery(capsys):
    out = load("detection_backbone").main(tiny=True)
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    teacher, student = out["teacher"], out["student"]
    assert size(student.backbone.body) < size(teacher.backbone.body)
    assert size(student.rpn) == size(teacher.rpn) and size(student.roi_heads) == size(teacher.roi_heads)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(out["losses"])
    assert all(v == v for v in out["losses"].values())
    assert sorted(out["detections"][0]) == ["boxes", "labels", "scores"]
    assert "detector parameters" in capsys.readouterr().out


def test_search_cheapen_distill_save_reload():
    out = load("search_cheapen_distill").main(tiny=True)
    teacher_params = sum(p.numel() for p in out["teacher"].parameters())
    student, again = out["student"], out["reloaded"]
    assert sum(p.numel() for p in student.parameters()) <= 0.5 * teacher_params * 1.025  # the budget (+ tolerance)
    assert len(out["history"]) == 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), again.eval()(x))


def _skipped_imports() -> set[str]:
    """Every package a test skips on when it is missing (``importorskip`` across tests/), the standard
    library's aside."""
    import re
    import sys

    tests = Path(__file__).resolve().parent
    found = {m.split(".")[0] for p in tests.glob("*.py")
             for m in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", p.read_text())}
    return {m for m in found if m and m not in sys.stdlib_module_names}


def test_the_recipes_extra_installs_every_package_a_test_would_skip_on():
    """CI installs .[test] and .[recipes]: together with the core dependencies they cover every importorskip,
    so no example, export, plot or callback test is skipped there."""
    tomllib = pytest.importorskip("tomllib")
    import re

    project = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower()
             for r in project["dependencies"] + extras["test"] + extras["recipes"]}
    missing = {m for m in _skipped_imports() if m.lower() not in names}  # import name = distribution name here
    assert not missing, f"add {sorted(missing)} to [project.optional-dependencies] recipes in pyproject.toml"
    ci = (EXAMPLES.parent / ".ci" / "run").read_text()
    assert "'.[recipes]'" in ci and "FXSWAP_REQUIRE_EXTRAS=1" in ci


@pytest.mark.skipif(not __import__("os").environ.get("FXSWAP_REQUIRE_EXTRAS"),
                    reason="CI sets FXSWAP_REQUIRE_EXTRAS=1 (.ci/run installs .[recipes])")
def test_ci_has_every_package_a_test_would_skip_on():
    import importlib

    missing = []
    for name in sorted(_skipped_imports()):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    assert not missing, f"CI lacks {missing}: the tests that need them would be skipped"


def test_every_example_has_a_test():
    tested = {"plain_loop", "lightning_module", "accelerate_loop", "timm_train", "timm_task", "detection_backbone",
              "search_cheapen_distill"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_plain_loop_reads_an_npz_and_names_a_failed_download(tmp_path, monkeypatch, capsys):
    import urllib.error

    import numpy as np
    import torchvision

    import fxswap

    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 16),
             x_test=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 8))
    out = load("plain_loop").main(argv=["--tiny", "--data", str(path)])
    assert 0.0 <= out["accuracy"] <= 1.0 and out["accuracy"] * 8 == round(out["accuracy"] * 8)  # 8 test images
    assert "val acc" in capsys.readouterr().out

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(fxswap.FxswapError, match=r"failed \(offline\?\)"):
        load("plain_loop").main(argv=["--data", str(tmp_path / "cifar")])
