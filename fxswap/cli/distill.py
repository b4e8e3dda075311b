"""``fxswap distill``: train a cheapened (or named) student from a teacher on CIFAR or an ImageFolder tree.

    fxswap distill --teacher wrn-40-2 --student "G(N/4)" --method at --data cifar10.npz \\
                   --teacher-checkpoint wrn40x2.pt --epochs 200 --out runs/g4 --csv runs/g4.csv
    fxswap distill --teacher timm:resnet18 --student "G(N/4)" --data flowers/ --image-size 160 ...

``--student`` is a block spec or plan (the student is ``fxswap.cheapen(teacher,
spec, reinit=True)``, trained from scratch as in the papers) or a model name
(``wrn-16-2``). ``--data`` is an ``.npz`` (``x_train, y_train, x_test, y_test``),
a torchvision CIFAR folder (:func:`fxswap.data.cifar_loaders`), or an
ImageFolder tree ``DIR/train/<class>/<image>``, ``DIR/val/<class>/<image>``
resized and cropped to ``--image-size`` (default 224) and normalised with
ImageNet's mean/std (:func:`fxswap.data.imagefolder_loaders`). Without
``--teacher-checkpoint`` the teacher is untrained (a warning says so) unless
``--train-teacher-epochs K`` trains it first with :func:`fxswap.train`.
With ``--out DIR`` the teacher's run goes to ``DIR/teacher`` and the student's to
``DIR/student`` (``history.jsonl``, ``checkpoint.pt`` every epoch,
``student_state_dict.pt``, the bare weights); ``--resume`` continues both where they stopped. At the end
``DIR/student.pt`` holds the student with the record that rebuilds it
(``fxswap.load_student("DIR/student.pt")``; ``fxswap export`` reads it).
``--warm-start N`` starts the student from the trained teacher instead:
``fxswap.cheapen(teacher, spec)`` keeps the teacher's weights outside the
rewritten blocks, then N steps of :func:`fxswap.warm_start` fit each rewritten
block to its teacher block (LIT's block objective) before the distillation.
``--csv FILE`` logs one row per epoch (``fxswap.distillation.callbacks.CSVLogger``:
epoch, stage, lr, the loss terms, validation loss/accuracy, seconds; accuracies there and in
``history.jsonl`` are fractions in [0, 1], printed ones are percentages);
``--tensorboard LOGDIR`` writes TensorBoard scalars (``pip install tensorboard``).
The student's run takes timm's regularisers: ``--mixup A --cutmix A
--label-smoothing E`` (``fit(mixup=...)``, :mod:`fxswap.distillation.augment`),
``--ema DECAY`` (``fit(ema=...)``: ``val_acc_ema`` in the history,
``DIR/student/student_ema_state_dict.pt``; with ``--ema-export`` the
``DIR/student.pt`` holds the EMA weights instead of the last ones), and on
ImageFolder data ``--auto-augment randaugment|trivialaugment``
(``transforms.v2``; CIFAR keeps its per-sample transforms).
From Python, ``fit``/``distill`` take ``callbacks=[...]``, W&B included
(:mod:`fxswap.distillation.callbacks`).

>>> from fxswap.cli.main import build_parser
>>> args = build_parser().parse_args(["distill", "--teacher", "wrn-40-2", "--student", "G(N/4)", "--data", "c.npz"])
>>> args.method, args.batch_size, args.cutout, args.epochs   # None: the preset's
('at', None, None, None)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import FxswapError, SpecError
from ..process_group import join
from ..surgery.rewrite import param_count
from .common import (check_writable, echo, forwarded_warnings, load_model, load_plan, load_weights, non_negative_float,
                     non_negative_int, noted_warnings, positive_float, positive_int)

__all__ = ["add_parsers", "run_distill"]


def add_parsers(subparsers, model: argparse.ArgumentParser | None = None) -> None:
    """Add ``distill`` to ``subparsers`` (it names two models, so it takes no model parent parser)."""
    from ..distillation import METHODS
    from ..distillation.presets import PRESETS

    p = subparsers.add_parser("distill", help="distil a teacher into a cheapened student on CIFAR",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher model name: wrn-40-2, resnet-56, a timm/tv: name")
    p.add_argument("--student", required=True,
                   help='a spec ("G(N/4)"), a JSON plan ({"layer1.*": "B(2)"}) or plan .json file, or a model '
                        "name (wrn-16-2)")
    p.add_argument("--method", default="at",
                   help=f"{', '.join(list(METHODS) + ['lit'])}, or a JSON losses dict (default: at)")
    p.add_argument("--data", required=True,
                   help=".npz file, torchvision CIFAR folder, or ImageFolder tree (DIR/train/<class>/*.png, "
                        "DIR/val/<class>/*.png)")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"], help="CIFAR data only")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="ImageFolder data: the side of the square crop (default 224)")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the preset's (paper's) epochs")
    p.add_argument("--finetune-epochs", type=non_negative_int, default=None,
                   help="LIT's KD fine-tune stage (default 75/175 of --epochs)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default: the preset's (128; LIT's 32)")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N images of each split")
    p.add_argument("--cutout", type=non_negative_int, default=None,
                   help="Cutout size; 0 = off (default: the preset's: 16 for blockswap, else off)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data-loading worker processes")
    p.add_argument("--auto-augment", default=None, choices=("randaugment", "trivialaugment"),
                   help="ImageFolder data: torchvision transforms.v2 RandAugment or TrivialAugmentWide in training")
    p.add_argument("--mixup", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="timm Mixup's mixup_alpha on the student's batches (0 = off)")
    p.add_argument("--cutmix", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="timm Mixup's cutmix_alpha (0 = off; with --mixup, half the batches each)")
    p.add_argument("--label-smoothing", type=non_negative_float, default=0.0, metavar="E",
                   help="label smoothing of the (mixed) targets, in [0, 1)")
    p.add_argument("--ema", type=positive_float, default=None, metavar="DECAY",
                   help="keep an EMA of the student (timm ModelEmaV3, e.g. 0.999), validated each epoch")
    p.add_argument("--ema-export", action="store_true",
                   help="with --ema and --out: DIR/student.pt holds the EMA weights (default: the last ones)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="optimiser + lr schedule (default: moonshine; lit for --method lit)")
    p.add_argument("--lr", type=positive_float, default=None, help="initial lr (default: the preset's)")
    p.add_argument("--finetune-preset", default=None, choices=sorted(PRESETS),
                   help="--method lit: the KD fine-tune's preset (default lit-finetune, the paper's step schedule "
                        "from lr 0.01; --preset and --lr do not reach the fine-tune)")
    p.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="--method lit: the fine-tune's initial lr (default: its preset's)")
    p.add_argument("--train-stem-and-head", action="store_true",
                   help="--method lit: train the student's own stem and classifier (default, as lit-code: the "
                        "teacher's are copied in and frozen)")
    p.add_argument("--warm-start", type=non_negative_int, default=0, metavar="STEPS",
                   help="start from the teacher's weights (cheapen without re-initialisation) and first fit each "
                        "rewritten block to its teacher block for STEPS batches (fxswap.warm_start); 0 = off, the "
                        "student from scratch")
    p.add_argument("--teacher-checkpoint", default=None,
                   help="teacher weights: a state_dict, or a dict with 'student'/'model'/'state_dict'")
    p.add_argument("--train-teacher-epochs", type=non_negative_int, default=0,
                   help="without --teacher-checkpoint, first train the teacher this many epochs")
    p.add_argument("--teacher-preset", default="moonshine", choices=sorted(PRESETS))
    p.add_argument("--out", default=None,
                   help="folder for histories, checkpoints and the self-describing student.pt (made if missing)")
    p.add_argument("--csv", default=None, metavar="FILE", help="log one CSV row per epoch of the student's run to FILE")
    p.add_argument("--tensorboard", default=None, metavar="LOGDIR",
                   help="log the student's run as TensorBoard scalars to LOGDIR (needs: pip install tensorboard)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 autocast + channels_last where bf16 is native (CUDA, a CPU with "
                        "avx512_bf16 or amx_bf16), fp32 elsewhere; printed and recorded in the history")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="the older switch, wins over --precision when given: autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bars (without: one line per epoch)")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under torchrun on GPUs: the student's BatchNorm statistics over all processes")
    p.set_defaults(run=run_distill)


def build_student(teacher: nn.Module, text: str, num_classes: int, *, reinit: bool = True) -> tuple[nn.Module, str]:
    """The student ``--student`` names: ``cheapen(teacher, plan, reinit=reinit)`` or a model by name.

    >>> from fxswap import models
    >>> _, how = build_student(models.wrn(10, 1), "G(N/4)", 10)
    >>> how
    'cheapen(teacher, G(N/4))'
    """
    from ..surgery.rewrite import cheapen
    from ..surgery.spec import parse_spec

    plan = load_plan(text, "--student")
    if isinstance(plan, str):
        try:
            plan = parse_spec(plan)
        except SpecError as spec_error:
            try:
                return load_model(text, num_classes, "--student"), f"model {text}"
            except FxswapError as model_error:
                raise FxswapError(f"--student {text!r} is neither a block spec ({spec_error}) nor a model name "
                                  f"({model_error})") from None
    return cheapen(teacher, plan, reinit=reinit), f"cheapen(teacher, {text})"


def _method(text: str):
    """``--method``: a name, or a JSON losses dict checked term by term before any work."""
    from ..distillation.terms import get_term, term_options

    text = text.strip()
    if not text.startswith("{"):
        return text
    try:
        losses = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise FxswapError(f"--method looks like JSON but is not valid JSON: {e}") from None
    if not isinstance(losses, dict) or not losses:
        raise FxswapError('--method as JSON must be a non-empty dict of loss terms, e.g. {"at": 1000, "kd": 0.9}')
    for name, value in losses.items():
        term_options(get_term(name), value)
    return losses


def _device(text: str | None) -> str:
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise FxswapError(f"--device {text!r} is not a device; accepted: cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FxswapError(f"--device {text}: no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FxswapError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text


def _teacher_weights(args, teacher, train_loader, val_loader, out, common, say) -> None:
    from ..distillation import format_history, train

    if args.teacher_checkpoint:
        load_weights(teacher, args.teacher_checkpoint, "--teacher-checkpoint")
        say(f"teacher weights: {args.teacher_checkpoint}")
    elif args.train_teacher_epochs > 0:
        say(f"training the teacher for {args.train_teacher_epochs} epoch(s) (preset {args.teacher_preset})")
        t_hist = train(teacher, train_loader, val_loader, epochs=args.train_teacher_epochs,
                       preset=args.teacher_preset, out_dir=out / "teacher" if out else None, **common)
        say(format_history(t_hist))
    else:
        say("fxswap: warning: no --teacher-checkpoint and --train-teacher-epochs 0: the teacher is untrained "
              "(random weights), so distillation transfers noise", file=sys.stderr)


def _lit_only(args, method) -> None:
    """LIT's flags with another method: a clear error rather than a flag silently ignored."""
    for flag, given in (("--train-stem-and-head", args.train_stem_and_head),
                        ("--finetune-preset", args.finetune_preset is not None),
                        ("--finetune-lr", args.finetune_lr is not None)):
        if given and method != "lit":
            raise FxswapError(f"{flag} applies to --method lit only (got --method {args.method})")


def _warm_started(args, teacher, student, num_classes, train_loader, device, out, say=echo) -> nn.Module:
    """``--warm-start``: the student rebuilt from the now-trained teacher without re-initialisation, its
    rewritten blocks fitted to the teacher's (skipped when ``--resume`` finds a student checkpoint)."""
    from ..distillation.checkpoint import CHECKPOINT
    from ..distillation.warm_start import warm_start

    if args.resume and out is not None and (out / "student" / CHECKPOINT).is_file():
        say("--warm-start skipped: --resume continues the student's checkpoint")
        return student
    with forwarded_warnings():
        student, _ = build_student(teacher, args.student, num_classes, reinit=False)
    amp = args.amp if args.amp is not None else torch.device(device).type == "cuda"
    say(f"warm start: {args.warm_start} steps, each rewritten block fitted to its teacher block")
    report = warm_start(teacher, student, train_loader, steps=args.warm_start, device=device, amp=amp)
    say(str(report))
    return student


def _callbacks(args) -> list:
    """``--csv`` and ``--tensorboard`` as fit callbacks (TensorBoard's package is checked before any work)."""
    from ..distillation.callbacks import CSVLogger, TensorBoardLogger

    check_writable(args.csv, "--csv")
    callbacks: list = [CSVLogger(args.csv)] if args.csv else []
    if args.tensorboard:
        check_writable(args.tensorboard, "--tensorboard", is_file=False)
        tb = TensorBoardLogger(args.tensorboard)
        _ = tb.writer  # a missing tensorboard package is reported now, not after the first epoch
        callbacks.append(tb)
    return callbacks


_DATA_KINDS = {"npz": ".npz", "imagefolder": "ImageFolder", "cifar-folder": "torchvision CIFAR folder"}


def _save_student(args, student: nn.Module, num_classes: int, image_size: int, out: Path) -> Path | None:
    """``DIR/student.pt`` in :func:`fxswap.save_student`'s format; None (with a note) when the student
    cannot describe itself (a named student model without residual blocks)."""
    from ..io.student import save_student

    plan, model = load_plan(args.student, "--student"), args.teacher
    if isinstance(plan, str):
        try:
            from ..surgery.spec import parse_spec

            parse_spec(plan)
        except SpecError:  # a model name: the student is that model, unchanged ("S" everywhere)
            plan, model = "S", args.student
    path = out / "student.pt"
    try:
        with forwarded_warnings():
            save_student(student, path, model=model, plan=plan, input_shape=(3, image_size, image_size),
                         num_classes=num_classes)
    except FxswapError as exc:
        echo(f"note: {path} not written ({exc}); the weights alone are in {out / 'student'}")
        return None
    return path


def _regularisers(args) -> dict:
    """``fit``'s ``mixup=`` and ``ema=`` from the flags, checked before any work.

    >>> from fxswap.cli.main import build_parser
    >>> a = build_parser().parse_args(["distill", "--teacher", "t", "--student", "s", "--data", "d", "--mixup", "0.8"])
    >>> _regularisers(a)
    {'mixup': {'mixup_alpha': 0.8, 'cutmix_alpha': 0.0, 'label_smoothing': 0.0}, 'ema': None}
    """
    if args.label_smoothing >= 1:
        raise FxswapError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.ema is not None and not args.ema < 1:
        raise FxswapError(f"--ema is a decay in (0, 1), e.g. 0.999; got {args.ema}")
    if args.ema_export and (args.ema is None or not args.out):
        raise FxswapError("--ema-export writes the EMA weights to --out's student.pt: it needs --ema and --out")
    mixup = None
    if args.mixup or args.cutmix or args.label_smoothing:
        mixup = {"mixup_alpha": args.mixup, "cutmix_alpha": args.cutmix, "label_smoothing": args.label_smoothing}
    return {"mixup": mixup, "ema": args.ema}


def _make_run_folder(out: str | None) -> None:
    """``--out``: the run folder, made with its parents (``runs/g4`` when ``runs/`` does not exist yet).

    >>> import os, tempfile
    >>> root = tempfile.mkdtemp(); _make_run_folder(os.path.join(root, "runs", "g4"))
    >>> os.path.isdir(os.path.join(root, "runs", "g4"))
    True
    """
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FxswapError(f"--out {out}: is a file; give a folder for the run (made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FxswapError(f"--out {out}: cannot make the run folder: {exc.strerror or exc}") from None


def run_distill(args: argparse.Namespace) -> int:
    """Run ``fxswap distill`` with parsed ``args``; prints the history table; returns the exit code."""
    from ..data.datasets import data_kind, make_loaders
    from ..distillation import distill, evaluate, format_history
    from ..distillation.checkpoint import STUDENT
    from ..distillation.history import percent
    from ..distillation.presets import get_preset

    if args.resume and not args.out:
        raise FxswapError("--resume needs --out (the folder of the run to continue)")
    regularisers = _regularisers(args)
    _make_run_folder(args.out)
    method = _method(args.method)
    preset = args.preset or ("lit" if method == "lit" else "moonshine")
    _lit_only(args, method)
    chosen = get_preset(preset)
    epochs = args.epochs if args.epochs is not None else chosen.paper_epochs
    # the preset is the paper's recipe: its batch and Cutout come with it unless asked otherwise
    batch_size = args.batch_size if args.batch_size is not None else chosen.batch_size
    cutout = args.cutout if args.cutout is not None else chosen.cutout
    out = Path(args.out) if args.out else None
    device = _device(args.device)
    where = join(None, torch.device(device))  # torchrun: one process per GPU (cuda:LOCAL_RANK), gloo on CPU
    if where.world > 1 and torch.device(device).type == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    say = echo if where.writer else _silent  # one writer: rank 0 prints, the others train

    callbacks = _callbacks(args) if where.writer else []  # rank 0's run is the one logged
    kind = data_kind(args.data)
    train_loader, val_loader = make_loaders(args.data, image_size=args.image_size, dataset=args.dataset,
                                            batch_size=batch_size, num_workers=args.workers,
                                            cutout=cutout, limit=args.limit, device=device, seed=args.seed,
                                            auto_augment=args.auto_augment)
    image_size = (args.image_size or 224) if kind == "imagefolder" else 32
    num_classes = train_loader.dataset.num_classes
    torch.manual_seed(args.seed)
    teacher = load_model(args.teacher, num_classes, "--teacher")
    with forwarded_warnings():
        student, how = build_student(teacher, args.student, num_classes)
    if args.warm_start and not how.startswith("cheapen"):
        raise FxswapError(f"--warm-start fits the blocks cheapen rewrote, so --student must be a spec or plan; "
                          f"got the model {args.student!r}")
    say(f"data: {args.data} ({_DATA_KINDS[kind]}, {image_size}x{image_size}): {len(train_loader.dataset)} train / "
         f"{len(val_loader.dataset)} val images, {num_classes} classes; device {device}")
    say(f"teacher: {args.teacher}, {param_count(teacher):,} parameters")
    say(f"student: {how}, {param_count(student):,} parameters ({param_count(student) / param_count(teacher):.1%} of the teacher)")

    if args.amp is None:
        from ..distillation.evaluation import resolve_device
        from ..precision import resolve_precision

        say(f"precision: {resolve_precision(args.precision, resolve_device(device)).describe()}")
    else:
        say(f"precision: {'autocast' if args.amp else 'fp32'} (--{'' if args.amp else 'no-'}amp)")
    common = dict(device=device, precision=args.precision, amp=args.amp, seed=args.seed, progress=args.progress, resume=args.resume,
                  on_epoch=None if args.progress else _print_epoch)
    common["sync_batchnorm"] = args.sync_batchnorm
    with noted_warnings():
        _teacher_weights(args, teacher, train_loader, val_loader, out, common, say)
    common["callbacks"] = callbacks  # the student's run only, as are mixup and the EMA
    common.update(regularisers)
    if where.writer:
        t_eval = evaluate(teacher.to(device), val_loader, device, amp=args.amp)
        say(f"teacher val: loss {t_eval['loss']:.4f}, acc {percent(t_eval['acc'])}")
    if args.warm_start:
        student = _warm_started(args, teacher, student, num_classes, train_loader, device, out, say)
        s_eval = evaluate(student, val_loader, device, amp=args.amp)
        say(f"student val after the warm start: loss {s_eval['loss']:.4f}, acc {percent(s_eval['acc'])}")

    label = method if isinstance(method, str) else json.dumps(method)
    say(f"distilling with {label} for {epochs} epoch(s), preset {preset} (batch {batch_size}, "
         f"Cutout {cutout or 'off'})")
    if method == "lit":
        common["train_stem_and_head"] = args.train_stem_and_head
        common.update({k: v for k, v in (("finetune_preset", args.finetune_preset),
                                         ("finetune_lr", args.finetune_lr)) if v is not None})
    with noted_warnings():  # --resume's notes (no checkpoint yet, a new lr) as one line each, as they happen
        history = distill(teacher, student, train_loader, val_loader, method=method, epochs=epochs,
                          finetune_epochs=args.finetune_epochs, preset=preset, lr=args.lr,
                          out_dir=out / "student" if out else None, **common)
    for cb in callbacks:
        cb.close()
    say(format_history(history))
    if args.csv:
        say(f"per-epoch log: {args.csv}")
    if out and where.writer:
        if args.ema_export:
            from ..distillation.checkpoint import EMA_STUDENT

            student.load_state_dict(torch.load(out / "student" / EMA_STUDENT, map_location="cpu", weights_only=True))
            say(f"--ema-export: {out / 'student.pt'} holds the EMA of the student")
        saved = _save_student(args, student, num_classes, image_size, out)
        if saved is not None:
            say(f"history and checkpoints in {out / 'student'}; the student, which fxswap.load_student rebuilds "
                f"and fxswap export reads, is in {saved}")
        else:
            say(f"history and checkpoints in {out / 'student'}; the student's bare state_dict is in "
                f"{out / 'student' / STUDENT}")
    return 0


def _silent(*args, **kwargs) -> None:
    """What a rank other than 0 prints: nothing."""


def _print_epoch(row: dict) -> None:
    """Without progress bars, one line per epoch (flushed, for logs)."""
    from ..distillation.history import epoch_summary

    echo(epoch_summary(row))
    sys.stdout.flush()
