"""precision="auto"|"fp32"|"bf16" (issue 19): what auto picks from the CPU's flags, and that fit, the Fisher
scorer, blockswap and the CLI run in it and record it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fxswap
import fxswap.precision as precision_module
from fxswap.distillation import Distiller
from fxswap.errors import DistillError, FxswapError
from fxswap.precision import NATIVE_BF16_FLAGS, PrecisionError, cpu_flags, resolve_precision
from fxswap.search.fisher import random_init
from fxswap.search.plans import BlockSwapResult

OTHER_FLAGS = ["fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8",
               "avx512_fp16", "bf16"]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(OTHER_FLAGS + list(NATIVE_BF16_FLAGS))))
def test_auto_is_bf16_exactly_when_a_native_flag_is_there(flags):
    p = resolve_precision("auto", "cpu", flags=flags)
    native = bool(set(flags) & set(NATIVE_BF16_FLAGS))
    assert (p.name, p.dtype, p.channels_last, p.amp) == (("bf16", torch.bfloat16, True, True) if native
                                                         else ("fp32", torch.float32, False, False))
    assert p.reason.startswith("auto: ")
    if not native:  # says why: the flags it looked for
        assert "avx512_bf16" in p.reason and "amx_bf16" in p.reason
    # explicit choices are honoured whatever the flags
    assert resolve_precision("fp32", "cpu", flags=flags).name == "fp32"
    assert resolve_precision("bf16", "cpu", flags=flags).dtype == torch.bfloat16


def test_avx2_only_cpu_is_fp32_and_says_why():
    zen3 = {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}
    p = resolve_precision("auto", "cpu", flags=zen3)
    assert p.name == "fp32" and "neither avx512_bf16 nor amx_bf16" in p.describe()
    assert "emulated" in resolve_precision("bf16", "cpu", flags=zen3).reason  # asked for: done, with the warning


@pytest.mark.parametrize("rho, expect", [(None, "fp32"), (0.95, "fp32"), (0.98, "bf16"), (0.995, "bf16")])
def test_scoring_keeps_bf16_only_with_measured_agreement(monkeypatch, rho, expect):
    monkeypatch.setattr(precision_module, "SCORING_RHO", rho)
    p = resolve_precision("auto", "cpu", purpose="score", flags={"avx512_bf16"})
    assert p.name == expect
    if expect == "fp32":
        assert "0.98" in p.reason or "not measured" in p.reason
    assert resolve_precision("auto", "cpu", purpose="train", flags={"avx512_bf16"}).name == "bf16"


def test_flags_from_a_cpuinfo_file_and_without_one(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") is None
    # no /proc/cpuinfo (macOS, Windows): torch's capability names the vector width only, so auto stays fp32
    monkeypatch.setattr(precision_module, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": None)
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and torch.backends.cpu.get_cpu_capability() in p.reason


@pytest.mark.parametrize("bad", ["fp64", "BF16", "", None, 16])
def test_unknown_precision_is_a_clear_error(bad):
    with pytest.raises(PrecisionError, match="accepted: 'auto', 'fp32', 'bf16'"):
        resolve_precision(bad, "cpu")


class Recorder(nn.Module):
    """A tiny conv student that records, per forward, the autocast state and the input's memory format."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                          x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
        h = self.conv(x)
        self.seen[-1] += (h.dtype,)
        return self.fc(h.mean((2, 3)))


def _loader():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 2, (8,), generator=g)),
                      batch_size=4)


@pytest.mark.parametrize("kwargs, autocast, channels_last, label", [
    ({"precision": "bf16"}, True, True, "bf16+channels_last"),
    ({"precision": "fp32"}, False, False, "fp32"),
    ({"precision": "fp32", "amp": True}, True, False, "bf16"),  # the explicit amp switch wins
    ({"precision": "bf16", "amp": False}, False, False, "fp32"),
])
def test_fit_runs_in_the_precision_and_records_it(tmp_path, kwargs, autocast, channels_last, label):
    student = Recorder()
    hist = fxswap.fit(Distiller(None, student, {"ce": 1.0}), _loader(), _loader(), epochs=1, preset="cosine",
                      progress=False, out_dir=tmp_path, **kwargs)
    train_steps = student.seen[:2]  # 2 training batches, then validation
    for enabled, dtype, cl, conv_dtype in train_steps:
        assert enabled == autocast and cl == channels_last
        assert conv_dtype == (torch.bfloat16 if autocast else torch.float32)
        if autocast:
            assert dtype == torch.bfloat16
    assert [h["precision"] for h in hist] == [label]
    saved = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert saved[0]["precision"] == label
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights stay fp32


def test_fit_auto_follows_this_machine():
    student = Recorder()
    hist = fxswap.fit(Distiller(None, student, {"ce": 1.0}), _loader(), epochs=1, preset="cosine", progress=False)
    assert hist[0]["precision"] == resolve_precision("auto", "cpu").label


def test_fit_bad_precision_is_an_error_before_training():
    student = Recorder()
    with pytest.raises(DistillError, match="precision='half' is not known"):
        fxswap.fit(Distiller(None, student, {"ce": 1.0}), _loader(), epochs=1, precision="half", progress=False)
    assert student.seen == []


def test_bf16_distillation_leaves_the_teacher_as_it_was():
    torch.manual_seed(0)
    teacher, student = fxswap.models.wrn(10, 1), fxswap.models.wrn(10, 1)
    teacher.eval()
    before = [(n, p.detach().clone(), p.stride()) for n, p in teacher.state_dict(keep_vars=True).items()]
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    fxswap.distill(teacher, student, DataLoader(TensorDataset(x, y), batch_size=2), epochs=1, method="at",
                   precision="bf16", progress=False)
    after = teacher.state_dict(keep_vars=True)
    for name, value, stride in before:
        assert torch.equal(after[name], value) and after[name].stride() == stride, name
    assert not teacher.training


def test_fisher_potential_in_bf16_is_close_and_autocast():
    torch.manual_seed(0)
    net = random_init(fxswap.models.wrn(10, 1), 0)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    fp32 = fxswap.fisher_potential(net, (x, y), precision="fp32")
    bf16 = fxswap.fisher_potential(net, (x, y), precision="bf16")
    assert fp32.total != bf16.total  # it did run in bf16
    assert abs(bf16.total - fp32.total) < 0.1 * fp32.total
    with pytest.raises(PrecisionError):
        fxswap.fisher_potential(net, (x, y), precision="fp16")


def test_blockswap_records_the_precision_in_its_json(tmp_path):
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    runs = {}
    for prec in ("fp32", "bf16"):
        r = fxswap.blockswap(fxswap.models.wrn(10, 1), "66k", (x, y), samples=2, candidates=["S", "G(N/4)"],
                             macs=False, precision=prec)
        path = r.to_json(tmp_path / f"{prec}.json")
        assert json.loads(path.read_text())["precision"] == r.precision
        assert BlockSwapResult.from_json(path).precision == r.precision
        runs[prec] = r
    assert runs["fp32"].precision == "fp32" and runs["bf16"].precision == "bf16+channels_last"
    assert {tuple(c.plan.items()) for c in runs["fp32"].candidates} == \
        {tuple(c.plan.items()) for c in runs["bf16"].candidates}  # the same plans, scored in each
    auto = fxswap.blockswap(fxswap.models.wrn(10, 1), "66k", (x, y), samples=1, candidates=["S", "G(N/4)"],
                            macs=False)
    assert auto.precision == resolve_precision("auto", "cpu", purpose="score").label


def test_cli_search_and_distill_take_precision(tmp_path, capsys):
    from fxswap.cli import main

    out = tmp_path / "plan.json"
    argv = ["search", "wrn-10-1", "--budget", "66k", "--samples", "2", "--batch-size", "4", "--no-macs",
            "--candidates", "S,G(N/4)", "--no-progress", "--out", str(out)]
    assert main(argv + ["--precision", "bf16"]) == 0
    assert "precision: bf16 + channels_last" in capsys.readouterr().err
    assert json.loads(out.read_text())["precision"] == "bf16+channels_last"
    assert main(argv + ["--precision", "fp16"]) == 2  # a usage error
    assert "invalid choice: 'fp16'" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 8),
             x_test=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 8))
    run = tmp_path / "run"
    assert main(["distill", "--teacher", "wrn-10-1", "--student", "G(N/4)", "--data", str(npz), "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--no-progress", "--out", str(run),
                 "--precision", "fp32"]) == 0
    assert "precision: fp32 (asked for)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "student" / "history.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in rows] == ["fp32"]


def test_errors_are_fxswap_errors():
    assert issubclass(PrecisionError, FxswapError) and issubclass(PrecisionError, ValueError)
