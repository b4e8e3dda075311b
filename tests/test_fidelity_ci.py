"""benchmarks/fidelity.py --scale ci runs every experiment end to end (so the script cannot rot)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from fxswap.distillation.warm_start import WarmStartReport

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_all_five_experiments_run_at_ci_scale(fidelity, tmp_path):
    dump = fidelity.main(["all", "--scale", "ci", "--out", str(tmp_path)])
    results = dump["results"]
    failed = {k: v["error_msg"] for k, v in results.items() if "error_msg" in v}
    assert not failed
    for exp in fidelity.EXPERIMENTS:
        runs = [v for k, v in results.items() if k.startswith(exp + "/")]
        assert runs, exp
        assert all(0.0 <= v["error"] <= 100.0 and v["params"] > 0 for v in runs)
    assert (tmp_path / "teacher.pt").is_file()
    md = (tmp_path / "results.md").read_text()
    for title in ("Findings at this scale", "Moonshine", "BlockSwap", "LIT", "Warm start", "SRRL", "Urban"):
        assert f"### {title}" in md
    assert "5.31" in md  # the paper's G(N/4) AT error printed beside ours
    # ci scale asks for fp32, and fit's own default (auto) would be bf16 on a bf16-capable CPU
    students = [v for k, v in results.items() if k.startswith(("moonshine/", "lit/"))]
    assert students and {v["precision"] for v in students} == {"fp32"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiments"] == list(fidelity.EXPERIMENTS)
    assert dump["blockswap_scoring"]["top"]  # plans were scored
    assert results["blockswap/G(N/4) at"] == results["moonshine/G(N/4) at"]  # one training, not two
    warm = results["warmstart/G(N/4) warm at"]
    assert [p["stage"] for p in warm["curve"]] == ["cheapen", "warm start", "at"] and warm["warm_start"]
    assert [p["stage"] for p in results["warmstart/G(N/4) refit kd"]["curve"]] == ["cheapen", "warm start", "kd"]
    progress = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert len(progress) == len(results) + 1  # every finished job left a line (+ the BlockSwap scoring)


def test_urban_students_have_the_asked_parameters_and_conv_layers(fidelity):
    import torch

    for k in range(4):
        m = fidelity.urban_student(k, 30_000, image=32)
        n = sum(p.numel() for p in m.parameters())
        assert abs(n - 30_000) <= (3 * 32 * 32 + 11) / 2  # within half a hidden unit of the MLP (the coarsest)
        assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == k
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lit_plan_keeps_the_first_block_of_each_stage(fidelity):
    import fxswap

    plan = fidelity.lit_plan(fxswap.models.wrn(40, 2))  # 6 blocks per stage: 1, 3, 5 go
    assert sorted(plan) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in (1, 3, 5)]
    assert set(plan.values()) == {"I"}


def test_spearman_matches_hand_values(fidelity):
    assert fidelity.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert fidelity.spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert math.isnan(fidelity.spearman([1, 2], [2, 1]))


def _progress(out):
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_seeds_mean_se_and_resume_job_by_job(fidelity, tmp_path, capsys):
    argv = ["moonshine", "warmstart", "--scale", "ci", "--seeds", "0", "1", "--students", "G(N/4)",
            "--methods", "scratch,at", "--out", str(tmp_path)]
    dump = fidelity.main(argv)
    assert "ETA:" in capsys.readouterr().out  # measured and printed before the first job
    results = dump["results"]
    assert not [k for k, v in results.items() if "error_msg" in v]
    assert {"moonshine/G(N/4) at [seed 0]", "moonshine/G(N/4) at [seed 1]"} <= set(results)
    cell = dump["cells"]["moonshine/G(N/4) at"]
    errors = [results[f"moonshine/G(N/4) at [seed {s}]"]["error"] for s in (0, 1)]
    assert cell["n"] == 2 and cell["errors"] == errors
    assert cell["error"] == pytest.approx(sum(errors) / 2)
    assert cell["se"] == pytest.approx(abs(errors[0] - errors[1]) / 2)  # s.d./√2 of two values
    md = (tmp_path / "results.md").read_text()
    assert f"{cell['error']:.2f} ± {cell['se']:.2f}" in md and "### Warm start" in md
    assert (tmp_path / "warmstart_curve.png").stat().st_size > 0
    assert "![warm-start curve](warmstart_curve.png)" in md  # relative: results.md lies beside it
    warm = dump["cells"]["warmstart/G(N/4) warm at"]
    pts = fidelity.warmstart_points(warm)  # the plotted points: each the mean over the two seeds' curves
    assert [p[0] for p in pts] == [0.0, 0.5, 1.0]
    for (x, mean, _), stage in zip(pts, ("cheapen", "warm start", "at")):
        vals = [p["error"] for c in warm["curves"] for p in c if p["stage"] == stage]
        assert len(vals) == 2 and mean == pytest.approx(sum(vals) / 2)
    rows = _progress(tmp_path)
    assert len(rows) == len(results)  # every job (the teacher too) left one line

    again = fidelity.main(argv)  # every job finished: nothing runs again
    assert len(_progress(tmp_path)) == len(rows)
    assert all(v.get("resumed") for v in again["results"].values())
    assert again["cells"]["moonshine/G(N/4) at"]["errors"] == errors

    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    (tmp_path / "progress.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if killed during the last job
    fidelity.main(argv)
    rows = _progress(tmp_path)
    assert len(rows) == len(lines) and rows[-1]["key"] == json.loads(lines[-1])["key"]  # that job alone re-ran

    fidelity.main([*argv[:-1], str(tmp_path), "--epochs", "2"])  # another config: nothing reused
    assert len(_progress(tmp_path)) == 2 * len(lines)


def test_teacher_checkpoint_in_save_student_format_loads(fidelity, tmp_path):
    import fxswap
    import torch

    teacher = fxswap.models.create_model("wrn-16-1")
    path = tmp_path / "teacher.pt"
    fxswap.save_student(teacher, path, model="wrn-16-1", plan="S")
    loaded = fidelity._teacher({"scale": fidelity.SCALES["ci"], "teacher_path": str(path)})
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), loaded.state_dict().values()))
    wrong = tmp_path / "wrong.pt"
    fxswap.save_student(fxswap.models.create_model("wrn-10-1"), wrong, model="wrn-10-1", plan="S")
    with pytest.raises(SystemExit, match="wrn-16-1"):
        fidelity._teacher({"scale": fidelity.SCALES["ci"], "teacher_path": str(wrong)})


def test_decide_scale_has_two_seeds_and_the_ordered_cells(fidelity):
    s = fidelity.SCALES["decide"]
    assert len(s.seeds) >= 2 and s.blockswap_trained >= 12
    assert s.moonshine_students == ("G(N/4)", "wrn-16-1") and s.precision == "auto"
    assert fidelity.EXPERIMENTS[:3] == ("moonshine", "blockswap", "lit")


@pytest.mark.slow
def test_a_new_teacher_reruns_only_the_jobs_that_read_it(fidelity, tmp_path):
    import fxswap
    import torch

    def teacher_file(name, seed):
        torch.manual_seed(seed)
        path = tmp_path / name
        fxswap.save_student(fxswap.models.create_model("wrn-16-1"), path, model="wrn-16-1", plan="S")
        return path

    out = tmp_path / "grid"
    argv = ["moonshine", "warmstart", "--scale", "ci", "--students", "G(N/4)", "--methods", "scratch,at",
            "--out", str(out)]
    alone = fidelity.main([*argv, "--without-teacher"])["results"]  # while the teacher trains
    assert sorted(alone) == ["moonshine/G(N/4) scratch"] and not (out / "teacher.pt").exists()
    first = fidelity.main([*argv, "--teacher-checkpoint", str(teacher_file("a.pt", 0))])["results"]
    assert sorted(k for k, v in first.items() if v.get("resumed")) == ["moonshine/G(N/4) scratch"]
    assert first["moonshine/G(N/4) scratch"]["error"] == alone["moonshine/G(N/4) scratch"]["error"]
    # the warm-start table's from-scratch row is Moonshine's training (one signature), with its curve
    assert first["warmstart/G(N/4) scratch at"] == first["moonshine/G(N/4) at"]
    assert [p["stage"] for p in first["moonshine/G(N/4) scratch"]["curve"]] == ["scratch"]
    second = fidelity.main([*argv, "--teacher-checkpoint", str(teacher_file("b.pt", 1))])["results"]
    resumed = sorted(k for k, v in second.items() if v.get("resumed"))
    assert resumed == ["moonshine/G(N/4) scratch"]  # AT, the warm start and the teacher's test ran again

    lines = len(_progress(out))
    third = teacher_file("c.pt", 2)  # a teacher nothing ran with: only the scratch cell is on record
    report = fidelity.main([*argv, "--teacher-checkpoint", str(third), "--report-only"])
    assert sorted(report["results"]) == ["moonshine/G(N/4) scratch"] and len(_progress(out)) == lines
    assert "moonshine/G(N/4) at" not in report["cells"] and "not run" in (out / "results.md").read_text()


def test_a_job_killed_mid_run_resumes_at_its_last_epoch(fidelity, tmp_path, monkeypatch, capsys):
    argv = ["moonshine", "--scale", "ci", "--students", "G(N/4)", "--methods", "scratch", "--epochs", "3",
            "--without-teacher"]
    key = "moonshine/G(N/4) scratch"
    whole = fidelity.main([*argv, "--out", str(tmp_path / "whole")])["results"][key]

    class Killed(Exception):
        pass

    real = fidelity._epoch_line

    def dies_after_epoch_2(ctx):
        line = real(ctx)

        def on_epoch(row):
            line(row)
            if row["epoch"] == 2:
                raise Killed("the session ended")
        return on_epoch

    out = tmp_path / "cut"
    monkeypatch.setattr(fidelity, "_epoch_line", dies_after_epoch_2)
    cut = fidelity.main([*argv, "--out", str(out)])["results"][key]
    assert "Killed" in cut["error_msg"]
    (folder,) = (out / "jobs").iterdir()
    sig = json.loads((folder / "job.json").read_text())["sig"]
    assert fidelity.epochs_done({"out": str(out)}, sig) == 2
    monkeypatch.setattr(fidelity, "_epoch_line", real)
    assert "0 resuming" in capsys.readouterr().out
    again = fidelity.main([*argv, "--out", str(out)])["results"][key]
    printed = capsys.readouterr().out
    assert "1 resuming at their last epoch" in printed  # the ETA counts the one epoch left, not three
    assert "epoch 3:" in printed and "epoch 1:" not in printed and "epoch 2:" not in printed  # resumed, not redone
    assert [p["epoch"] for p in again["curve"]] == [1, 2, 3]
    assert again["error"] == pytest.approx(whole["error"], abs=1e-9)  # as if never killed
    assert list((out / "jobs").iterdir()) == [folder] and json.loads((folder / "job.json").read_text())["key"] == key
    assert folder == fidelity.job_dir({"out": str(out)}, sig)

    fidelity.main([*argv, "--out", str(out), "--fresh"])  # --fresh trains from epoch 1 again
    assert "epoch 1:" in capsys.readouterr().out


def test_findings_are_called_against_the_pooled_seed_noise(fidelity):
    def cell(a, b):
        return {"error": (a + b) / 2, "errors": [a, b], "n": 2}

    # seed-to-seed spreads 0.2 in every cell: pooled s.d. = √(0.02) ≈ 0.1414, s.e. of a difference = 0.1414
    cells = {"moonshine/G(N/4) scratch": cell(10.0, 10.2), "moonshine/G(N/4) at": cell(9.0, 9.2),
             "moonshine/G(N/4) kd": cell(10.1, 10.3), "moonshine/wrn-16-1 at": cell(8.0, 8.2),
             "lit/lit-student kd": cell(7.0, 7.2)}
    md = "\n".join(fidelity.findings({}, cells, rho=(-0.9, 12)))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "**reproduced**" in rows["Moonshine: AT beats scratch (G(N/4))"]  # gain 1.0 > 2 × 0.141
    assert "**undecided**" in rows["Moonshine: KD beats scratch (G(N/4))"]  # loss 0.1 < 2 × 0.141
    assert "**not reproduced**" in rows[  # G(N/4) AT is 1.0 worse than wrn-16-1 AT
        "Moonshine: the cheapened student beats the reduced one, both AT (wrn-16-1 → G(N/4))"]
    assert "**undecided**" in rows["LIT beats KD on the depth-halved student"]  # LIT's cell never ran
    assert "**reproduced**" in rows["BlockSwap: the Fisher potential ranks plans (ρ(Fisher, error) < 0)"]
    assert "(0.14 points, 5 degrees of freedom)" in md
    assert "Warm start" not in md  # neither of its cells ran: no row

    # a run that asked for the warm start and BlockSwap lists their findings, undecided, before any cell ends
    asked = {"experiments": ("moonshine", "blockswap", "warmstart")}
    md = "\n".join(fidelity.findings(asked, cells))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    for title in ("Warm start beats scratch after the KD epochs (G(N/4); ours)",
                  "BlockSwap: its pick beats G(N/4), both AT",
                  "BlockSwap: the Fisher potential ranks plans (ρ(Fisher, error) < 0)"):
        assert "**undecided**" in rows[title] and ("not finished" in rows[title] or "fewer than 4" in rows[title])
    assert "LIT beats KD on the depth-halved student" not in rows  # LIT was not asked for, though a cell ran
    assert "**reproduced**" in rows["Moonshine: AT beats scratch (G(N/4))"]
    # a cell with one seed so far is not called, however large its gain over the pooled noise
    one = {**cells, "moonshine/G(N/4) at": {"error": 5.0, "errors": [5.0], "n": 1}}
    row = next(r for r in fidelity.findings(asked, one) if r.startswith("| Moonshine: AT beats scratch"))
    assert "**undecided**" in row and "one seed" in row

    # a run two experiments share counts once, and a cell whose seeds diverge is left out of the pool
    same = {**cells["moonshine/G(N/4) at"], "sigs": ["s0", "s1"]}
    shared = {**cells, "moonshine/G(N/4) at": same, "blockswap/G(N/4) at": same,
              "lit/lit-student lit": cell(50.0, 46.0)}
    sd, df, outliers = fidelity.pooled_noise(shared)
    assert (round(sd, 4), df, outliers) == (0.1414, 5, ["lit/lit-student lit"])
    md = "\n".join(fidelity.findings({"experiments": ("moonshine", "lit")}, shared))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "**reproduced**" in rows["Moonshine: AT beats scratch (G(N/4))"]  # the outlier does not set its noise
    lit = rows["LIT beats KD on the depth-halved student"]  # judged by its own cells: loss 40.9 > 12.7 × 2.0
    assert "**not reproduced**" in lit and "own spreads" in lit
    assert "(0.14 points, 5 degrees of freedom)" in md and "lit/lit-student lit is left out" in md


def test_a_resumed_grids_eta_runs_at_the_rates_its_finished_jobs_took(fidelity, tmp_path, monkeypatch):
    base = ["moonshine", "--scale", "ci", "--methods", "scratch", "--without-teacher", "--out", str(tmp_path)]
    fidelity.main([*base, "--students", "G(N/4)", "--seeds", "0"])
    (row,) = _progress(tmp_path)
    assert row["processes"] == 1 and row["threads"] >= 1

    def eta_with(**changes):
        (tmp_path / "progress.jsonl").write_text(json.dumps({**row, **changes}) + "\n")
        monkeypatch.setattr(fidelity, "run_jobs", lambda ctx, jobs, n: {})  # the ETA alone
        eta = fidelity.main([*base, "--students", "G(N/4);wrn-10-1", "--seeds", "0", "1"])["eta"]
        monkeypatch.undo()

        def probed(student):  # the probe's seconds per epoch: training steps + evaluation batches
            step, ev, n_train, n_val = eta["rates"][json.dumps([student, False, None])]
            return n_train * step + n_val * ev
        return eta, probed

    # the finished G(N/4) took 1000 s for its one epoch: its seed-1 twin is planned at that, and the two
    # wrn-10-1 jobs (no record) at their probe times the record's slowdown over the G(N/4) probe
    eta, probed = eta_with(seconds=1000.0)
    assert eta["slowdown"] == pytest.approx(1000.0 / probed("G(N/4)"))
    assert eta["per_experiment"]["moonshine"] == pytest.approx(1000.0 + 2 * eta["slowdown"] * probed("wrn-10-1"))
    # a record made with another number of processes says nothing of this run's rates: the probe alone
    eta, probed = eta_with(seconds=1000.0, processes=2)
    assert eta["slowdown"] == 1.0 and not eta["recorded_epoch_seconds"]
    assert eta["per_experiment"]["moonshine"] == pytest.approx(probed("G(N/4)") + 2 * probed("wrn-10-1"))


def test_a_record_resumes_under_the_precision_flag_it_was_computed_in(fidelity, tmp_path):
    key = "moonshine/G(N/4) scratch"
    argv = ["moonshine", "--scale", "ci", "--students", "G(N/4)", "--methods", "scratch", "--without-teacher",
            "--out", str(tmp_path)]
    first = fidelity.main([*argv, "--precision", "auto"])["results"][key]
    computed = first["precision"].split("+")[0]  # what auto resolved to on this machine: bf16 or fp32
    assert computed in ("bf16", "fp32")
    again = fidelity.main([*argv, "--precision", computed])["results"][key]  # the same computation, asked by name
    assert again.get("resumed") and again["error"] == first["error"]
    other = "fp32" if computed == "bf16" else "bf16"
    third = fidelity.main([*argv, "--precision", other])["results"][key]  # another computation: it runs
    assert not third.get("resumed") and third["precision"].split("+")[0] == other
    assert len(_progress(tmp_path)) == 2


def test_lits_row_trains_on_the_kd_rows_schedule_where_the_scale_sets_one(fidelity, monkeypatch):
    jobs = {j.name: j for j in fidelity.lit_jobs({"scale": fidelity.SCALES["decide"]}, None, None)}
    lit, kd = jobs["lit-student lit"], jobs["lit-student kd"]
    cosine = fidelity.fxswap.distillation.presets.get_preset("cosine")
    assert (lit.args["finetune_preset"], lit.args["finetune_lr"]) == ("cosine", pytest.approx(cosine.lr / 10))
    assert "finetune_lr" not in kd.args
    # at paper scale each row keeps its paper's presets, LIT's fine-tune included
    assert all("finetune_lr" not in j.args for j in fidelity.lit_jobs({"scale": fidelity.SCALES["paper"]}, None, None))
    # run_student hands both to LIT's recipe, and its LIT stage trains on the scale's preset, as the KD row
    seen = []
    monkeypatch.setattr(fidelity.fxswap, "distill",
                        lambda *a, **kw: seen.append(kw) or [{"epoch": 1, "val_acc": 0.5, "seconds": 1.0}])
    monkeypatch.setattr(fidelity, "_teacher", lambda ctx: fidelity.fxswap.models.create_model("wrn-16-1"))
    monkeypatch.setattr(fidelity, "_loaders", lambda *a, **kw: (None, None))
    ctx = {"scale": fidelity.SCALES["ci"], "seed": 0, "bf16": False}
    for job in fidelity.lit_jobs(ctx, None, None):
        fidelity.run_student(ctx, **job.args)
    by_method = {kw["method"]: kw for kw in seen}
    assert by_method["lit"]["preset"] == by_method["kd"]["preset"] == fidelity.SCALES["ci"].preset
    assert by_method["lit"]["finetune_lr"] == pytest.approx(cosine.lr / 10)
    assert by_method["lit"]["epochs"] + by_method["lit"]["finetune_epochs"] == by_method["kd"]["epochs"]


def test_the_refit_start_runs_todays_warm_start_then_fine_tunes_and_warm_keeps_its_records(fidelity, monkeypatch):
    s = fidelity.SCALES["decide"]
    jobs = {j.name: j for j in fidelity.warmstart_jobs({"scale": s, "starts": ("warm", "refit")}, None, ["kd"])}
    # "warm" keeps the arguments its records were made with, so a resumed grid does not rerun them
    assert jobs["G(N/4) warm kd"].args == {"student": "G(N/4)", "method": "kd", "start": "warm",
                                           "epochs": s.warmstart_epochs, "steps": s.warmstart_steps}
    refit = jobs["G(N/4) refit kd"].args
    cosine = fidelity.fxswap.distillation.presets.get_preset(s.preset)
    assert refit["steps"] == 3 * s.warmstart_steps and refit["recalibrate"] > 0
    assert refit["train_lr"] == pytest.approx(cosine.lr / 10)
    with pytest.raises(SystemExit, match="unknown start"):
        fidelity._starts("warm,hot")
    # run_warmstart hands them on: warm_start's lr and recalibration, then the method at train_lr
    seen = {}

    def warm_start(*args, **kw):
        seen["warm"] = kw
        return WarmStartReport({}, steps=kw["steps"], images=0, seconds=0.0, params=0)

    def distill(*args, **kw):
        seen["distill"] = kw
        return [{"epoch": 1, "val_acc": 0.5, "seconds": 1.0}]

    monkeypatch.setattr(fidelity.fxswap, "warm_start", warm_start)
    monkeypatch.setattr(fidelity.fxswap, "distill", distill)
    monkeypatch.setattr(fidelity, "_teacher", lambda ctx: fidelity.fxswap.models.create_model("wrn-16-1"))
    monkeypatch.setattr(fidelity, "_loaders", lambda *a, **kw: (None, None))
    monkeypatch.setattr(fidelity, "_val_error", lambda *a: 90.0)
    fidelity.run_warmstart({"scale": fidelity.SCALES["ci"], "seed": 0, "bf16": False}, **refit)
    assert (seen["warm"]["steps"], seen["warm"]["lr"], seen["warm"]["recalibrate"]) == (
        refit["steps"], refit["lr"], refit["recalibrate"])
    assert seen["distill"]["lr"] == pytest.approx(refit["train_lr"])
    # its finding has a row once a cell of it exists, judged as every other
    cell = {"n": 2}
    cells = {"warmstart/G(N/4) scratch kd": {**cell, "error": 17.0, "errors": [16.9, 17.1]},
             "warmstart/G(N/4) refit kd": {**cell, "error": 15.0, "errors": [14.9, 15.1]}}
    md = "\n".join(fidelity.findings({}, cells))
    assert "| Refit warm start, then a fine-tune at lr/10, beats scratch after the KD epochs" in md
    assert "**reproduced**" in md and "after the AT epochs" not in md
