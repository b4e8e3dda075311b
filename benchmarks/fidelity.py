"""The seeds' findings, re-run with fxswap's public API: one sub-command per paper, ``--scale ci|cpu|gpu|paper``.

Sub-commands (``all`` runs every one, sharing one teacher; several may be named, e.g. ``lit srrl``):

* ``moonshine`` (seed 000, Table 3): cheap-block students ``G(N/4)``, ``B(2)``,
  ``BG(2,M/8)`` of the teacher and a reduced-depth/width WRN of similar size,
  each from scratch, with KD and with AT. Findings: AT beats scratch for the
  cheap-block students; at equal parameters cheap blocks beat the reduced
  architecture. Figure: error vs parameters (log x), as the paper's Figure 3.
* ``blockswap`` (seed 003, Tables 1–2): Fisher potential of random plans at
  one budget (the parameters of the teacher's ``G(N/4)`` student), a spread of
  them trained from scratch → Spearman ρ(Fisher, error) (the paper: −0.6 to
  −0.7); the BlockSwap pick vs the ``G(N/4)`` student of equal budget, both
  with AT. At ``paper`` scale as the reference runs it: its 23 candidates,
  each scored on its own Cutout-augmented minibatch at its own random
  initialisation, and the students trained with the ``blockswap`` preset
  (cosine, Cutout 16).
* ``lit`` (seed 001, Table 3): a depth-reduced student (blocks replaced by
  ``I``) with KD vs LIT (the teacher's stem and head frozen in the student, as
  lit-code), both at LIT's batch of 32 (``cpu`` and ``paper`` scales).
* ``srrl`` (seed 004, Table 1): L_FM, L_SR and L_FM + L_SR (each with CE) vs
  KD into a shallower WRN.
* ``urban`` (seed 002, Table 2): mimic learning (L2 on logits) into students
  of about equal parameters with 0, 1, 2, 3 conv layers.

Every training is a *job*; jobs run in-process (``--jobs 1``) or as parallel
processes (small CIFAR models leave most of a big GPU idle). The teacher and
the BlockSwap scoring run first, then all students at once. Data: the
device-resident pipeline (:class:`fxswap.data.device.DeviceLoader`).

Scales: ``ci`` — tiny synthetic 16×16 data, one epoch of a couple of steps
(``tests/test_fidelity_ci.py`` runs it); ``cpu`` — a CIFAR-10 subset on a
WRN-16-2 teacher, sized for a couple of hours on 2 cores (pass
``--students``/``--methods`` to run a part); ``gpu`` — a WRN-40-2 teacher on
a reduced ``.npz`` (``prepare-data``), sized for one command of about 8
minutes on one H200 with ``--jobs 12``; ``paper`` — the seeds' schedules
(200 epochs, all data).

Results: ``<out>/results.json`` and ``<out>/results.md`` (tables with the
paper's numbers beside), and ``<out>/*.png`` when matplotlib is installed.

    python benchmarks/fidelity.py all --scale ci --out /tmp/fid-ci
    python benchmarks/fidelity.py moonshine --scale cpu --data ../shared/data/cifar10_subset.npz \\
        --students "G(N/4)" --methods scratch,at --out runs/fidelity-cpu
    python benchmarks/fidelity.py prepare-data --data ../shared/data/cifar10_subset.npz --out runs/data/fidelity_gpu.npz
    python benchmarks/fidelity.py all --scale gpu --data runs/data/fidelity_gpu.npz --jobs 12 --out $OUT/fidelity
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fxswap
from fxswap.blocks import find_blocks
from fxswap.data.device import device_cifar_loaders

EXPERIMENTS = ("moonshine", "blockswap", "lit", "srrl", "urban")


@dataclass(frozen=True)
class Scale:
    """How big each experiment is at one ``--scale``."""

    teacher: str             # fxswap.models.create_model name
    reduced: str             # Moonshine's reduced-architecture student
    srrl_student: str        # SRRL's shallower WRN
    train: int | None        # training images (None: all in the file)
    val: int | None
    epochs: int              # per student
    teacher_epochs: int
    batch: int = 128
    image: int = 32          # synthetic data only
    blockswap_samples: int = 1000
    blockswap_candidates: tuple[str, ...] | str | None = None   # None: the paper's 21; "reference": the code's 23
    blockswap_fresh: bool = False   # score each candidate on its own augmented minibatch and initialisation
    lit_batch: int | None = None    # LIT's students (KD and LIT); None: ``batch``
    blockswap_trained: int = 10
    moonshine_students: tuple[str, ...] | None = None  # None: G(N/4), B(2), BG(2,M/8) and the reduced WRN
    urban_methods: tuple[str, ...] = ("mimic", "scratch")
    urban_params: int = 100_000
    preset: str | None = "cosine"   # None: each method's paper preset
    cutout: int = 0
    synthetic: bool = False


SCALES = {
    "ci": Scale("wrn-16-1", "wrn-10-1", "wrn-10-1", 32, 16, 1, 1, batch=16, image=8, blockswap_samples=4,
                blockswap_candidates=("S", "G(N/4)", "B(2)"), blockswap_trained=2, urban_params=5_000,
                moonshine_students=("G(N/4)", "wrn-10-1"), urban_methods=("mimic",), synthetic=True,
                blockswap_fresh=True, lit_batch=8),  # ci exercises the reference's scoring and LIT's own batch
    "cpu": Scale("wrn-16-2", "wrn-16-1", "wrn-10-2", 5000, 2000, 5, 8, blockswap_samples=200,
                 blockswap_trained=6, urban_params=100_000, lit_batch=32),
    # gpu keeps batch 128 for LIT and the shared scoring batch: batch 32 and per-candidate rebuilds would not
    # fit its 8-minute budget
    "gpu": Scale("wrn-40-2", "wrn-16-1", "wrn-16-2", None, None, 10, 30, blockswap_samples=1000,
                 blockswap_trained=8, urban_params=400_000),
    "paper": Scale("wrn-40-2", "wrn-16-1", "wrn-16-2", None, None, 200, 200, blockswap_samples=1000,
                   blockswap_trained=30, urban_params=1_000_000, preset=None, blockswap_candidates="reference",
                   blockswap_fresh=True, lit_batch=32),
}

# The seeds' numbers, printed beside ours (CIFAR-10 test error in %, unless said otherwise).
PAPER = {
    "moonshine": {  # seed 000, Table 3 (teacher WRN-40-2 S: 4.79): (params, error, KD error, AT error)
        "G(N/4)": (373626, 6.93, 6.45, 5.31), "B(2)": (437242, 6.36, 6.28, 5.37),
        "BG(2,M/8)": (195322, 6.75, 6.49, 5.94), "wrn-16-1": (175994, 8.81, 8.75, 7.72),
        "wrn-16-2": (693498, 6.53, 6.03, 5.66), "teacher": (2248954, 4.79, None, None),
    },
    "blockswap": {"rho_fisher_error_400k": -0.685, "blockswap_400k": 4.21, "single_type_400k": 4.5},
    "lit": {"lit": 100 - 93.25, "kd": 100 - 92.75},  # Table 3 left (ResNet), accuracy → error
    "srrl": {  # Table 1, CIFAR-100 top-1 *accuracy* of WRN-40-4 → WRN-16-4
        "student": 76.97, "teacher": 79.50, "fm": 78.05, "sr": 79.10, "fm+sr": 79.58},
    "urban": {0: 65.8, 1: 84.5, 2: 87.9, 3: 90.7, 4: 91.3},  # Table 2, 1M params, accuracy %
}


# ---------------------------------------------------------------------------
# jobs: one training (or the scoring) each, runnable in another process
# ---------------------------------------------------------------------------


@dataclass
class Job:
    """One unit of work: ``kind`` names a function in :data:`RUNNERS`."""

    experiment: str
    name: str
    kind: str
    args: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``experiment/name`` (phase-1 jobs: ``name``), the job's key in the results."""
        return self.name if self.kind != "student" else f"{self.experiment}/{self.name}"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loaders(ctx: dict, seed: int, batch: int | None = None, cutout: int | None = None):
    s: Scale = ctx["scale"]
    return device_cifar_loaders(ctx["data"], batch or s.batch, cutout=s.cutout if cutout is None else cutout,
                                device=_device(), channels_last=_device().type == "cuda", seed=seed,
                                drop_last=_device().type == "cuda")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _teacher(ctx: dict) -> nn.Module:
    t = fxswap.models.create_model(ctx["scale"].teacher)
    t.load_state_dict(torch.load(ctx["teacher_path"], map_location="cpu", weights_only=True))
    return t


def _fit_kwargs(ctx: dict, preset: str | None) -> dict:
    kw = {"progress": False, "seed": ctx["seed"], "device": _device()}
    chosen = _preset(ctx, preset)
    if chosen is not None:
        kw["preset"] = chosen
    return kw


def _preset(ctx: dict, preset: str | None) -> str | None:
    """The scale's preset, or (when the scale defers to the papers') ``preset``."""
    s: Scale = ctx["scale"]
    if preset == "urban":
        # L2 regression on logits diverges at the WRN presets' lr of 0.1 (measured at cpu scale: the loss is
        # nan by step 5), so Urban et al.'s students keep their own optimiser at every scale
        return preset
    return s.preset if s.preset is not None else preset


def _cutout(ctx: dict, preset: str | None) -> int:
    """The scale's Cutout, or the paper preset's (BlockSwap: 16) where the scale defers to the papers'."""
    s: Scale = ctx["scale"]
    if s.preset is None and preset is not None:
        return max(s.cutout, fxswap.distillation.presets.get_preset(preset).cutout)
    return s.cutout


def _final(history) -> dict:
    last = history[-1]
    return {"error": 100 * (1 - last["val_acc"]), "seconds": sum(h["seconds"] for h in history)}


def _build_student(ctx: dict, student: str, teacher: nn.Module) -> nn.Module:
    torch.manual_seed(ctx["seed"])
    if student.startswith("wrn-"):
        return fxswap.models.create_model(student)
    if student.startswith("urban:"):
        k = int(student.split(":")[1])
        return urban_student(k, ctx["scale"].urban_params, ctx["image"])
    if student.startswith("plan:"):
        return fxswap.cheapen(teacher, json.loads(student[5:]), reinit=True)
    if student == "lit":
        return fxswap.cheapen(teacher, lit_plan(teacher), reinit=True)
    return fxswap.cheapen(teacher, student, reinit=True)


def run_teacher(ctx: dict, **_) -> dict:
    torch.manual_seed(ctx["seed"])
    teacher = fxswap.models.create_model(ctx["scale"].teacher)
    train, val = _loaders(ctx, ctx["seed"])
    hist = fxswap.train(teacher, train, val, epochs=ctx["scale"].teacher_epochs, **_fit_kwargs(ctx, "moonshine"))
    torch.save(teacher.state_dict(), ctx["teacher_path"])
    return {**_final(hist), "params": _params(teacher), "epoch_seconds": hist[-1]["seconds"]}


def run_student(ctx: dict, student: str, method: str, preset: str | None = None, batch: int | None = None) -> dict:
    """Train ``student`` by ``method`` (``scratch``, a fxswap.distill method, or a losses dict as JSON);
    ``preset`` overrides the paper preset (used where the scale defers to the papers'), ``batch`` the batch."""
    teacher = _teacher(ctx)
    model = _build_student(ctx, student, teacher)
    train, val = _loaders(ctx, ctx["seed"], batch, _cutout(ctx, preset))
    epochs = ctx["scale"].epochs
    if preset is not None:
        hist = (fxswap.train(model, train, val, epochs=epochs, **_fit_kwargs(ctx, preset)) if method == "scratch"
                else fxswap.distill(teacher, model, train, val, method=method, epochs=epochs,
                                    **_fit_kwargs(ctx, preset)))
    elif method == "scratch":
        hist = fxswap.train(model, train, val, epochs=epochs, **_fit_kwargs(ctx, "moonshine"))
    elif method == "lit":
        lit_epochs = max(1, round(epochs * 175 / 250))  # LIT: 175 LIT + 75 KD fine-tune epochs (appendix A)
        hist = fxswap.distill(teacher, model, train, val, method="lit", epochs=lit_epochs,
                              finetune_epochs=epochs - lit_epochs, progress=False, seed=ctx["seed"],
                              device=_device())
    else:
        m = json.loads(method) if method.startswith("{") else method
        preset = "lit-kd" if student == "lit" else "moonshine"
        hist = fxswap.distill(teacher, model, train, val, method=m, epochs=epochs, **_fit_kwargs(ctx, preset))
    return {**_final(hist), "params": _params(model)}


def run_blockswap_scoring(ctx: dict, budget: int, samples: int) -> dict:
    """Fisher potential of ``samples`` random plans at ``budget`` (randomly initialised teacher, one minibatch)."""
    s: Scale = ctx["scale"]
    teacher = fxswap.models.create_model(s.teacher).to(_device())  # blockswap scores where it lives
    # the reference scores on its training loader, which applies Cutout(16) (utils.py get_cifar_loaders)
    train, _ = _loaders(ctx, ctx["seed"], cutout=16 if s.blockswap_fresh else None)
    x, y = next(iter(train))
    fresh = None
    if s.blockswap_fresh:
        def fresh():
            xb, yb = next(iter(train))  # as the reference's next(iter(trainloader)): a new shuffle, new augmentation
            return xb.float().contiguous(), yb
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fxswap.blockswap(teacher, budget, (x.float().contiguous(), y), samples=samples, seed=ctx["seed"],
                             macs=False, candidates=s.blockswap_candidates, fresh_batch=fresh,
                             fresh_init=s.blockswap_fresh)
    return {"candidates": [{"plan": c.plan, "params": c.params, "fisher": c.fisher} for c in r.candidates],
            "seconds": r.seconds}


RUNNERS = {"teacher": run_teacher, "student": run_student, "blockswap_scoring": run_blockswap_scoring}


def _run_job(ctx: dict, job: Job) -> dict:
    torch.set_num_threads(ctx.get("threads") or torch.get_num_threads())
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = RUNNERS[job.kind](ctx, **job.args)
    out["wall"] = time.perf_counter() - t0
    return out


def run_jobs(ctx: dict, jobs: list[Job], n_proc: int) -> dict[str, dict]:
    """``{job.name: result}``; in parallel processes when ``n_proc > 1``. A failed job's result holds ``error_msg``."""
    results: dict[str, dict] = {}
    if n_proc <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                results[job.key] = _run_job(ctx, job)
            except Exception as e:  # one broken run must not lose the others
                results[job.key] = {"error_msg": f"{type(e).__name__}: {e}"}
            _log(ctx, job, results[job.key])
        return results
    with cf.ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_job, ctx, job): job for job in jobs}
        for f in cf.as_completed(futures):
            job = futures[f]
            try:
                results[job.key] = f.result()
            except Exception as e:
                results[job.key] = {"error_msg": f"{type(e).__name__}: {e}"}
            _log(ctx, job, results[job.key])
    return results


def _log(ctx: dict, job: Job, res: dict) -> None:
    if "error_msg" in res:
        msg = f"FAILED {res['error_msg']}"
    elif "error" in res:
        msg = f"error {res['error']:.2f}%  params {res.get('params', 0):,}  {res['wall']:.0f}s"
    else:
        msg = f"{res['wall']:.0f}s"
    print(f"[{time.perf_counter() - ctx['t0']:6.0f}s] {job.experiment:9} {job.name:40} {msg}", flush=True)
    if ctx.get("out"):  # one line per finished job, so a run stopped by a time limit still leaves its results
        row = {"key": job.key, **{k: v for k, v in res.items() if k != "candidates"}}
        with open(Path(ctx["out"]) / "progress.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


# ---------------------------------------------------------------------------
# students
# ---------------------------------------------------------------------------


def lit_plan(teacher: nn.Module) -> dict[str, str]:
    """LIT's depth reduction: in each stage keep the first block and every other one after it, the rest ``I``.

    >>> sorted(lit_plan(fxswap.models.wrn(16, 1)))  # 2 blocks per stage: the second goes
    ['layer1.1', 'layer2.1', 'layer3.1']
    """
    plan, seen = {}, {}
    for b in find_blocks(teacher):
        i = seen.get(b.stage, 0)
        seen[b.stage] = i + 1
        if i % 2 == 1:
            plan[b.name] = "I"
    return plan


def urban_student(convs: int, params: int, image: int = 32, num_classes: int = 10) -> nn.Sequential:
    """Urban et al.'s student family: ``convs`` × (3×3 conv, BN, ReLU, 2×2 max-pool), a hidden fc layer, the
    classifier, with about ``params`` parameters: the conv width w is picked so that the hidden layer that
    completes the budget is about 2w wide (0 convs: an MLP with one hidden layer).

    >>> [abs(sum(p.numel() for p in urban_student(k, 50_000).parameters()) / 50_000 - 1) < 0.05 for k in range(4)]
    [True, True, True, True]
    """
    def hidden_for(width: int) -> tuple[int, int]:
        c_in, side, conv = 3, image, 0
        for _ in range(convs):
            conv += c_in * width * 9 + 2 * width
            c_in, side = width, side // 2
        flat = c_in * side * side
        return max(1, round((params - conv - num_classes) / (flat + 1 + num_classes))), flat

    width = min(range(1, 513), key=lambda w: abs(hidden_for(w)[0] - 2 * w)) if convs else 0
    hidden, flat = hidden_for(width)
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(convs):
        layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = width
    layers += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# experiments: their jobs, then their tables
# ---------------------------------------------------------------------------


def srrl_methods() -> dict[str, str]:
    """SRRL's rows (seed 004 Table 1): KD, and CE plus L_FM, L_SR or both (the ``srrl`` term's ``fm``/``sr``
    weights; ``"srrl"`` alone is the reference's CE + L_FM + 1·L_SR).

    >>> srrl_methods()["fm"]
    '{"srrl": {"fm": 1.0, "sr": 0.0}}'
    """
    return {"kd": "kd", "fm": json.dumps({"srrl": {"fm": 1.0, "sr": 0.0}}),
            "sr": json.dumps({"srrl": {"fm": 0.0, "sr": 1.0}}), "fm+sr": "srrl"}


def moonshine_jobs(ctx, students, methods) -> list[Job]:
    s: Scale = ctx["scale"]
    students = students or list(s.moonshine_students or ("G(N/4)", "B(2)", "BG(2,M/8)", s.reduced))
    methods = methods or ["scratch", "kd", "at"]
    return [Job("moonshine", f"{st} {m}", "student", {"student": st, "method": m}) for st in students for m in methods]


def lit_jobs(ctx, students, methods) -> list[Job]:
    batch = ctx["scale"].lit_batch  # LIT's reference batch (32) for both rows, where the scale affords it
    return [Job("lit", f"lit-student {m}", "student", {"student": "lit", "method": m, "batch": batch})
            for m in methods or ["kd", "lit"]]


def srrl_jobs(ctx, students, methods) -> list[Job]:
    s: Scale = ctx["scale"]
    rows = {k: v for k, v in srrl_methods().items() if not methods or k in methods}
    jobs = [Job("srrl", f"{s.srrl_student} {k}", "student", {"student": s.srrl_student, "method": v})
            for k, v in rows.items()]
    if not methods or "scratch" in methods:
        jobs.append(Job("srrl", f"{s.srrl_student} scratch", "student",
                        {"student": s.srrl_student, "method": "scratch"}))
    return jobs


def urban_jobs(ctx, students, methods) -> list[Job]:
    return [Job("urban", f"{k}-conv {m}", "student", {"student": f"urban:{k}", "method": m, "preset": "urban"})
            for k in range(4) for m in (methods or ctx["scale"].urban_methods)]


def blockswap_budget(ctx) -> int:
    teacher = fxswap.models.create_model(ctx["scale"].teacher)
    return _params(fxswap.cheapen(teacher, "G(N/4)"))


def blockswap_phase2(ctx, scoring: dict) -> list[Job]:
    """From the scored plans: a spread over the Fisher ranking trained from scratch, and the pick vs G(N/4) with AT."""
    s: Scale = ctx["scale"]
    cands = scoring["candidates"]
    k = min(s.blockswap_trained, len(cands))
    idx = sorted({round(i * (len(cands) - 1) / max(1, k - 1)) for i in range(k)})
    # BlockSwap's students train with its preset (cosine, Cutout 16) where the scale uses the papers' presets
    preset = "blockswap" if s.preset is None else None
    jobs = [Job("blockswap", f"rank{i} scratch", "student",
                {"student": "plan:" + json.dumps(cands[i]["plan"]), "method": "scratch", "preset": preset})
            for i in idx]
    jobs.append(Job("blockswap", "pick at", "student", {"student": "plan:" + json.dumps(cands[0]["plan"]),
                                                         "method": "at", "preset": preset}))
    jobs.append(Job("blockswap", "G(N/4) at", "student", {"student": "G(N/4)", "method": "at", "preset": preset}))
    return jobs


def spearman(a, b) -> float:
    def ranks(v):
        v = np.asarray(v, float)
        r = np.empty(len(v))
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        for val in np.unique(v):
            r[v == val] = r[v == val].mean()
        return r

    if len(a) < 3:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _cell(res: dict | None, key: str = "error") -> str:
    if res is None:
        return "not run"
    if "error_msg" in res:
        return "failed"
    return f"{res[key]:.2f}"


def tables(ctx, results: dict) -> tuple[str, dict]:
    """Markdown tables and a JSON summary of every experiment that ran."""
    md, summary = [], {}
    teacher = results.get("teacher")
    if teacher is None:  # a --teacher-checkpoint run: its error is measured where it was trained
        md.append(f"Teacher {ctx['scale'].teacher}: from {ctx['teacher_path']}; paper (WRN-40-2): 4.79 %\n")
    else:
        md.append(f"Teacher {ctx['scale'].teacher}: error {_cell(teacher)} % "
                  f"({teacher.get('params', 0):,} params); paper (WRN-40-2): 4.79 %\n")
    by = {}
    for name, res in results.items():
        if "/" in name:
            exp, job = name.split("/", 1)
            by.setdefault(exp, {})[job] = res
    if "moonshine" in by:
        r = by["moonshine"]
        students = sorted({j.rsplit(" ", 1)[0] for j in r}, key=lambda k: -max(v.get("params", 0) for n, v in r.items()
                                                                               if n.startswith(k + " ")))
        md.append("### Moonshine (seed 000, Table 3): test error %, ours | paper\n")
        md.append("| student | params | scratch | KD | AT | paper params | paper scratch | paper KD | paper AT |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for st in students:
            params = next((v["params"] for n, v in r.items() if n.startswith(st + " ") and "params" in v), 0)
            p = PAPER["moonshine"].get(st)
            pcells = [f"{p[0]:,}", *(f"{v:.2f}" if v is not None else "—" for v in p[1:])] if p else ["—"] * 4
            md.append(f"| {st} | {params:,} | {_cell(r.get(st + ' scratch'))} | {_cell(r.get(st + ' kd'))} | "
                      f"{_cell(r.get(st + ' at'))} | " + " | ".join(pcells) + " |")
        summary["moonshine"] = r
        md.append("")
    if "blockswap" in by:
        r = by["blockswap"]
        scoring = results.get("blockswap_scoring", {})
        fisher = {json.dumps(c["plan"], sort_keys=True): c["fisher"] for c in scoring.get("candidates", [])}
        pairs = []
        for name, res in r.items():
            if name.startswith("rank") and "error" in res:
                i = int(name[4:].split()[0])
                pairs.append((scoring["candidates"][i]["fisher"], res["error"]))
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
        md.append("### BlockSwap (seed 003, Tables 1–2)\n")
        md.append(f"Budget {ctx['budget']:,} params (the teacher's G(N/4) student); "
                  f"{len(scoring.get('candidates', []))} plans scored in {scoring.get('seconds', 0):.0f}s.\n")
        md.append("| quantity | ours | paper (WRN-40-2, 400K) |")
        md.append("|---|---:|---:|")
        md.append(f"| Spearman ρ(Fisher potential, error), {len(pairs)} plans trained from scratch | {rho:.3f} | "
                  f"{PAPER['blockswap']['rho_fisher_error_400k']} (100 plans) |")
        md.append(f"| BlockSwap pick, AT: error % | {_cell(r.get('pick at'))} | {PAPER['blockswap']['blockswap_400k']} |")
        md.append(f"| G(N/4) single block type, AT: error % | {_cell(r.get('G(N/4) at'))} | "
                  f"{PAPER['blockswap']['single_type_400k']} (best single type) |")
        summary["blockswap"] = {"rho": rho, "pairs": pairs, "runs": r, "fisher_plans": len(fisher)}
        md.append("")
    if "lit" in by:
        r = by["lit"]
        md.append("### LIT (seed 001, Table 3): depth-reduced student, test error %\n")
        md.append("| method | params | ours | paper (ResNet-110→ResNet-20-ish, error) |")
        md.append("|---|---:|---:|---:|")
        for m in ("kd", "lit"):
            res = r.get(f"lit-student {m}")
            md.append(f"| {m.upper()} | {(res or {}).get('params', 0):,} | {_cell(res)} | {PAPER['lit'][m]:.2f} |")
        summary["lit"] = r
        md.append("")
    if "srrl" in by:
        r = by["srrl"]
        st = ctx["scale"].srrl_student
        md.append(f"### SRRL (seed 004, Table 1): {ctx['scale'].teacher} → {st}, test error % (paper: CIFAR-100 "
                  "top-1 accuracy, WRN-40-4 → WRN-16-4)\n")
        md.append("| loss | ours (error %) | paper (accuracy %) |")
        md.append("|---|---:|---:|")
        for k, label, paper in (("scratch", "CE only (student alone)", "student"), ("kd", "KD", None),
                                ("fm", "L_FM", "fm"), ("sr", "L_SR", "sr"), ("fm+sr", "L_FM + L_SR", "fm+sr")):
            res = r.get(f"{st} {k}")
            md.append(f"| {label} | {_cell(res) if res else 'not run'} | "
                      f"{PAPER['srrl'][paper] if paper else '—'} |")
        summary["srrl"] = r
        md.append("")
    if "urban" in by:
        r = by["urban"]
        md.append(f"### Urban et al. (seed 002, Table 2): students of ≈{ctx['scale'].urban_params:,} params, "
                  "test error %\n")
        md.append("| conv layers | params | mimic | scratch | paper mimic accuracy % (1M params) |")
        md.append("|---:|---:|---:|---:|---:|")
        for k in range(4):
            res = r.get(f"{k}-conv mimic") or r.get(f"{k}-conv scratch") or {}
            md.append(f"| {k} | {res.get('params', 0):,} | {_cell(r.get(f'{k}-conv mimic'))} | "
                      f"{_cell(r.get(f'{k}-conv scratch'))} | {PAPER['urban'][k]} |")
        summary["urban"] = r
        md.append("")
    return "\n".join(md), summary


def figure(summary: dict, out: Path) -> str | None:
    """Error vs parameters (log x), Moonshine Figure 3; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    r = summary.get("moonshine")
    if not r:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, marker in (("scratch", "o"), ("kd", "s"), ("at", "^")):
        pts = [(v["params"], v["error"], n.rsplit(" ", 1)[0]) for n, v in r.items()
               if n.endswith(" " + method) and "error" in v]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
            for p in pts:
                ax.annotate(p[2], (p[0], p[1]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test error %")
    ax.legend()
    path = out / "moonshine_error_vs_params.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def synthetic_npz(path: Path, n_train: int, n_val: int, image: int, seed: int = 0) -> Path:
    """A learnable toy CIFAR: class k brightens channel k % 3 in a k-dependent stripe."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 128, (n, image, image, 3)).astype(np.uint8)
        for i, k in enumerate(y):
            rows = slice((k * image) // 10, (k * image) // 10 + max(1, image // 8))
            x[i, rows, :, k % 3] = 250
        return x, y

    xt, yt = split(n_train)
    xv, yv = split(n_val)
    np.savez(path, x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    return path


def prepare_data(src: Path, out: Path, train: int, val: int) -> None:
    """The first ``train`` / ``val`` images of ``src`` as a compressed ``.npz`` small enough to carry."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {"x_train": z["x_train"][:train], "y_train": z["y_train"][:train], "x_test": z["x_test"][:val],
                  "y_test": z["y_test"][:val]}
        if "class_names" in z.files:
            arrays["class_names"] = z["class_names"]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {train} training and {val} test images, {out.stat().st_size / 2**20:.1f} MiB")


def _limited(ctx: dict, path: Path, scale: Scale, tmp: Path) -> Path:
    if scale.train is None and scale.val is None:
        return path
    out = tmp / "data.npz"
    with np.load(path, allow_pickle=False) as z:
        np.savez(out, x_train=z["x_train"][:scale.train], y_train=z["y_train"][:scale.train],
                 x_test=z["x_test"][:scale.val], y_test=z["y_test"][:scale.val])
    return out


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


JOBS = {"moonshine": moonshine_jobs, "lit": lit_jobs, "srrl": srrl_jobs, "urban": urban_jobs}


def run(experiments, args) -> dict:
    scale = SCALES[args.scale]
    if args.epochs:
        scale = replace(scale, epochs=args.epochs)
    if args.teacher_epochs:
        scale = replace(scale, teacher_epochs=args.teacher_epochs)
    if args.train_images and not scale.synthetic:
        scale = replace(scale, train=args.train_images)
    if args.test_images and not scale.synthetic:
        scale = replace(scale, val=args.test_images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-"))
    if scale.synthetic:
        data = synthetic_npz(tmp / "synthetic.npz", scale.train, scale.val, scale.image, args.seed)
    else:
        if not args.data or not Path(args.data).is_file():
            raise SystemExit(f"--scale {args.scale} needs --data FILE.npz (x_train, y_train, x_test, y_test)")
        data = _limited({}, Path(args.data), scale, tmp)
    ctx = {"scale": scale, "data": str(data), "seed": args.seed, "t0": time.perf_counter(),
           "teacher_path": str(out / "teacher.pt"), "threads": args.threads,
           "image": scale.image if scale.synthetic else 32, "out": str(out)}
    students = [s.strip() for s in args.students.split(";")] if args.students else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    print(f"scale {args.scale}: {scale}\ndata {args.data or 'synthetic'}, device {_device()}, jobs {args.jobs}, "
          f"seed {args.seed}", flush=True)
    phase1 = []
    results: dict = {}
    if args.teacher_checkpoint:
        ctx["teacher_path"] = args.teacher_checkpoint
    else:
        phase1.append(Job("teacher", "teacher", "teacher"))
    if "blockswap" in experiments:
        ctx["budget"] = blockswap_budget(ctx)
        phase1.append(Job("blockswap", "blockswap_scoring", "blockswap_scoring",
                          {"budget": ctx["budget"], "samples": scale.blockswap_samples}))
    for name, res in run_jobs(ctx, phase1, args.jobs).items():
        results[name] = res
    if "error_msg" in results.get("teacher", {}):
        raise SystemExit(f"the teacher failed: {results['teacher']['error_msg']}")
    jobs = []
    for e in experiments:
        if e in JOBS:
            jobs += JOBS[e](ctx, students if e == "moonshine" else None, methods if e == "moonshine" else None)
    if "blockswap" in experiments and "candidates" in results.get("blockswap_scoring", {}):
        jobs += blockswap_phase2(ctx, results["blockswap_scoring"])
    results.update(run_jobs(ctx, jobs, args.jobs))
    wall = time.perf_counter() - ctx["t0"]
    md, summary = tables(ctx, results)
    cmd = "python benchmarks/fidelity.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "(in-process)"
    preset = scale.preset or "the papers'"
    header = (f"## fidelity --scale {args.scale}: {', '.join(experiments)}\n\nCommand: `{cmd}`  \n"
              f"Wall time {wall / 60:.1f} min on {_device()} ({torch.get_num_threads()} threads, {args.jobs} "
              f"process(es)); seed {args.seed}; {scale.epochs} epochs per student, teacher {scale.teacher_epochs}; "
              f"preset {preset}; data {args.data or 'synthetic'} "
              f"(train {scale.train or 'all'}, test {scale.val or 'all'}).\n")
    fig = figure(summary, out)
    text = header + "\n" + md + (f"\n![error vs params]({fig})\n" if fig else "")
    (out / "results.md").write_text(text)
    scoring = results.get("blockswap_scoring", {})
    dump = {"scale": asdict(scale), "wall_s": wall, "seed": args.seed, "experiments": list(experiments),
            "results": {k: v for k, v in results.items() if k != "blockswap_scoring"},
            "blockswap_scoring": {"seconds": scoring.get("seconds"), "top": scoring.get("candidates", [])[:5]},
            "summary_rho": summary.get("blockswap", {}).get("rho")}
    (out / "results.json").write_text(json.dumps(dump, indent=1, default=str))
    print("\n" + text, flush=True)
    return dump


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", nargs="+", choices=[*EXPERIMENTS, "all", "prepare-data"],
                    help="one or more experiments, sharing one teacher and one process pool")
    ap.add_argument("--scale", choices=list(SCALES), default="ci")
    ap.add_argument("--data", help=".npz with x_train, y_train, x_test, y_test (not for ci)")
    ap.add_argument("--out", default="runs/fidelity")
    ap.add_argument("--jobs", type=int, default=1, help="parallel training processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    ap.add_argument("--students", help="Moonshine only: ';'-separated students (specs or wrn-D-W)")
    ap.add_argument("--methods", help="Moonshine only: ','-separated methods (scratch, kd, at, ...)")
    ap.add_argument("--epochs", type=int, help="override the scale's epochs per student")
    ap.add_argument("--teacher-epochs", type=int, help="override the scale's teacher epochs")
    ap.add_argument("--teacher-checkpoint", help="a trained teacher's state dict: skip training it")
    ap.add_argument("--train-images", type=int, help="training images kept (prepare-data: default 15000; else "
                    "overrides the scale's)")
    ap.add_argument("--test-images", type=int, help="test images kept (prepare-data: default 3000)")
    args = ap.parse_args(argv)
    if "prepare-data" in args.experiment:
        prepare_data(Path(args.data), Path(args.out), args.train_images or 15000, args.test_images or 3000)
        return None
    experiments = list(EXPERIMENTS) if "all" in args.experiment else list(dict.fromkeys(args.experiment))
    return run(experiments, args)


if __name__ == "__main__":
    main()
