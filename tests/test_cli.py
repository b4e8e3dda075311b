import json

from fxswap.cli import main


def test_cheapen_prints_tables_and_forward_check(capsys):
    assert main(["cheapen", "wrn-16-2", "G(N/4)"]) == 0
    out = capsys.readouterr().out
    assert "layer3.1" in out and "forward check" in out and "OK" in out


def test_cheapen_accepts_plan_json(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"layer1.*": "B(2)", "*": "G(2)"}}))
    assert main(["cheapen", "wrn-16-1", str(plan)]) == 0


def test_bad_spec_is_a_clear_error(capsys):
    assert main(["cheapen", "wrn-16-1", "G(0)"]) == 2
    assert "fxswap: error" in capsys.readouterr().err


def test_unknown_model(capsys):
    assert main(["blocks", "no-such-model-xyz"]) == 2
    assert "accepted" in capsys.readouterr().err


def test_count_and_blocks(capsys):
    assert main(["count", "resnet-20"]) == 0
    assert main(["blocks", "tv:resnet18", "--input", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1" in out


def test_missing_plan_file_says_no_such_file(capsys):
    assert main(["cheapen", "wrn-16-1", "nowhere/plan.json"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "spec" in err


def test_model_comes_before_spec_in_usage(capsys):
    assert main(["cheapen", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.index("model") < usage.index("spec")


def test_cli_package_has_no_import_cycle():
    import ast
    import pathlib

    import fxswap.cli

    root = pathlib.Path(fxswap.cli.__file__).parent
    imports = {}
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text())
        imports[f.stem] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                           and n.module} | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                                            and n.level == 1 and n.module is None for a in n.names}
    # only main imports the command modules; command modules import only common
    for name, deps in imports.items():
        if name not in ("main", "__init__"):
            assert deps <= {"common"}, (name, deps)


# ---------------------------------------------------------------------------
# issue 12: the CLI's contract (0 ok, 2 bad input in one line, 1 other failure)
# ---------------------------------------------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 16),
             x_test=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 8))
    return str(path)


DISTILL = ["distill", "--teacher", "wrn-10-1", "--student", "G(N/4)", "--epochs", "1", "--batch-size", "8",
           "--workers", "0", "--no-progress"]
SEARCH = ["search", "wrn-10-1", "--budget", "50%", "--samples", "2", "--batch-size", "4", "--no-macs",
          "--candidates", "S,G(N/4)", "--no-progress"]


@pytest.mark.parametrize("argv, says", [
    (["blocks", "wrn-15-1"], "depth must be 6n+4"),
    (["blocks", "wrn-16-0"], "width must be a positive integer"),
    (["count", "resnet-21"], "depth must be 6n+2"),
    (["blocks", "wrn-16-1", "--num-classes", "-1"], "integer >= 1"),
    (SEARCH + ["--batch-size", "0"], "integer >= 1"),
    (SEARCH + ["--batch-size", "-4"], "integer >= 1"),
    (SEARCH + ["--seed", "-1"], "integer >= 0"),
    (SEARCH + ["--top", "0"], "integer >= 1"),
    (SEARCH + ["--budget", "150%"], "percentage must be in (0, 100]"),
    (SEARCH + ["--out", "no/such/dir/r.json"], "does not exist"),
    (["cheapen", "wrn-10-1", "G(2)", "--save", "no/such/dir/s.pt"], "does not exist"),
    (DISTILL + ["--data", "DATA", "--lr", "-1"], "number > 0"),
    (DISTILL + ["--data", "DATA", "--finetune-epochs", "-1"], "integer >= 0"),
    (DISTILL + ["--data", "DATA", "--device", "foo"], "not a device"),
    (DISTILL + ["--data", "DATA", "--method", '{"kd": {"alpha": 0.9, "temp": 4}}'], "unknown option"),
    (DISTILL + ["--data", "DATA", "--out", "DATA"], "is a file"),  # a missing --out folder is made
])
def test_bad_input_exits_2_with_one_line(argv, says, capsys, tiny_npz):
    argv = [tiny_npz if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "building the cost table" not in err and "forward check" not in captured.out  # nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when there is no GPU")
def test_cuda_without_a_gpu(capsys, tiny_npz):
    assert main(DISTILL + ["--data", tiny_npz, "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_other_failures_exit_1(monkeypatch, capsys):
    import fxswap.cli.cheapen as cli_cheapen

    def broken(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_cheapen, "run_blocks", broken)
    assert main(["blocks", "wrn-10-1"]) == 1
    err = capsys.readouterr().err
    assert "disk on fire" in err and len(err.strip().splitlines()) == 1


def run_cli(args, encoding, cwd):
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "fxswap", *args], capture_output=True, env=env, cwd=cwd,
                          timeout=600)


def test_results_are_written_and_tables_degrade_under_narrow_encodings(tmp_path):
    saved = tmp_path / "student.pt"
    done = run_cli(["cheapen", "wrn-10-1", "G(N/4)", "--save", str(saved)], "cp1252", tmp_path)  # no → in cp1252
    assert done.returncode == 0, done.stderr
    assert saved.exists() and "-> params" in done.stdout.decode("cp1252")
    out = tmp_path / "r.json"
    done = run_cli(SEARCH[:3] + ["66k"] + SEARCH[4:] + ["--out", str(out)], "ascii", tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["plan"] and "+-" in done.stderr.decode("ascii")


def test_distill_no_progress_prints_each_epoch_and_lit_reports_the_real_path(tmp_path, capsys, tiny_npz):
    out = tmp_path / "run"
    argv = DISTILL + ["--data", tiny_npz, "--method", "lit", "--finetune-epochs", "0", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "lit epoch 1" in text
    reported = text.strip().splitlines()[-1].rsplit(" is in ", 1)[-1]
    assert os.path.isfile(reported), reported


class _Stop(Exception):
    """Raised by a stand-in to end a CLI run once what it was called with is known."""


@pytest.mark.parametrize("extra, batch, cutout", [
    ([], 128, 0),                                              # moonshine: the papers' 128, no Cutout
    (["--method", "lit"], 32, 0),                              # LIT's preset trains at batch 32
    (["--preset", "blockswap"], 128, 16),                      # BlockSwap's reference uses Cutout 16
    (["--preset", "blockswap", "--batch-size", "8", "--cutout", "0"], 8, 0),  # what the user asks wins
])
def test_distill_takes_batch_and_cutout_from_the_preset(extra, batch, cutout, monkeypatch, tiny_npz):
    import fxswap.data.datasets

    seen = {}

    def loaders(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(fxswap.data.datasets, "make_loaders", loaders)
    argv = [a for a in DISTILL if a not in ("--batch-size", "8")] + ["--data", tiny_npz, *extra]
    assert main(argv) == 1  # the stand-in's _Stop, reported as any other failure
    assert (seen["batch_size"], seen["cutout"]) == (batch, cutout)


def test_lits_options_reach_lit_and_are_refused_elsewhere(monkeypatch, capsys, tiny_npz):
    import fxswap.distillation

    seen = {}

    def distill(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(fxswap.distillation, "distill", distill)
    assert main(DISTILL + ["--data", tiny_npz, "--method", "lit", "--train-stem-and-head"]) == 1
    assert seen["method"] == "lit" and seen["train_stem_and_head"] is True
    seen.clear()
    assert main(DISTILL + ["--data", tiny_npz, "--method", "lit"]) == 1
    assert seen["train_stem_and_head"] is False  # the reference's frozen stem and head by default
    assert main(DISTILL + ["--data", tiny_npz, "--method", "at", "--train-stem-and-head"]) == 2
    assert "applies to --method lit only" in capsys.readouterr().err
    # the fine-tune's own schedule, for LIT alone
    seen.clear()
    assert main(DISTILL + ["--data", tiny_npz, "--method", "lit", "--finetune-preset", "cosine",
                           "--finetune-lr", "0.02"]) == 1
    assert (seen["finetune_preset"], seen["finetune_lr"]) == ("cosine", 0.02)
    seen.clear()
    assert main(DISTILL + ["--data", tiny_npz, "--method", "lit"]) == 1
    assert "finetune_preset" not in seen and "finetune_lr" not in seen  # distill_lit's defaults, LIT's own
    for flag in (["--finetune-preset", "cosine"], ["--finetune-lr", "0.02"]):
        assert main(DISTILL + ["--data", tiny_npz, "--method", "kd", *flag]) == 2
        assert f"{flag[0]} applies to --method lit only" in capsys.readouterr().err


def test_distill_warm_start_keeps_the_teacher_weights_and_fits_the_rewritten_blocks(tmp_path, monkeypatch, capsys,
                                                                                   tiny_npz):
    import torch

    import fxswap.distillation

    teacher = fxswap.models.wrn(10, 1)
    ckpt = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), ckpt)
    seen = {}

    def distill(teacher_, student, *args, **kwargs):
        seen["student"] = student
        raise _Stop

    monkeypatch.setattr(fxswap.distillation, "distill", distill)
    assert main(DISTILL + ["--data", tiny_npz, "--teacher-checkpoint", str(ckpt), "--warm-start", "3"]) == 1
    text = capsys.readouterr().out
    assert "MSE before" in text and "student val after the warm start" in text
    student = seen["student"].state_dict()
    # outside the rewritten blocks the student starts as the teacher (without --warm-start: re-initialised)
    assert torch.equal(student["conv1.weight"], teacher.state_dict()["conv1.weight"])
    assert torch.equal(student["fc.weight"], teacher.state_dict()["fc.weight"])


def test_distill_warm_start_needs_a_cheapened_student(capsys, tiny_npz):
    argv = [a if a != "G(N/4)" else "wrn-10-1" for a in DISTILL] + ["--data", tiny_npz, "--warm-start", "2"]
    assert main(argv) == 2
    assert "--warm-start" in capsys.readouterr().err
