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


def test_every_example_has_a_test():
    tested = {"plain_loop", "lightning_module", "accelerate_loop", "timm_train", "detection_backbone",
              "search_cheapen_distill"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested
