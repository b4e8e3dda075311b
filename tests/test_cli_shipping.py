"""The CLI's shipping surface: --json, --latency, --version, cheapen --save (a self-describing student),
fxswap export, --weights / --pretrained."""
import json

import pytest
import torch

import fxswap
from fxswap.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fxswap {fxswap.__version__}") and torch.__version__ in out


def test_blocks_json_lists_the_blocks_find_blocks_finds(capsys):
    assert main(["blocks", "wrn-16-1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    blocks = fxswap.find_blocks(fxswap.models.wrn(16, 1))
    assert [b["name"] for b in data["blocks"]] == [b.name for b in blocks]
    assert data["blocks"][2]["in_channels"] == blocks[2].in_channels and data["blocks"][2]["stride"] == 2


def test_count_json_with_latency(capsys):
    assert main(["count", "wrn-10-1", "--json", "--latency", "--batch", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"]["params"] == sum(p.numel() for p in fxswap.models.wrn(10, 1).parameters())
    assert data["latency"]["batch"] == 2 and data["latency"]["total"]["median_ms"] > 0
    assert [b["name"] for b in data["latency"]["blocks"]] == ["layer1.0", "layer2.0", "layer3.0"]


def test_count_without_json_prints_the_latency_table(capsys):
    assert main(["count", "wrn-10-1", "--latency"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "IQR ms" in out and "batch 1" in out


def test_cheapen_save_writes_a_student_that_loads_and_exports(tmp_path, capsys):
    path = tmp_path / "student.pt"
    assert main(["cheapen", "wrn-10-1", '{"layer3.*": "B(2)", "*": "G(N/4)"}', "--save", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["forward_check"]["ok"] and data["saved"] == str(path)
    assert data["comparison"]["ratios"]["params"] < 1 and "teacher_latency" not in data["comparison"]
    record = fxswap.read_record(path)
    assert record["model"] == "wrn-10-1" and record["plan"] == {"layer1.0": "G(N/4)", "layer2.0": "G(N/4)",
                                                               "layer3.0": "B(2)"}
    assert record["input_shape"] == [3, 32, 32]
    student = fxswap.load_student(path)
    assert sum(p.numel() for p in student.parameters()) == data["comparison"]["student"]["params"]

    assert main(["export", str(path), str(tmp_path / "student.pt2"), "--batch", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "pt2" and result["max_abs_diff"] <= 1e-4
    assert result["dynamic_batch"] and result["batch_sizes"] == [2, 4] and result["files"] == [result["path"]]
    program = torch.export.load(str(tmp_path / "student.pt2"))
    for batch in (2, 5):  # issue 18: a file exported at one batch size runs at another
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), student.eval()(x), atol=1e-5)


def test_export_to_onnx_at_batch_1_runs_at_batch_5_in_one_file(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "student.pt"
    assert main(["cheapen", "wrn-10-1", "G(N/4)", "--save", str(path)]) == 0
    assert main(["export", str(path), str(tmp_path / "student.onnx")]) == 0
    out = capsys.readouterr().out
    assert "any batch size" in out and "at batch 1, 3" in out and "note:" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "student.pt"]  # no .onnx.data
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), fxswap.load_student(path).eval()(x), atol=1e-4)


def test_cheapen_latency_adds_the_column(capsys):
    assert main(["cheapen", "wrn-10-1", "B(2)", "--latency", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "-> ms" in out and "latency: median per forward pass (cpu, batch 2" in out


def test_export_of_a_bare_state_dict_is_bad_input(tmp_path, capsys):
    torch.save(fxswap.models.wrn(10, 1).state_dict(), tmp_path / "bare.pt")
    assert main(["export", str(tmp_path / "bare.pt"), str(tmp_path / "s.pt2")]) == 2
    assert "not a student saved by fxswap.save_student" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "bare.pt"), str(tmp_path / "s.tflite")]) == 2


def test_weights_file_is_loaded_into_the_teacher(tmp_path, capsys):
    teacher = fxswap.models.wrn(10, 1)
    with torch.no_grad():
        teacher.fc.bias.fill_(0.5)
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "teacher.pt")  # timm-style wrapper
    student_path = tmp_path / "s.pt"
    assert main(["cheapen", "wrn-10-1", "G(N/4)", "--weights", str(tmp_path / "teacher.pt"),
                 "--save", str(student_path)]) == 0
    student = fxswap.load_student(student_path)
    assert torch.equal(student.fc.bias, teacher.fc.bias)  # untouched layers keep the loaded weights
    capsys.readouterr()
    assert main(["count", "wrn-16-1", "--weights", str(tmp_path / "teacher.pt")]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert main(["count", "wrn-10-1", "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pretrained_is_refused_for_models_without_published_weights(capsys):
    assert main(["blocks", "wrn-16-1", "--pretrained"]) == 2
    assert "--weights FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two are exclusive
        from fxswap.cli.main import build_parser
        build_parser().parse_args(["blocks", "wrn-16-1", "--pretrained", "--weights", "x.pt"])


def test_export_of_a_timm_training_checkpoint_says_what_the_file_is_and_how_to_make_a_student(tmp_path, capsys):
    """timm's train.py saves model_best.pth.tar as a dict with an argparse.Namespace under 'args': weights-only
    loading refuses it. The user gets one fxswap error naming the file kind and the way to a save_student file,
    not torch's paragraph with ANSI codes."""
    import argparse

    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": fxswap.models.wrn(10, 1).state_dict(),
                "optimizer": {}, "args": argparse.Namespace(model="resnet10t", lr=0.1)}, path)
    assert main(["export", str(path), str(tmp_path / "s.pt2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxswap: error: ") and err.count("\n") == 1 and "\x1b[" not in err
    assert "argparse.Namespace" in err and "training checkpoint" in err and "fxswap.save_student" in err
    assert "load_state_dict" in err and not (tmp_path / "s.pt2").exists()
    with pytest.raises(fxswap.FxswapError, match="not a student saved by fxswap.save_student"):
        fxswap.load_student(path)
