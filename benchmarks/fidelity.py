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
  lit-code), both at LIT's batch of 32 (``cpu`` and ``paper`` scales). Where
  the scale has one schedule (``preset``), LIT's two stages run on it as the
  KD row does, the fine-tune at a tenth of the lr; at ``paper``, LIT's own.
* ``srrl`` (seed 004, Table 1): L_FM, L_SR and L_FM + L_SR (each with CE) vs
  KD into a shallower WRN.
* ``urban`` (seed 002, Table 2): mimic learning (L2 on logits) into students
  of about equal parameters with 0, 1, 2, 3 conv layers.
* ``warmstart`` (issue 19, item 4): the ``G(N/4)`` student of a *trained*
  teacher, test error right after ``cheapen``, after :func:`fxswap.warm_start`
  and after each epoch of KD / AT, against the same student from scratch
  (and, at ci, with the teacher's weights kept but no warm start).

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

``decide`` — the smallest grid that decides each finding (issue 19, item 3),
2 seeds per cell (``--seeds`` to change), cells given as mean ± standard error
across seeds, the teacher from ``--teacher-checkpoint`` (``train_teacher.py
--keep``'s :func:`fxswap.save_student` file, or a state dict), bf16 autocast
and channels_last where the CPU computes bf16 natively. Sizing, from the
measured ~55–60 s per WRN-16-2 epoch on the 40,000 training images at 2
threads bf16 (Xeon Sapphire Rapids, shared), students a little less, about
+⅓ for the teacher's forward in KD/AT, ~5 s per test pass: 10 epochs per
student (cosine) →

  ========================================================  ====  =========
  cells (in the order they run)                              jobs  ≈ hours
  ========================================================  ====  =========
  Moonshine: G(N/4), wrn-16-1 × scratch/KD/AT × 2 seeds       12  2.0
  BlockSwap: ρ over 12 plans × 1 seed at 4 epochs             12  0.7
  BlockSwap: the pick with AT × 2 seeds (G(N/4) AT is         2  0.35
  Moonshine's row: one training, shared by signature)
  LIT: KD vs LIT × 2 seeds (batch 128: 32 would be ~2× the   4   0.7
  time on 2 cores)
  total of the ordered cells                                  30  ≈ 3.8
  warm start: warm × KD/AT × 2 seeds × 10 epochs (the         4   0.65
  scratch rows are Moonshine's G(N/4) KD/AT: shared)
  SRRL, Urban: as time allows (``srrl urban``)
  ========================================================  ====  =========

Measured on the first run (Xeon Sapphire Rapids, ``amx_bf16``, two 1-thread
processes side by side): a from-scratch student epoch takes ~100–160 s at one
thread, so the whole grid is about 10 core-hours — two or three sessions,
job by job. Jobs that read no trained teacher (students from scratch, the
scoring) do not carry the teacher file in their signature, and
``--without-teacher`` runs just them, so they can start while the teacher
is still training; the later run with ``--teacher-checkpoint`` resumes them.

The ETA printed before the first job replaces this table with rates timed on
the machine at hand (``eta_steps`` training steps per architecture, with and
without a teacher forward). A probe of a few steps on an idle machine sees
the fastest case (on the first run it was low by 1.7×, two processes sharing
the cores), so a resumed grid plans each architecture at the seconds per
epoch its finished jobs took with the same ``--jobs`` and ``--threads``, and
the others at their probe times that record's slowdown. Every finished job is appended to
``<out>/progress.jsonl`` (flushed and fsync'ed) with its *signature* (runner,
arguments, seed, scale, data file, teacher file, precision); a re-run with
the same ``--out`` skips every job whose signature finished, so the grid
spans sessions job by job (``--fresh`` ignores the record). Within a job,
``fit`` checkpoints every epoch in ``<out>/jobs/<hash of the signature>/``,
so a job killed mid-way (a session's end) resumes at its last finished epoch
rather than from the start. What each
conclusion holds at: 10 epochs on 40k images is far from the papers' 200
epochs on 50k — a finding decided here is decided *at this scale* (results.md
states it).

    python benchmarks/fidelity.py moonshine blockswap lit warmstart --scale decide \\
        --data ../shared/data/cifar10_subset.npz --without-teacher --jobs 1 --threads 1 \\
        --out /work/fxswap-runs/decide          # beside the teacher's training
    python benchmarks/fidelity.py moonshine blockswap lit warmstart --scale decide \\
        --data ../shared/data/cifar10_subset.npz --teacher-checkpoint docs/results/teacher_wrn-16-2.pt \\
        --jobs 2 --threads 1 --out /work/fxswap-runs/decide
    python benchmarks/fidelity.py moonshine --scale decide --precision fp32 --students wrn-16-1 \\
        --methods scratch --data ../shared/data/cifar10_subset.npz --without-teacher \\
        --out /work/fxswap-runs/decide-fp32     # what bf16 costs: one cell again in fp32
    python benchmarks/fidelity.py moonshine blockswap lit warmstart --scale decide \\
        --data ../shared/data/cifar10_subset.npz --teacher-checkpoint docs/results/teacher_wrn-16-2.pt \\
        --report-only --out /work/fxswap-runs/decide   # the tables of what has finished, nothing run

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
import hashlib
import json
import math
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
from fxswap.precision import resolve_precision
from fxswap.blocks import find_blocks
from fxswap.data.device import device_cifar_loaders
from fxswap.distillation.evaluation import evaluate
from fxswap.metrics.table import render_table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's bf16 test, not a copy of it

# in the order of importance: a grid cut short by its time budget has the first ones done
EXPERIMENTS = ("moonshine", "blockswap", "lit", "warmstart", "srrl", "urban")


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
    seeds: tuple[int, ...] | None = None     # None: one run per cell at --seed; else each cell once per seed
    blockswap_epochs: int | None = None      # the ρ plans' epochs (None: ``epochs``)
    precision: str = "fp32"                  # "auto": bf16 autocast + channels_last where bf16 is native; "bf16"
    eta_steps: int = 0                       # training steps timed per architecture for the ETA (0: no ETA)
    warmstart_student: str = "G(N/4)"
    warmstart_epochs: int = 1
    warmstart_steps: int = 2                 # fxswap.warm_start steps (batches)
    warmstart_starts: tuple[str, ...] = ("warm", "kept", "scratch")
    warmstart_methods: tuple[str, ...] = ("kd", "at")


SCALES = {
    "ci": Scale("wrn-16-1", "wrn-10-1", "wrn-10-1", 32, 16, 1, 1, batch=16, image=8, blockswap_samples=4,
                blockswap_candidates=("S", "G(N/4)", "B(2)"), blockswap_trained=2, urban_params=5_000,
                moonshine_students=("G(N/4)", "wrn-10-1"), urban_methods=("mimic",), synthetic=True,
                blockswap_fresh=True, lit_batch=8,  # ci exercises the reference's scoring and LIT's own batch
                eta_steps=2, warmstart_starts=("warm", "refit", "kept", "scratch")),
    "cpu": Scale("wrn-16-2", "wrn-16-1", "wrn-10-2", 5000, 2000, 5, 8, blockswap_samples=200,
                 blockswap_trained=6, urban_params=100_000, lit_batch=32),
    # gpu keeps batch 128 for LIT and the shared scoring batch: batch 32 and per-candidate rebuilds would not
    # fit its 8-minute budget
    "gpu": Scale("wrn-40-2", "wrn-16-1", "wrn-16-2", None, None, 10, 30, blockswap_samples=1000,
                 blockswap_trained=8, urban_params=400_000, precision="auto"),
    # the smallest grid that decides each finding, 2 seeds per cell, on the 40k CIFAR-10 subset: see the
    # module docstring for the sizing
    "decide": Scale("wrn-16-2", "wrn-16-1", "wrn-10-2", None, None, 10, 30, blockswap_samples=200,
                    blockswap_trained=12, blockswap_epochs=4, moonshine_students=("G(N/4)", "wrn-16-1"),
                    urban_params=100_000, seeds=(0, 1), precision="auto", eta_steps=10, warmstart_epochs=10,
                    warmstart_steps=100, warmstart_starts=("warm", "scratch")),
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
    seed: int | None = None   # None: the run's --seed, and no seed in the key

    @property
    def key(self) -> str:
        """``experiment/name`` (phase-1 jobs: ``name``), ``[seed N]`` appended for a per-seed job."""
        key = self.name if self.kind in PHASE1 else f"{self.experiment}/{self.name}"
        return key if self.seed is None else f"{key} [seed {self.seed}]"


PHASE1 = ("teacher", "teacher_eval", "blockswap_scoring")
SEEDED = re.compile(r"^(.*) \[seed (-?\d+)\]$")


def seeded_jobs(ctx: dict, jobs: list[Job]) -> list[Job]:
    """Each job once per seed of the run (``--seeds`` or the scale's), seed-major within each experiment so
    that a grid cut short has every cell at its first seed; unchanged when the run has one seed."""
    seeds = ctx.get("seeds")
    if not seeds:
        return jobs
    return [replace(j, seed=sd) for sd in seeds for j in jobs]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _bf16(ctx: dict) -> bool:
    """bf16 autocast + channels_last: the scale asks for ``bf16``, or for ``auto`` and the device computes bf16
    natively."""
    if "bf16" not in ctx:  # decided once per run (the answer travels to the worker processes in ctx)
        asked = ctx["scale"].precision
        ctx["bf16"] = asked == "bf16" or (asked == "auto" and resolve_precision("auto", _device()).name == "bf16")
    return ctx["bf16"]


def _precision_kwargs(ctx: dict) -> dict:
    """fit's ``precision=``: the scale's choice, resolved once per run (:func:`_bf16`)."""
    # explicit both ways: fit's own default is precision="auto", which is bf16 on this kind of CPU, so leaving
    # it out would not give fp32 (a --precision fp32 run once trained in bf16 without saying so)
    return {"precision": "bf16" if _bf16(ctx) else "fp32"}


def _layout(ctx: dict, model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if _bf16(ctx) or _device().type == "cuda" else model


def _loaders(ctx: dict, seed: int, batch: int | None = None, cutout: int | None = None):
    s: Scale = ctx["scale"]
    return device_cifar_loaders(ctx["data"], batch or s.batch, cutout=s.cutout if cutout is None else cutout,
                                device=_device(), channels_last=_device().type == "cuda" or _bf16(ctx), seed=seed,
                                drop_last=_device().type == "cuda")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _teacher(ctx: dict) -> nn.Module:
    """The trained teacher: a :func:`fxswap.save_student` file (``train_teacher.py --keep``) or a state dict."""
    path = ctx["teacher_path"]
    try:
        fxswap.read_record(path)
    except fxswap.FxswapError:
        t = fxswap.models.create_model(ctx["scale"].teacher)
        t.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        t = fxswap.load_student(path)
        n, want = _params(t), _params(fxswap.models.create_model(ctx["scale"].teacher))
        if n != want:
            raise SystemExit(f"--teacher-checkpoint {path} holds a {n:,}-parameter model; this scale's teacher "
                             f"{ctx['scale'].teacher} has {want:,}")
    return _layout(ctx, t)


def _epoch_line(ctx: dict):
    """``on_epoch`` for fit: one line per epoch, so a job of half an hour shows that it moves."""
    def line(row: dict) -> None:
        err = f"test error {100 * (1 - row['val_acc']):.2f}%" if row.get("val_acc") is not None else ""
        print(f"    {ctx.get('job', '')} epoch {row['epoch']}: {err} ({row.get('seconds', 0):.0f}s)", flush=True)
    return line


def _resume_kwargs(ctx: dict) -> dict:
    """fit's ``out_dir``/``resume`` for the job running: its own folder (:func:`job_dir`), resumed unless
    ``--fresh``, so a job killed mid-way (a session's end) loses at most one epoch."""
    if not ctx.get("job_dir"):
        return {}
    return {"out_dir": ctx["job_dir"], "resume": not ctx.get("fresh")}


def _fit_kwargs(ctx: dict, preset: str | None) -> dict:
    kw = {"progress": False, "seed": ctx["seed"], "device": _device(), "on_epoch": _epoch_line(ctx),
          **_precision_kwargs(ctx), **_resume_kwargs(ctx)}
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
    return {"error": 100 * (1 - last["val_acc"]), "seconds": sum(h["seconds"] for h in history),
            "precision": last.get("precision")}  # what the run computed in, as fit recorded it


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
    teacher = _layout(ctx, fxswap.models.create_model(ctx["scale"].teacher))
    train, val = _loaders(ctx, ctx["seed"])
    hist = fxswap.train(teacher, train, val, epochs=ctx["scale"].teacher_epochs, **_fit_kwargs(ctx, "moonshine"))
    torch.save(teacher.to(memory_format=torch.contiguous_format).state_dict(), ctx["teacher_path"])
    return {**_final(hist), "params": _params(teacher), "epoch_seconds": hist[-1]["seconds"]}


def run_student(ctx: dict, student: str, method: str, preset: str | None = None, batch: int | None = None,
                epochs: int | None = None, finetune_preset: str | None = None,
                finetune_lr: float | None = None) -> dict:
    """Train ``student`` by ``method`` (``scratch``, a fxswap.distill method, or a losses dict as JSON);
    ``preset`` overrides the paper preset (used where the scale defers to the papers'), ``batch`` the batch,
    ``epochs`` the scale's epochs; ``finetune_preset`` and ``finetune_lr``: LIT's fine-tune stage (default
    LIT's own, ``lit-finetune``)."""
    # from scratch, only the teacher's architecture matters: a random one, so no teacher file is needed
    teacher = fxswap.models.create_model(ctx["scale"].teacher) if method == "scratch" else _teacher(ctx)
    model = _layout(ctx, _build_student(ctx, student, teacher))
    train, val = _loaders(ctx, ctx["seed"], batch, _cutout(ctx, preset))
    epochs = epochs or ctx["scale"].epochs
    if preset is not None:
        hist = (fxswap.train(model, train, val, epochs=epochs, **_fit_kwargs(ctx, preset)) if method == "scratch"
                else fxswap.distill(teacher, model, train, val, method=method, epochs=epochs,
                                    **_fit_kwargs(ctx, preset)))
    elif method == "scratch":
        hist = fxswap.train(model, train, val, epochs=epochs, **_fit_kwargs(ctx, "moonshine"))
    elif method == "lit":
        lit_epochs = max(1, round(epochs * 175 / 250))  # LIT: 175 LIT + 75 KD fine-tune epochs (appendix A)
        # stage 1 on the scale's schedule, as the KD row beside it (LIT's own at paper scale)
        ft = {k: v for k, v in (("finetune_preset", finetune_preset), ("finetune_lr", finetune_lr)) if v is not None}
        hist = fxswap.distill(teacher, model, train, val, method="lit", epochs=lit_epochs,
                              finetune_epochs=epochs - lit_epochs, **ft, **_fit_kwargs(ctx, "lit"))
    else:
        m = json.loads(method) if method.startswith("{") else method
        preset = "lit-kd" if student == "lit" else "moonshine"
        hist = fxswap.distill(teacher, model, train, val, method=m, epochs=epochs, **_fit_kwargs(ctx, preset))
    # the per-epoch test error: the warm-start table reads the from-scratch curve from the Moonshine job
    curve = [{"epoch": h["epoch"], "stage": method, "error": 100 * (1 - h["val_acc"])} for h in hist
             if h.get("val_acc") is not None]
    return {**_final(hist), "params": _params(model), "curve": curve}


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


def run_teacher_eval(ctx: dict, **_) -> dict:
    """The checkpoint teacher's test error, so the tables state it (one pass over the test split)."""
    teacher = _teacher(ctx)
    _, val = _loaders(ctx, ctx["seed"])
    r = evaluate(teacher, val, _device(), amp=_bf16(ctx), amp_dtype=torch.bfloat16 if _bf16(ctx) else None)
    return {"error": 100 * (1 - r["acc"]), "params": _params(teacher)}


def _val_error(ctx: dict, model: nn.Module, val) -> float:
    r = evaluate(model, val, _device(), amp=_bf16(ctx), amp_dtype=torch.bfloat16 if _bf16(ctx) else None)
    return 100 * (1 - r["acc"])


#: The grid's warm starts: :func:`fxswap.warm_start`'s ``lr`` and ``recalibrate``, its steps as a multiple of the
#: scale's ``warmstart_steps``, and the lr the method then trains at as a fraction of the scale preset's (None: the
#: preset's own). ``warm`` is warm_start as first shipped (lr 1e-3, no BatchNorm recalibration; its records were made
#: so); ``refit`` is today's warm_start (lr 3e-3, statistics recomputed over 20 batches) for 3× the steps, then the
#: method at a tenth of the lr, as a fine-tune of a network that is no longer random.
WARM_STARTS = {"warm": {"lr": 1e-3, "recalibrate": 0, "steps": 1, "train_lr": None},
               "refit": {"lr": 3e-3, "recalibrate": 20, "steps": 3, "train_lr": 0.1}}


def run_warmstart(ctx: dict, student: str, method: str, start: str, epochs: int, steps: int, lr: float = 1e-3,
                  recalibrate: int = 0, train_lr: float | None = None) -> dict:
    """The curve a user with a trained teacher sees: test error right after ``cheapen``, after
    :func:`fxswap.warm_start` (``steps`` at ``lr``, ``recalibrate`` batches; any ``start`` of
    :data:`WARM_STARTS`), then after each epoch of ``method`` (at ``train_lr``; None: the preset's).
    ``start="kept"``: the teacher's weights kept, no warm start. (The ``scratch`` start is Moonshine's student
    job: :func:`warmstart_jobs`.)"""
    if start not in (*WARM_STARTS, "kept"):
        raise ValueError(f"start must be one of {[*WARM_STARTS, 'kept']} (scratch is a student job), got {start!r}")
    teacher = _teacher(ctx)
    torch.manual_seed(ctx["seed"])
    model = _layout(ctx, fxswap.cheapen(teacher, student))
    train, val = _loaders(ctx, ctx["seed"])
    curve = [{"epoch": 0, "stage": "cheapen", "error": _val_error(ctx, model, val)}]
    out: dict = {}
    if start != "kept":
        rep = fxswap.warm_start(teacher, model, train, steps=steps, lr=lr, recalibrate=recalibrate, device=_device(),
                                amp=_bf16(ctx))
        curve.append({"epoch": 0, "stage": "warm start", "error": _val_error(ctx, model, val),
                      "seconds": rep.seconds})
        out["warm_start"] = {n: list(v) for n, v in rep.blocks.items()}
    lr_kw = {} if train_lr is None else {"lr": train_lr}
    hist = fxswap.distill(teacher, model, train, val, method=method, epochs=epochs,
                          **_fit_kwargs(ctx, "moonshine"), **lr_kw)
    curve += [{"epoch": h["epoch"], "stage": method, "error": 100 * (1 - h["val_acc"])} for h in hist]
    return {**_final(hist), "params": _params(model), "curve": curve, **out}


RUNNERS = {"teacher": run_teacher, "teacher_eval": run_teacher_eval, "student": run_student,
           "blockswap_scoring": run_blockswap_scoring, "warmstart": run_warmstart}


def _run_job(ctx: dict, job: Job) -> dict:
    torch.set_num_threads(ctx.get("threads") or torch.get_num_threads())
    ctx = {**ctx, "job": job.key}
    if job.seed is not None:
        ctx = {**ctx, "seed": job.seed}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = RUNNERS[job.kind](ctx, **job.args)
    out["wall"] = time.perf_counter() - t0
    # the conditions the times were taken in: the ETA of a resumed grid reads only records made alike
    out["threads"], out["processes"] = torch.get_num_threads(), ctx.get("n_proc", 1)
    return out


# how a grid is run, not what a job computes: the precision it asked for is left out of the signature (what it
# resolved to, bf16 or not, is in), so `auto` resolved to bf16 and an explicit `bf16` share their records
RUN_ONLY = ("precision", "eta_steps")


def signature(ctx: dict, job: Job) -> str:
    """What decides a job's result: its runner, arguments and seed, the scale, the data and the teacher. Two jobs
    with one signature are one training (the BlockSwap G(N/4)-with-AT row is Moonshine's); a finished job whose
    signature is in ``progress.jsonl`` is not run again."""
    seed = ctx["seed"] if job.seed is None else job.seed
    args = {k: v for k, v in job.args.items() if v is not None}  # an argument left at its default is the default
    # a job that never reads the trained teacher's weights (a student from scratch: cheapen(reinit=True) takes
    # only the architecture; the scoring: a random teacher) keeps its result when the teacher file changes
    teacher_id = None if reads_no_teacher(job) else ctx.get("teacher_id")
    scale = {k: v for k, v in asdict(ctx["scale"]).items() if k not in RUN_ONLY}
    what = [job.kind, args, seed, scale, ctx.get("data_id"), teacher_id, _bf16(ctx)]
    return json.dumps(what, sort_keys=True, default=str)


def canonical(sig: str) -> str:
    """A recorded signature in today's form: the scale's :data:`RUN_ONLY` fields left out and an unresolved
    precision (``None``, from scales that asked for fp32) read as fp32, so that records made before either change
    still resume.

    >>> old = json.dumps(["student", {}, 0, {"epochs": 10, "precision": "auto", "eta_steps": 10}, "d", None, True])
    >>> canonical(old) == json.dumps(["student", {}, 0, {"epochs": 10}, "d", None, True], sort_keys=True)
    True
    >>> json.loads(canonical(json.dumps(["student", {}, 0, {"precision": "fp32"}, "d", None, None])))[-1]
    False
    """
    what = json.loads(sig)
    if isinstance(what, list) and len(what) == 7 and isinstance(what[3], dict):
        what[3] = {k: v for k, v in what[3].items() if k not in RUN_ONLY}
        what[6] = bool(what[6])
    return json.dumps(what, sort_keys=True, default=str)


def reads_no_teacher(job: Job) -> bool:
    """Whether a job's result is independent of the trained teacher's weights: the BlockSwap scoring (a randomly
    initialised teacher) and every student trained from scratch (its architecture is the teacher's, its weights
    re-initialised).

    >>> reads_no_teacher(Job("moonshine", "G(N/4) scratch", "student", {"student": "G(N/4)", "method": "scratch"}))
    True
    >>> reads_no_teacher(Job("moonshine", "G(N/4) at", "student", {"student": "G(N/4)", "method": "at"}))
    False
    """
    return job.kind == "blockswap_scoring" or (job.kind == "student" and job.args.get("method") == "scratch")


def job_dir(ctx: dict, sig: str) -> Path:
    """The folder of the job with signature ``sig``: ``--out/jobs/<16 hex digits of its SHA-256>``, where its
    ``fit`` writes ``checkpoint.pt`` every epoch and ``job.json`` names the job. A re-run of a job killed mid-way
    resumes there at its last finished epoch (a warm-start job redoes its warm start, minutes, first).

    >>> job_dir({"out": "runs/decide"}, '["student", {}]').parent.as_posix()
    'runs/decide/jobs'
    """
    return Path(ctx["out"]) / "jobs" / hashlib.sha256(sig.encode()).hexdigest()[:16]


def epochs_done(ctx: dict, sig: str) -> int:
    """Epochs a job cut short already has in its folder (every ``history.jsonl`` its fit stages wrote), which
    its re-run does not train again; 0 for a job that never started."""
    folder = job_dir(ctx, sig)
    if not folder.is_dir():
        return 0
    return sum(1 for h in folder.rglob("history.jsonl") for line in h.read_text().splitlines() if line.strip())


def _with_job_dir(ctx: dict, job: Job, sig: str) -> dict:
    folder = job_dir(ctx, sig)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps({"key": job.key, "sig": sig}) + "\n")
    return {**ctx, "job_dir": str(folder)}


def finished(out: Path) -> dict[str, dict]:
    """``{signature: result}`` of every job ``out/progress.jsonl`` records as finished (failed ones run again)."""
    done: dict[str, dict] = {}
    path = out / "progress.jsonl"
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if "sig" in row and "error_msg" not in row:
            done[canonical(row["sig"])] = {k: v for k, v in row.items() if k not in ("key", "sig")}
    return done


def run_jobs(ctx: dict, jobs: list[Job], n_proc: int) -> dict[str, dict]:
    """``{job.key: result}``; in parallel processes when ``n_proc > 1``. A failed job's result holds ``error_msg``.

    Jobs recorded as finished in ``ctx["done"]`` are not run again, and jobs with one signature run once."""
    results: dict[str, dict] = {}
    done = ctx.get("done", {})
    todo: dict[str, list[Job]] = {}
    for job in jobs:
        sig = signature(ctx, job)
        if sig in done:
            results[job.key] = {**done[sig], "resumed": True, "sig": sig}
        else:
            todo.setdefault(sig, []).append(job)

    def record(sig: str, res: dict) -> None:
        for job in todo[sig]:
            _log(ctx, job, res, sig)
            results[job.key] = {**res, "sig": sig}  # the run's identity: a run two cells share is one run

    if ctx.get("report_only"):  # the tables of what has finished; nothing runs
        return results

    if n_proc <= 1 or len(todo) <= 1:
        for sig, same in todo.items():
            try:
                res = _run_job(_with_job_dir(ctx, same[0], sig), same[0])
            except Exception as e:  # one broken run must not lose the others
                res = {"error_msg": f"{type(e).__name__}: {e}"}
            record(sig, res)
        return results
    with cf.ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_job, _with_job_dir(ctx, same[0], sig), same[0]): sig
                   for sig, same in todo.items()}
        for f in cf.as_completed(futures):
            try:
                res = f.result()
            except Exception as e:
                res = {"error_msg": f"{type(e).__name__}: {e}"}
            record(futures[f], res)
    return results


def _log(ctx: dict, job: Job, res: dict, sig: str) -> None:
    if "error_msg" in res:
        msg = f"FAILED {res['error_msg']}"
    elif "error" in res:
        msg = f"error {res['error']:.2f}%  params {res.get('params', 0):,}  {res['wall']:.0f}s"
    else:
        msg = f"{res['wall']:.0f}s"
    seed = "" if job.seed is None else f" [seed {job.seed}]"
    print(f"[{time.perf_counter() - ctx['t0']:6.0f}s] {job.experiment:9} {job.name + seed:48} {msg}", flush=True)
    if ctx.get("out"):  # one line per finished job, so a run stopped by a time limit still leaves its results
        row = {"key": job.key, "sig": sig, **res}  # the scoring keeps its plans: a resumed run trains from them
        with open(Path(ctx["out"]) / "progress.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


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
    return seeded_jobs(ctx, [Job("moonshine", f"{st} {m}", "student", {"student": st, "method": m})
                             for st in students for m in methods])


def lit_jobs(ctx, students, methods) -> list[Job]:
    """LIT's rows, KD and LIT, on the depth-halved student. Where the scale sets one schedule for every row, LIT
    trains on it too: its LIT stage as the KD row, its fine-tune on the same schedule at a tenth of the lr (the
    appendix's 0.1 → 0.01), so the two rows differ in the method alone."""
    s: Scale = ctx["scale"]
    batch = s.lit_batch  # LIT's reference batch (32) for both rows, where the scale affords it
    finetune = ({} if s.preset is None else
                {"finetune_preset": s.preset, "finetune_lr": fxswap.distillation.presets.get_preset(s.preset).lr / 10})

    def job(m):
        return Job("lit", f"lit-student {m}", "student",
                   {"student": "lit", "method": m, "batch": batch, **(finetune if m == "lit" else {})})
    return seeded_jobs(ctx, [job(m) for m in methods or ["kd", "lit"]])


def srrl_jobs(ctx, students, methods) -> list[Job]:
    s: Scale = ctx["scale"]
    rows = {k: v for k, v in srrl_methods().items() if not methods or k in methods}
    jobs = [Job("srrl", f"{s.srrl_student} {k}", "student", {"student": s.srrl_student, "method": v})
            for k, v in rows.items()]
    if not methods or "scratch" in methods:
        jobs.append(Job("srrl", f"{s.srrl_student} scratch", "student",
                        {"student": s.srrl_student, "method": "scratch"}))
    return seeded_jobs(ctx, jobs)


def urban_jobs(ctx, students, methods) -> list[Job]:
    return seeded_jobs(ctx, [Job("urban", f"{k}-conv {m}", "student",
                                 {"student": f"urban:{k}", "method": m, "preset": "urban"})
                             for k in range(4) for m in (methods or ctx["scale"].urban_methods)])


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
    # ρ is a rank correlation over plans, so one seed per plan; its plans may train for fewer epochs
    first = ctx["seeds"][0] if ctx.get("seeds") else None
    jobs = [Job("blockswap", f"rank{i} scratch", "student",
                {"student": "plan:" + json.dumps(cands[i]["plan"]), "method": "scratch", "preset": preset,
                 "epochs": s.blockswap_epochs}, seed=first)
            for i in idx]
    pair = [Job("blockswap", "pick at", "student", {"student": "plan:" + json.dumps(cands[0]["plan"]),
                                                    "method": "at", "preset": preset}),
            Job("blockswap", "G(N/4) at", "student", {"student": "G(N/4)", "method": "at", "preset": preset})]
    return jobs + seeded_jobs(ctx, pair)


def warmstart_jobs(ctx, students, methods) -> list[Job]:
    """The warm-start curve: each start (warm, kept, scratch) × method of the scale, per seed. The ``scratch``
    start is Moonshine's student job (``cheapen(reinit=True)``, then the method): one signature, one training."""
    s: Scale = ctx["scale"]

    def job(start: str, m: str) -> Job:
        name = f"{s.warmstart_student} {start} {m}"
        if start == "scratch":
            epochs = None if s.warmstart_epochs == s.epochs else s.warmstart_epochs
            return Job("warmstart", name, "student", {"student": s.warmstart_student, "method": m, "epochs": epochs})
        args = {"student": s.warmstart_student, "method": m, "start": start, "epochs": s.warmstart_epochs,
                "steps": s.warmstart_steps}
        w = WARM_STARTS.get(start)
        if w is not None and start != "warm":  # "warm"'s settings are run_warmstart's defaults: its records stand
            preset = fxswap.distillation.presets.get_preset(_preset(ctx, "moonshine"))
            args.update(steps=w["steps"] * s.warmstart_steps, lr=w["lr"], recalibrate=w["recalibrate"],
                        train_lr=None if w["train_lr"] is None else w["train_lr"] * preset.lr)
        return Job("warmstart", name, "warmstart", args)

    starts = ctx.get("starts") or s.warmstart_starts
    # --methods names Moonshine's rows too: "scratch" there is a start here (the scratch row), not a method
    chosen = [m for m in methods or () if m != "scratch"] or s.warmstart_methods
    return seeded_jobs(ctx, [job(start, m) for start in starts for m in chosen])


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


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. / √n; nan for one value).

    >>> mean_se([10.0, 12.0])
    (11.0, 1.0)
    """
    v = np.asarray(values, float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def aggregate(results: dict[str, dict]) -> dict[str, dict]:
    """Per-seed results (``key [seed N]``) folded into one cell per key: ``error`` the mean across the seeds
    that finished, ``se`` its standard error, ``n`` and ``errors`` the seeds' values, ``failed`` how many
    seeds failed; curves are kept per seed (``curves``). Keys without a seed pass through.

    >>> cell = aggregate({"m/a [seed 0]": {"error": 10.0}, "m/a [seed 1]": {"error": 12.0}})["m/a"]
    >>> cell["error"], cell["se"], cell["n"]
    (11.0, 1.0, 2)
    """
    groups: dict[str, list[dict]] = {}
    for key, res in results.items():
        m = SEEDED.match(key)
        groups.setdefault(m.group(1) if m else key, []).append(res)
    out = {}
    for key, runs in groups.items():
        ok = [r for r in runs if "error" in r and "error_msg" not in r]
        if not ok or (len(runs) == 1 and not SEEDED.match(key)):
            out[key] = runs[0]
            continue
        errors = [r["error"] for r in ok]
        mean, se = mean_se(errors)
        out[key] = {**ok[0], "error": mean, "se": se, "n": len(ok), "errors": errors, "failed": len(runs) - len(ok),
                    "curves": [r["curve"] for r in ok if "curve" in r], "sigs": [r.get("sig") for r in ok]}
    return out


def _cell(res: dict | None, key: str = "error") -> str:
    if res is None:
        return "not run"
    if "error_msg" in res:
        return "failed"
    text = f"{res[key]:.2f}"
    if key == "error" and res.get("n", 1) > 1:
        text += f" ± {res['se']:.2f}"
    if res.get("failed"):
        text += f" ({res['failed']} seed(s) failed)"
    return text


def warmstart_table(ctx, r: dict) -> list[str]:
    """Test error after cheapen, after the warm start and after epochs 1, 3 and the last, per start and method."""
    s: Scale = ctx["scale"]
    marks = sorted({e for e in (1, 3, s.warmstart_epochs) if e <= s.warmstart_epochs})

    def at(curves, stage, epoch):
        vals = [p["error"] for c in curves for p in c if p["stage"] == stage and p["epoch"] == epoch]
        if not vals:
            return "—"
        mean, se = mean_se(vals)
        return f"{mean:.2f}" + (f" ± {se:.2f}" if len(vals) > 1 else "")

    md = [f"### Warm start (issue 19, item 4): the {s.warmstart_student} student of the trained teacher, test "
          f"error %, mean ± s.e. over seeds\n",
          "`warm`: cheapen keeps the teacher's weights, then fxswap.warm_start as first shipped "
          f"({s.warmstart_steps} steps, lr 1e-3, no BatchNorm recalibration); `refit`: today's warm_start "
          f"({WARM_STARTS['refit']['steps'] * s.warmstart_steps} steps, lr 3e-3, BatchNorm statistics recomputed on "
          "the student's own forward), then the method at a tenth of the lr; `kept`: the teacher's weights, no warm "
          "start; `scratch`: cheapen(reinit=True), as the papers.\n",
          "| start | method | after cheapen | after warm start | " + " | ".join(f"epoch {e}" for e in marks) + " |",
          "|---|---|---:|---:|" + "---:|" * len(marks)]
    for name, res in r.items():
        if "error_msg" in res:
            md.append(f"| {name} | failed: {res['error_msg'][:60]} |")
            continue
        *_, start, method = name.split()
        curves = res.get("curves") or [res.get("curve", [])]
        cells = [at(curves, "cheapen", 0), at(curves, "warm start", 0)] + [at(curves, method, e) for e in marks]
        md.append(f"| {start} | {method.upper()} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Numerical Recipes §6.4):
    the tail probabilities of Student's t and Fisher's F without scipy.

    >>> round(_betainc(2.0, 3.0, 0.4), 6)   # closed form for integers: Σ_{j=2..4} C(4, j) 0.4^j 0.6^(4−j)
    0.5248
    """
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):  # Lentz's method
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


def _upper_root(tail, lo: float = 0.0, hi: float = 1e7) -> float:
    """The x at which the decreasing tail probability ``tail(x)`` meets its level (``tail`` returns the excess)."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def t_critical(df: float, alpha: float = 0.05) -> float:
    """Two-sided critical value of Student's t with ``df`` degrees of freedom: P(|T| > t) = ``alpha``.

    >>> [round(t_critical(df), 3) for df in (1, 2, 8, 30)]    # the textbook table
    [12.706, 4.303, 2.306, 2.042]
    """
    return _upper_root(lambda t: _betainc(df / 2, 0.5, df / (df + t * t)) - alpha)


def f_critical(d1: float, d2: float, alpha: float) -> float:
    """Upper critical value of Fisher's F(``d1``, ``d2``): P(F > f) = ``alpha``.

    >>> round(f_critical(1, 10, 0.05), 3), round(f_critical(3, 12, 0.01), 3)
    (4.965, 5.953)
    """
    return _upper_root(lambda f: _betainc(d2 / 2, d1 / 2, d2 / (d2 + d1 * f)) - alpha)


def _spread(cell: dict) -> tuple[float, int]:
    """A cell's sum of squares about its mean over seeds and its degrees of freedom."""
    v = np.asarray(cell.get("errors") or [], float)
    return (float(((v - v.mean()) ** 2).sum()), len(v) - 1) if len(v) >= 2 else (0.0, 0)


def pooled_noise(cells: dict[str, dict], alpha: float = 0.05) -> tuple[float, int, list[str]]:
    """``(sd, df, outliers)``: the seed-to-seed standard deviation of the test error pooled over the distinct runs
    with ≥ 2 seeds, its degrees of freedom, and the cells left out of the pool as outliers.

    * Distinct runs: a cell that two experiments share (one signature, e.g. Moonshine's ``G(N/4) at`` is
      BlockSwap's baseline) counts once, by its seeds' signatures (``sigs``; the key where there are none).
    * Outliers: Cochran's C test at ``alpha`` (the largest variance against their sum, among the cells with the
      most common degrees of freedom), repeated while one is found: a cell whose seeds spread far more than the
      rest (a training that diverges in one seed) would otherwise set every other finding's noise. Such a cell
      is judged by its own spread (:func:`findings`).

    >>> sd, df, out = pooled_noise({"a": {"errors": [10.0, 12.0]}, "b": {"errors": [5.0, 5.0]}, "c": {"error": 1.0}})
    >>> round(sd, 4), df, out     # variances 2 and 0, one degree of freedom each: √((2 + 0) / 2)
    (1.0, 2, [])
    >>> wild = {f"m/{i}": {"errors": [10.0, 10.2 + i / 100]} for i in range(6)}
    >>> pooled_noise({**wild, "lit/x": {"errors": [50.0, 46.0]}})[1:]
    (6, ['lit/x'])
    """
    distinct: dict = {}
    for key, cell in cells.items():
        ident = tuple(cell["sigs"]) if cell.get("sigs") and all(cell["sigs"]) else key
        distinct.setdefault(ident, key)
    spreads = {key: _spread(cells[key]) for key in distinct.values()}
    spreads = {k: v for k, v in spreads.items() if v[1] > 0}
    outliers: list[str] = []
    while True:
        dfs = [df for _, df in spreads.values()]
        nu = max(set(dfs), key=dfs.count) if dfs else 0
        tested = {k: ss / df for k, (ss, df) in spreads.items() if df == nu}
        k = len(tested)
        total = sum(tested.values())
        if k < 3 or total <= 0:
            break
        worst = max(tested, key=tested.get)
        crit = 1.0 / (1.0 + (k - 1) / f_critical(nu, (k - 1) * nu, alpha / k))
        if tested[worst] / total <= crit:
            break
        outliers.append(worst)
        del spreads[worst]
    ss = sum(v[0] for v in spreads.values())
    df = sum(v[1] for v in spreads.values())
    return (float(np.sqrt(ss / df)) if df else float("nan")), df, outliers


def call_difference(base: dict | None, method: dict | None, se: float, crit: float, paper: float | None
                    ) -> tuple[str, str, str]:
    """``(ours, call, why)`` for "``method`` lowers the test error below ``base``": the gain ``d`` (points) against
    its standard error ``se`` and the critical value ``crit`` (Student's t at the noise's degrees of freedom);
    reproduced when ``d > crit·se``, not reproduced when ``d < −crit·se`` (the opposite, beyond noise), else
    undecided — saying whether a gain of the paper's size (``paper``) is excluded.

    >>> call_difference({"error": 8.0, "n": 2}, {"error": 7.0, "n": 2}, 0.2, 2.0, 1.6)[1]
    'reproduced'
    >>> call_difference({"error": 8.0, "n": 2}, {"error": 8.1, "n": 2}, 0.2, 2.0, 1.6)[1:]
    ('undecided', "gain −0.10 is within 2 s.e. (0.40) of zero; a gain of the paper's 1.60 is excluded")
    >>> call_difference({"error": 8.0, "n": 2}, {"error": 6.0, "n": 1}, 0.2, 2.0, 1.6)[1]  # one seed of a cell
    'undecided'
    """
    if not base or not method or "error" not in base or "error" not in method:
        return "not run", "undecided", "a cell has not finished"
    d = base["error"] - method["error"]
    n_a, n_b = base.get("n", 1), method.get("n", 1)
    ours = f"{base['error']:.2f} → {method['error']:.2f} (gain {d:+.2f} ± {se:.2f})".replace("-", "−")
    if not (np.isfinite(se) and np.isfinite(crit)):
        return ours, "undecided", "one seed: no estimate of the noise"
    if min(n_a, n_b) < 2:  # the pooled s.d. would allow a call, but one seed of a cell is one draw of its mean
        return ours, "undecided", "a cell has one seed so far; a call needs ≥ 2 in each"
    bar = f"{crit:.3g} s.e. ({crit * se:.2f})"
    if d > crit * se:
        return ours, "reproduced", f"gain {d:.2f} > {bar}"
    if d < -crit * se:
        return ours, "not reproduced", f"the opposite: loss {-d:.2f} > {bar}"
    why = f"gain {d:.2f} is within {bar} of zero".replace("-", "−")
    if paper is not None:
        excluded = abs(paper - d) > crit * se
        why += f"; a gain of the paper's {paper:.2f} is {'excluded' if excluded else 'not excluded'}"
    return ours, "undecided", why


def comparison_noise(base: dict | None, method: dict | None, pooled: tuple[float, int, list[str]],
                     keys: tuple[str, str], alpha: float = 0.05) -> tuple[float, float, str]:
    """``(se, crit, noise)`` of the gain ``base − method``: from the pooled s.d. and its degrees of freedom, or, when
    a cell is a pooled-noise outlier, from the two cells' own spreads (Welch's s.e. and degrees of freedom).

    >>> se, crit, noise = comparison_noise({"n": 2}, {"n": 2}, (0.5, 8, []), ("a", "b"))
    >>> round(se, 4), round(crit, 3), noise      # 0.5 · √(1/2 + 1/2); t at 8 degrees of freedom
    (0.5, 2.306, 'pooled')
    >>> se, crit, noise = comparison_noise({"n": 2, "errors": [10.0, 10.0]}, {"n": 2, "errors": [50.0, 46.0]},
    ...                                    (0.5, 8, ["b"]), ("a", "b"))
    >>> round(se, 4), round(crit, 3), noise      # √(0/2 + 8/2); Welch: 1 degree of freedom
    (2.0, 12.706, 'own')
    """
    sd, df, outliers = pooled
    n_a, n_b = (base or {}).get("n", 1), (method or {}).get("n", 1)
    if not any(k in outliers for k in keys):
        se = sd * math.sqrt(1 / n_a + 1 / n_b) if math.isfinite(sd) else float("nan")
        return se, (t_critical(df, alpha) if df else float("nan")), "pooled"
    (ss_a, df_a), (ss_b, df_b) = _spread(base or {}), _spread(method or {})
    if not (df_a and df_b):
        return float("nan"), float("nan"), "own"
    va, vb = ss_a / df_a / n_a, ss_b / df_b / n_b
    se = math.sqrt(va + vb)
    welch = (va + vb) ** 2 / ((va * va / df_a if va else 0) + (vb * vb / df_b if vb else 0) or 1e-300)
    return se, t_critical(max(1.0, min(welch, df_a + df_b)), alpha), "own"


def call_rho(rho: float, n: int, paper: float, z: float = 1.96) -> tuple[str, str, str]:
    """``(ours, call, why)`` for "the Fisher potential ranks plans by error" (ρ < 0): a 95 % interval for
    Spearman's ρ over ``n`` plans by Fisher's z with Bonett and Wright's variance ``(1 + ρ²/2)/(n − 3)``;
    reproduced when the interval lies below 0, not reproduced when it lies above the paper's ρ, else undecided.

    >>> call_rho(-0.8, 12, -0.685)[1], call_rho(0.5, 12, -0.685)[1], call_rho(-0.2, 12, -0.685)[1]
    ('reproduced', 'not reproduced', 'undecided')
    """
    if n < 4 or not np.isfinite(rho):
        return f"ρ over {n} plans", "undecided", "fewer than 4 plans trained"
    half = z * np.sqrt((1 + rho * rho / 2) / (n - 3))
    centre = np.arctanh(np.clip(rho, -0.999, 0.999))
    lo, hi = np.tanh(centre - half), np.tanh(centre + half)
    ours = f"ρ = {rho:.2f} over {n} plans (95 % interval {lo:.2f} to {hi:.2f})".replace("-", "−")
    if hi < 0:
        return ours, "reproduced", "the interval lies below 0"
    if lo > paper:
        return ours, "not reproduced", f"the interval excludes the paper's {paper}".replace("-", "−")
    return ours, "undecided", f"the interval holds 0 and the paper's {paper}".replace("-", "−")


def findings(ctx, cells: dict[str, dict], rho: tuple[float, int] | None = None) -> list[str]:
    """The table results.md opens with: each finding, ours (mean over seeds), the paper's, and the call. Every
    finding of the experiments the run asked for (``ctx["experiments"]``) has its row, undecided while its cells
    have not finished; without that list, the findings with a finished cell."""
    asked = ctx.get("experiments")
    if rho is None and asked is not None and "blockswap" in asked:
        rho = (float("nan"), 0)  # no plan trained yet
    pooled = pooled_noise(cells)
    sd, df, outliers = pooled
    m, p = PAPER["moonshine"], PAPER["blockswap"]
    rows = [
        ("Moonshine: AT beats scratch (G(N/4))", "moonshine/G(N/4) scratch", "moonshine/G(N/4) at",
         f"{m['G(N/4)'][1]} → {m['G(N/4)'][3]}", m["G(N/4)"][1] - m["G(N/4)"][3]),
        ("Moonshine: KD beats scratch (G(N/4))", "moonshine/G(N/4) scratch", "moonshine/G(N/4) kd",
         f"{m['G(N/4)'][1]} → {m['G(N/4)'][2]}", m["G(N/4)"][1] - m["G(N/4)"][2]),
        ("Moonshine: the cheapened student beats the reduced one, both from scratch (wrn-16-1 → G(N/4))",
         "moonshine/wrn-16-1 scratch", "moonshine/G(N/4) scratch", f"{m['wrn-16-1'][1]} → {m['G(N/4)'][1]}",
         m["wrn-16-1"][1] - m["G(N/4)"][1]),
        ("Moonshine: the cheapened student beats the reduced one, both AT (wrn-16-1 → G(N/4))",
         "moonshine/wrn-16-1 at", "moonshine/G(N/4) at", f"{m['wrn-16-1'][3]} → {m['G(N/4)'][3]}",
         m["wrn-16-1"][3] - m["G(N/4)"][3]),
        ("BlockSwap: its pick beats G(N/4), both AT", "blockswap/G(N/4) at", "blockswap/pick at",
         f"{p['single_type_400k']} → {p['blockswap_400k']}", p["single_type_400k"] - p["blockswap_400k"]),
        ("LIT beats KD on the depth-halved student", "lit/lit-student kd", "lit/lit-student lit",
         f"{PAPER['lit']['kd']:.2f} → {PAPER['lit']['lit']:.2f}", PAPER["lit"]["kd"] - PAPER["lit"]["lit"]),
        ("Warm start beats scratch after the KD epochs (G(N/4); ours)", "warmstart/G(N/4) scratch kd",
         "warmstart/G(N/4) warm kd", "—", None),
        ("Warm start beats scratch after the AT epochs (G(N/4); ours)", "warmstart/G(N/4) scratch at",
         "warmstart/G(N/4) warm at", "—", None),
    ]
    refit = [r for r in cells if r.startswith("warmstart/") and " refit " in r]
    if refit or "refit" in (ctx.get("starts") or ()):
        rows += [(f"Refit warm start, then a fine-tune at lr/10, beats scratch after the {m.upper()} epochs "
                  "(G(N/4); ours)", f"warmstart/G(N/4) scratch {m}", f"warmstart/G(N/4) refit {m}", "—", None)
                 for m in ("kd", "at") if f"warmstart/G(N/4) refit {m}" in refit or not refit]
    left_out = (f" {', '.join(outliers)} {'is' if len(outliers) == 1 else 'are'} left out of the pool: Cochran's "
                "test finds its seeds' spread far above the others', so a finding with it is judged by the two "
                "cells' own spreads (Welch)." if outliers else "")
    md = ["### Findings at this scale: test error %, mean over seeds\n",
          f"A gain is judged against the seed-to-seed s.d. pooled over the grid's distinct runs ({sd:.2f} points, "
          f"{df} degrees of freedom): reproduced when it exceeds Student's t (two-sided 5 %) times its s.e. in the "
          "paper's direction, not reproduced when it does so the other way, undecided otherwise." + left_out + "\n",
          "| finding | ours | paper | call | why |", "|---|---|---|---|---|"]
    for title, base, method, paper_text, paper_gain in rows:
        if (base.split("/")[0] not in asked) if asked is not None else (base not in cells and method not in cells):
            continue
        se, crit, noise = comparison_noise(cells.get(base), cells.get(method), pooled, (base, method))
        ours, call, why = call_difference(cells.get(base), cells.get(method), se, crit, paper_gain)
        if noise == "own":
            why += " (the cells' own spreads)"
        md.append(f"| {title} | {ours} | {paper_text} | **{call}** | {why} |")
    if rho is not None:
        ours, call, why = call_rho(rho[0], rho[1], p["rho_fisher_error_400k"])
        paper_rho = f"{p['rho_fisher_error_400k']}".replace("-", "−")
        md.append(f"| BlockSwap: the Fisher potential ranks plans (ρ(Fisher, error) < 0) | {ours} | "
                  f"{paper_rho} | **{call}** | {why} |")
    md.append("")
    return md


def tables(ctx, results: dict) -> tuple[str, dict]:
    """Markdown tables and a JSON summary of every experiment that ran."""
    md, summary = [], {}
    teacher = results.get("teacher")
    if teacher is None:  # a --teacher-checkpoint run: its test error is measured once (teacher_eval)
        ev = results.get("teacher_eval")
        measured = f", test error {_cell(ev)} %" if ev else ""
        md.append(f"Teacher {ctx['scale'].teacher}: from {ctx['teacher_path']}{measured}; paper (WRN-40-2): 4.79 %\n")
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
        md.append(f"| Spearman ρ(Fisher potential, error), {len(pairs)} plans trained from scratch | "
                  f"{rho:.3f} | {PAPER['blockswap']['rho_fisher_error_400k']} (100 plans) |".replace("-", "−"))
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
    if "warmstart" in by:
        md += warmstart_table(ctx, by["warmstart"])
        summary["warmstart"] = by["warmstart"]
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
    rho = (summary["blockswap"]["rho"], len(summary["blockswap"]["pairs"])) if "blockswap" in summary else None
    md[1:1] = findings(ctx, results, rho)  # after the teacher's line: the decision first
    return "\n".join(md), summary


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def figure(summary: dict, out: Path) -> str | None:
    """Error vs parameters (log x), Moonshine Figure 3; None when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    r = summary.get("moonshine")
    if not r:
        return None
    series = {method: [(v["params"], v["error"], v.get("se", 0.0), n.rsplit(" ", 1)[0]) for n, v in r.items()
                       if n.endswith(" " + method) and "error" in v] for method in ("scratch", "kd", "at")}
    if not any(series.values()):  # every job failed or none ran yet: no empty plot
        return None
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (method, pts), marker in zip(series.items(), ("o", "s", "^")):
        if pts:  # mean over seeds ± s.e. (no bar with one seed)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=marker,
                        capsize=2, label=method)
            for p in pts:
                ax.annotate(p[3], (p[0], p[1]), fontsize=6)
    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))  # 120k rather than 1.2×10⁵, overlapping
    ax.set_xlabel("parameters")
    ax.set_ylabel("test error %")
    ax.legend()
    path = out / "moonshine_error_vs_params.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name  # results.md lies beside it: a relative link survives a copy of the folder


def warmstart_points(res: dict) -> list[tuple[float, float, float]]:
    """``(x, mean error, s.e.)`` along one warm-start row's curve, over its seeds: x is the epoch, with the
    points before training at x = 0 (after cheapen) and 0.5 (after the warm start).

    >>> warmstart_points({"curves": [[{"epoch": 0, "stage": "cheapen", "error": 90.0},
    ...                               {"epoch": 1, "stage": "at", "error": 30.0}],
    ...                              [{"epoch": 0, "stage": "cheapen", "error": 88.0},
    ...                               {"epoch": 1, "stage": "at", "error": 32.0}]]})
    [(0.0, 89.0, 1.0), (1.0, 31.0, 1.0)]
    """
    by_x: dict[float, list[float]] = {}
    for curve in res.get("curves") or [res.get("curve", [])]:
        for p in curve:
            x = {"cheapen": 0.0, "warm start": 0.5}.get(p["stage"], float(p["epoch"]))
            by_x.setdefault(x, []).append(p["error"])
    return [(x, *mean_se(v)) for x, v in sorted(by_x.items())]


def warmstart_figure(summary: dict, out: Path) -> str | None:
    """Test error against epochs of KD / AT, one line per start (warm, kept, scratch): the curve a user with a
    trained teacher sees. None when matplotlib is missing or no warm-start row finished."""
    r = {k: v for k, v in summary.get("warmstart", {}).items() if "error_msg" not in v}
    if not r:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import FuncFormatter

    methods = sorted({k.split()[-1] for k in r})
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.5), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for name, res in sorted(r.items()):
            if name.split()[-1] != method:
                continue
            pts = warmstart_points(res)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        markersize=3, capsize=2, label=name.split()[-2])
        ax.set_title(method.upper())
        ax.set_xlabel("epochs (0: after cheapen, 0.5: after the warm start)")
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))  # 20, 30, 40 rather than 2×10¹, 3×10¹
        ax.legend()
    axes[0][0].set_ylabel("test error % (log)")
    path = out / "warmstart_curve.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name  # results.md lies beside it: a relative link survives a copy of the folder


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


JOBS = {"moonshine": moonshine_jobs, "lit": lit_jobs, "warmstart": warmstart_jobs, "srrl": srrl_jobs,
        "urban": urban_jobs}


def _step_seconds(ctx: dict, teacher: nn.Module, student: str, distilled: bool, batch: int | None) -> tuple:
    """(seconds per training step, per evaluation batch, training batches, evaluation batches), timed on the
    run's data, precision and threads: one warm-up step, then the scale's ``eta_steps``."""
    model = _layout(ctx, copy.deepcopy(teacher) if student == "teacher" else _build_student(ctx, student, teacher))
    train, val = _loaders(ctx, 0, batch)
    d = fxswap.Distiller(teacher if distilled else None, model, {"kd": 0.9} if distilled else {"ce": 1.0})
    opt = torch.optim.SGD(d.parameters(), lr=1e-3)
    autocast = torch.autocast(_device().type, dtype=torch.bfloat16, enabled=_bf16(ctx))
    batches = iter(train)
    x, y = next(batches)
    times = []
    for i in range(ctx["scale"].eta_steps + 1):
        t0 = time.perf_counter()
        with autocast:
            loss, _ = d(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    xv, _ = next(iter(val))
    evals = []
    for _ in range(4):  # the first call builds kernels for the new batch shape: not counted
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            model(xv)
        evals.append(time.perf_counter() - t0)
    return float(np.median(times[1:])), float(np.median(evals[1:])), len(train), len(val)


def _job_shape(ctx: dict, job: Job) -> tuple[tuple, float, int]:
    """What a job's time depends on: ``((student, distilled, batch), epochs, extra steps)``."""
    s: Scale = ctx["scale"]
    a = job.args
    if job.kind == "teacher":
        return ("teacher", False, None), s.teacher_epochs, 0
    if job.kind == "teacher_eval":
        return ("teacher", False, None), 0, 0
    if job.kind == "warmstart":
        return (a["student"], True, None), a["epochs"], a["steps"]
    return (a["student"], a["method"] != "scratch", a.get("batch")), a.get("epochs") or s.epochs, 0


def _rate_key(shape: tuple) -> tuple:
    """The architecture a job is timed as: a BlockSwap plan at its budget's ``G(N/4)`` rate."""
    student = shape[0]
    return ("G(N/4)" if student.startswith("plan:") else student, *shape[1:])


def recorded_epoch_seconds(ctx: dict, jobs: list[Job]) -> dict[tuple, float]:
    """Median seconds per epoch (training and its evaluation, as ``fit`` timed them) of this grid's finished
    student jobs, by the architecture they are timed as; only records made with this run's ``--jobs`` and
    ``--threads`` (or records older than those fields). BlockSwap plans are left out: each is its own
    architecture. A grid resumed across sessions sees these rates, shared cores and all, where a probe of a few
    steps on an idle machine sees the fastest case (the decide grid's probe was low by 1.7×)."""
    done = ctx.get("done", {})
    threads = ctx.get("threads") or torch.get_num_threads()  # what the workers will run with
    per: dict[tuple, list[float]] = {}
    seen: set[str] = set()
    for job in jobs:
        sig = signature(ctx, job)
        res = done.get(sig)
        if sig in seen or not res or job.kind != "student" or job.args["student"].startswith("plan:"):
            continue
        seen.add(sig)
        if res.get("processes", ctx.get("n_proc")) != ctx.get("n_proc") or res.get("threads", threads) != threads:
            continue
        shape, epochs, _ = _job_shape(ctx, job)
        if epochs and res.get("seconds"):
            per.setdefault(_rate_key(shape), []).append(res["seconds"] / epochs)
    return {k: float(np.median(v)) for k, v in per.items()}


def estimate(ctx: dict, jobs: list[Job]) -> dict:
    """Seconds each pending job will take, per student architecture (with or without a teacher forward): at the
    rate this grid's finished jobs took where there are some (:func:`recorded_epoch_seconds`), else at a rate
    measured now, scaled by the median ratio of recorded to measured rates (the cores' sharing slows every
    architecture alike); printed as a table with the total and the finishing time before anything runs."""
    done = ctx.get("done", {})
    pending = [j for j in jobs if signature(ctx, j) not in done and j.kind in ("teacher", "teacher_eval",
                                                                                "student", "warmstart")]
    try:
        teacher = _teacher(ctx)
    except (FileNotFoundError, OSError, fxswap.FxswapError):  # the teacher job has not run yet: time a random one
        teacher = _layout(ctx, fxswap.models.create_model(ctx["scale"].teacher))
    rates: dict[tuple, tuple] = {}
    recorded = {} if ctx.get("fresh") else recorded_epoch_seconds(ctx, jobs)

    def rate(key: tuple) -> tuple:
        if key not in rates:
            rates[key] = _step_seconds(ctx, teacher, *key)
        return rates[key]

    def probed_epoch(key: tuple) -> float:
        step, ev, n_train, n_val = rate(key)
        return n_train * step + n_val * ev

    # how much slower the grid ran than the probe, where both are known: applied to what has no record yet
    slowdown = float(np.median([recorded[k] / probed_epoch(k) for k in recorded])) if recorded else 1.0
    per_exp: dict[str, float] = {}
    seen: set[str] = set()
    cut = 0  # jobs killed mid-way: they resume at their last epoch
    for job in pending:
        sig = signature(ctx, job)
        if sig in seen:  # run once (one signature), counted once
            continue
        seen.add(sig)
        shape, epochs, extra = _job_shape(ctx, job)
        done_epochs = 0 if ctx.get("fresh") else min(epochs, epochs_done(ctx, sig))
        cut += done_epochs > 0
        epochs -= done_epochs
        key = _rate_key(shape)
        epoch = recorded[key] if key in recorded else slowdown * probed_epoch(key)
        # test passes outside the epochs: after cheapen and after the warm start, or the teacher's own
        evals = (2 if job.kind == "warmstart" else 0) + (job.kind == "teacher_eval")
        side = 0.0
        if extra or evals:  # a recorded architecture needs no probe unless it has steps outside its epochs
            step, ev, _, n_val = rate(key)
            side = slowdown * (extra * step + evals * n_val * ev)
        per_exp[job.experiment] = per_exp.get(job.experiment, 0.0) + epochs * epoch + side
    total = sum(per_exp.values())
    rows = [(e, sum(1 for j in pending if j.experiment == e), f"{t / 60:.0f}") for e, t in per_exp.items()]
    print(render_table(["experiment", "jobs to run", "est. minutes"], rows), flush=True)
    n_proc = max(1, min(ctx.get("n_proc", 1), len(seen)))
    wall = total / n_proc  # the processes share the jobs; a lower bound when a long job runs last
    finish = time.strftime("%H:%M", time.localtime(time.time() + wall))
    timed = [j for j in jobs if j.kind in ("teacher", "teacher_eval", "student", "warmstart")]
    print(f"ETA: {total / 3600:.2f} process-hours, {wall / 3600:.2f} h on {n_proc} process(es), for "
          f"{len(pending)} job(s) ({len(timed) - len(pending)} finished earlier, skipped; {cut} resuming at "
          f"their last epoch) at rates measured over {ctx['scale'].eta_steps} steps per architecture "
          f"({len(rates)} timed; BlockSwap plans at the G(N/4) rate, its scoring not included)"
          + (f", {len(recorded)} architecture(s) at the rate their finished jobs took, the others scaled by "
             f"that record's {slowdown:.2f}× of the probe" if recorded else "")
          + f": done about {finish}", flush=True)
    return {"seconds": total, "wall_seconds": wall, "resuming": cut, "per_experiment": per_exp,
            "rates": {json.dumps(k): list(v) for k, v in rates.items()}, "slowdown": slowdown,
            "recorded_epoch_seconds": {json.dumps(k): v for k, v in recorded.items()}}


def file_id(path: Path) -> str:
    """What a job's signature holds of a file: its content's SHA-256, so that a record made on one machine (or
    before a copy) resumes on another, and a changed file runs the jobs again.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "a.bin"; _ = f.write_bytes(b"abc")
    >>> file_id(f)[:24]
    'sha256:ba7816bf8f01cfea4'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _context(args, scale: Scale, out: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-"))
    if scale.synthetic:
        data = synthetic_npz(tmp / "synthetic.npz", scale.train, scale.val, scale.image, args.seed)
        data_id = f"synthetic seed {args.seed}"
    else:
        if not args.data or not Path(args.data).is_file():
            raise SystemExit(f"--scale {args.scale} needs --data FILE.npz (x_train, y_train, x_test, y_test)")
        data = _limited({}, Path(args.data), scale, tmp)
        data_id = file_id(Path(args.data))
    ctx = {"scale": scale, "data": str(data), "seed": args.seed, "t0": time.perf_counter(),
           "teacher_path": str(out / "teacher.pt"), "threads": args.threads, "data_id": data_id,
           "image": scale.image if scale.synthetic else 32, "out": str(out),
           "seeds": tuple(args.seeds) if args.seeds else scale.seeds, "fresh": args.fresh,
           "n_proc": args.jobs, "starts": _starts(args.starts)}
    if args.teacher_checkpoint:
        if not Path(args.teacher_checkpoint).is_file():
            raise SystemExit(f"--teacher-checkpoint {args.teacher_checkpoint}: no such file")
        ctx["teacher_path"] = args.teacher_checkpoint
        ctx["teacher_id"] = file_id(Path(args.teacher_checkpoint))
    _bf16(ctx)  # decided here, so the signatures and the worker processes see one answer
    ctx["done"] = {} if args.fresh else finished(out)
    return ctx


def _scaled(args) -> Scale:
    scale = SCALES[args.scale]
    if args.epochs:
        scale = replace(scale, epochs=args.epochs)
    if args.teacher_epochs:
        scale = replace(scale, teacher_epochs=args.teacher_epochs)
    if args.train_images and not scale.synthetic:
        scale = replace(scale, train=args.train_images)
    if args.test_images and not scale.synthetic:
        scale = replace(scale, val=args.test_images)
    if args.precision:
        scale = replace(scale, precision=args.precision)
    return scale


def _starts(text: str | None) -> tuple[str, ...] | None:
    """``--starts``: the warm-start rows to run, checked against the known starts.

    >>> _starts("refit, scratch"), _starts(None)
    (('refit', 'scratch'), None)
    """
    if not text:
        return None
    starts = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in starts if t not in (*WARM_STARTS, "kept", "scratch")]
    if unknown:
        raise SystemExit(f"--starts: unknown start(s) {unknown}; known: {', '.join([*WARM_STARTS, 'kept', 'scratch'])}")
    return starts


def _placeholder_phase2(ctx) -> list[Job]:
    """BlockSwap's students before its scoring has picked them: G(N/4)-sized stand-ins, for the ETA only."""
    s: Scale = ctx["scale"]
    fake = {"candidates": [{"plan": {"stand-in": i}} for i in range(max(2, s.blockswap_trained))]}
    jobs = blockswap_phase2(ctx, fake)
    return [replace(j, args={**j.args, "student": "plan:" + json.dumps({"stand-in": j.name})})
            if j.args["student"].startswith("plan:") else j for j in jobs]


def run(experiments, args) -> dict:
    scale = _scaled(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _context(args, scale, out)
    ctx["report_only"] = args.report_only
    ctx["experiments"] = tuple(experiments)
    students = [s.strip() for s in args.students.split(";")] if args.students else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    print(f"scale {args.scale}: {scale}\ndata {args.data or 'synthetic'}, device {_device()}, jobs {args.jobs}, "
          f"seed(s) {ctx['seeds'] or args.seed}, precision {'bf16 + channels_last' if _bf16(ctx) else 'fp32'}, "
          f"{len(ctx['done'])} finished job(s) in {out / 'progress.jsonl'}", flush=True)
    phase1 = []
    results: dict = {}
    if args.without_teacher:  # only what needs no trained teacher, e.g. while the teacher is still training
        pass
    elif args.teacher_checkpoint:
        phase1.append(Job("teacher", "teacher_eval", "teacher_eval"))
    else:
        phase1.append(Job("teacher", "teacher", "teacher"))
    scored = None  # the BlockSwap scoring's record, when an earlier run finished it: its plans are known
    if "blockswap" in experiments:
        ctx["budget"] = blockswap_budget(ctx)
        phase1.append(Job("blockswap", "blockswap_scoring", "blockswap_scoring",
                          {"budget": ctx["budget"], "samples": scale.blockswap_samples}))
        scored = ctx["done"].get(signature(ctx, phase1[-1]))
    by_exp = {e: JOBS[e](ctx, students if e == "moonshine" else None,
                         methods if e in ("moonshine", "warmstart") else None)
              for e in experiments if e in JOBS}
    eta = None
    if scale.eta_steps and not args.report_only:
        planned = [j for e in experiments for j in (
            by_exp.get(e, []) if e != "blockswap"
            else blockswap_phase2(ctx, scored) if scored and "candidates" in scored else _placeholder_phase2(ctx))]
        if args.without_teacher:
            planned = [j for j in planned if reads_no_teacher(j)]
        eta = estimate(ctx, phase1 + planned)
    for name, res in run_jobs(ctx, phase1, args.jobs).items():
        results[name] = res
    if "error_msg" in results.get("teacher", {}):
        raise SystemExit(f"the teacher failed: {results['teacher']['error_msg']}")
    if "blockswap" in experiments and "candidates" in results.get("blockswap_scoring", {}):
        by_exp["blockswap"] = blockswap_phase2(ctx, results["blockswap_scoring"])
    jobs = [j for e in experiments for j in by_exp.get(e, [])]  # in the order of importance
    if args.without_teacher:
        jobs = [j for j in jobs if reads_no_teacher(j)]
    results.update(run_jobs(ctx, jobs, args.jobs))
    return report(ctx, args, experiments, results, eta)


def report(ctx, args, experiments, results: dict, eta: dict | None) -> dict:
    """results.md and results.json (written before they are printed), seeds folded into mean ± s.e."""
    scale: Scale = ctx["scale"]
    out = Path(ctx["out"])
    wall = time.perf_counter() - ctx["t0"]
    md, summary = tables(ctx, aggregate(results))
    cmd = "python benchmarks/fidelity.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "(in-process)"
    preset = scale.preset or "the papers'"
    seeds = (f"seeds {', '.join(map(str, ctx['seeds']))} (cells: mean ± standard error across seeds)"
             if ctx.get("seeds") else f"seed {args.seed}")
    resumed = sum(1 for r in results.values() if r.get("resumed"))
    header = (f"## fidelity --scale {args.scale}: {', '.join(experiments)}\n\nCommand: `{cmd}`  \n"
              f"Wall time {wall / 60:.1f} min on {_device()} ({torch.get_num_threads()} threads, {args.jobs} "
              f"process(es); {resumed} job(s) resumed from earlier sessions); {seeds}; {scale.epochs} epochs per "
              f"student (BlockSwap ρ plans {scale.blockswap_epochs or scale.epochs}), teacher "
              f"{scale.teacher_epochs}; preset {preset}; precision {'bf16' if _bf16(ctx) else 'fp32'}; data "
              f"{args.data or 'synthetic'} (train {scale.train or 'all'}, test {scale.val or 'all'}).\n")
    fig, warm_fig = figure(summary, out), warmstart_figure(summary, out)
    text = (header + "\n" + md + (f"\n![error vs params]({fig})\n" if fig else "")
            + (f"\n![warm-start curve]({warm_fig})\n" if warm_fig else ""))
    (out / "results.md").write_text(text)
    scoring = results.get("blockswap_scoring", {})
    dump = {"scale": asdict(scale), "wall_s": wall, "seed": args.seed, "seeds": ctx.get("seeds"),
            "experiments": list(experiments), "eta": eta,
            "results": {k: v for k, v in results.items() if k != "blockswap_scoring"},
            "cells": {k: v for k, v in aggregate(results).items() if k != "blockswap_scoring"},
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
    ap.add_argument("--seeds", type=int, nargs="+", help="run every cell once per seed (decide: 0 1); the tables "
                    "give mean ± standard error across them")
    ap.add_argument("--fresh", action="store_true", help="ignore the finished jobs recorded in --out/progress.jsonl "
                    "(default: a re-run skips them, so a grid spans sessions)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    ap.add_argument("--students", help="Moonshine only: ';'-separated students (specs or wrn-D-W)")
    ap.add_argument("--methods", help="Moonshine and warmstart only: ','-separated methods (scratch, kd, at, ...)")
    ap.add_argument("--starts", help="warmstart only: ','-separated starts (warm, refit, kept, scratch; default "
                                     "the scale's)")
    ap.add_argument("--epochs", type=int, help="override the scale's epochs per student")
    ap.add_argument("--teacher-epochs", type=int, help="override the scale's teacher epochs")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                    help="override the scale's precision (auto: bf16 autocast + channels_last where the CPU "
                         "computes bf16 natively); fp32 repeats a cell in fp32 to measure what bf16 costs; bf16 "
                         "goes on with a grid begun in bf16 on a machine where auto would pick fp32 (a job's "
                         "signature holds the precision it computes in, not the flag)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write results.md/results.json from the jobs --out/progress.jsonl records "
                         "as finished (a grid in progress, or one spread over sessions)")
    ap.add_argument("--without-teacher", action="store_true",
                    help="run only the jobs that read no trained teacher (students from scratch, the BlockSwap "
                         "scoring), e.g. while the teacher trains; a later run with --teacher-checkpoint and the "
                         "same --out resumes them")
    ap.add_argument("--teacher-checkpoint", help="a trained teacher (fxswap.save_student file, e.g. "
                    "train_teacher.py --keep, or a state dict): skip training it")
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
