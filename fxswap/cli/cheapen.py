"""``fxswap blocks | count | cheapen``: look at one model's blocks and rewrite them.

    fxswap blocks  MODEL                 the residual blocks found
    fxswap count   MODEL                 params and MACs per block
    fxswap cheapen MODEL SPEC|PLAN.json  before/after table + a forward check

>>> from fxswap.cli import main
>>> main(["count", "wrn-10-1"])  # doctest: +ELLIPSIS
block ...
0
"""
from __future__ import annotations

import argparse

import torch

from .common import (check_writable, echo, forwarded_warnings, load_plan, model_from_args, parse_shape, positive_int,
                     print_json)

__all__ = ["add_parsers", "blocks_table"]


def add_parsers(subparsers, model: argparse.ArgumentParser) -> None:
    """Add ``blocks``, ``count`` and ``cheapen`` to ``subparsers``; ``model`` is the shared model parent parser."""
    p = subparsers.add_parser("blocks", parents=[model], help="list the residual blocks found")
    _add_json(p)
    p.set_defaults(run=run_blocks)
    p = subparsers.add_parser("count", parents=[model], help="parameters and MACs per block")
    _add_json(p)
    _add_latency(p)
    p.set_defaults(run=run_count)
    p = subparsers.add_parser("cheapen", parents=[model], help="rewrite blocks by a spec or plan and compare costs")
    p.add_argument("spec", help='a spec ("G(N/4)"), a JSON dict {"glob": "spec"}, or a plan .json file')
    p.add_argument("--save", help="save the student with the record that rebuilds it (fxswap.load_student reads it)")
    p.add_argument("--allow-larger", action="store_true",
                   help="accept blocks the spec makes larger than the teacher's (cheapen's allow_larger=True); "
                        "without it a plan naming such a block is refused and a whole-model spec keeps it")
    _add_json(p)
    _add_latency(p)
    p.set_defaults(run=run_cheapen)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")


def _add_latency(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency", action="store_true",
                   help="also measure latency (torch.utils.benchmark: median and IQR, per block and total)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size for --latency (default 1)")
    p.add_argument("--device", default="cpu", help="device for --latency (default cpu)")


def _block_dict(b) -> dict:
    return {"name": b.name, "stage": b.stage, "in_channels": b.in_channels, "out_channels": b.out_channels,
            "stride": b.stride, "kernel_size": b.kernel_size, "convs": list(b.convs), "order": b.order,
            "shortcut": b.shortcut}


def blocks_table(blocks) -> str:
    """One row per :class:`fxswap.Block`: stage, channels, stride, kernel, convs, order, shortcut.

    >>> from fxswap import find_blocks, models
    >>> print(blocks_table(find_blocks(models.wrn(10, 1))).splitlines()[0])
    block     stage  in  out  stride  k  convs  order    shortcut
    """
    from ..metrics.table import render_table

    rows = [(b.name, b.stage, b.in_channels, b.out_channels, b.stride, b.kernel_size, len(b.convs), b.order, b.shortcut)
            for b in blocks]
    return render_table(["block", "stage", "in", "out", "stride", "k", "convs", "order", "shortcut"], rows)


def run_blocks(args: argparse.Namespace) -> int:
    """``fxswap blocks``: print the residual blocks of the model."""
    from ..blocks.block import find_blocks

    blocks = find_blocks(model_from_args(args))
    if args.json:
        print_json({"blocks": [_block_dict(b) for b in blocks]})
    else:
        echo(blocks_table(blocks))
    return 0


def run_count(args: argparse.Namespace) -> int:
    """``fxswap count``: print parameters and MACs per block."""
    from ..metrics.counting import count
    from ..metrics.latency import latency

    model = model_from_args(args)
    shape = parse_shape(args.input, model)
    report = count(model, shape)
    timed = latency(model, shape, args.device, args.batch) if args.latency else None
    if args.json:
        print_json({"count": report.to_dict(), **({"latency": timed.to_dict()} if timed else {})})
        return 0
    echo(report.table())
    if timed:
        echo()
        echo(timed.table())
    return 0


def run_cheapen(args: argparse.Namespace) -> int:
    """``fxswap cheapen``: rewrite, save (first), then print both tables and a forward check."""
    from ..metrics.counting import compare
    from ..blocks.block import find_blocks
    from ..surgery.rewrite import cheapen

    from ..io.student import save_student

    check_writable(args.save, "--save")
    model = model_from_args(args)
    shape = parse_shape(args.input, model)
    plan = load_plan(args.spec)
    with forwarded_warnings():
        student = cheapen(model, plan, allow_larger=args.allow_larger)
    if args.save:  # the record cheapen left on the student says what to rebuild (blocks kept included)
        save_student(student, args.save, model=args.model, input_shape=shape, num_classes=args.num_classes)
    student.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape)
        out_t, out_s = model.eval()(x), student(x)
    ok = out_t.shape == out_s.shape
    comparison = compare(model, student, shape, latency=args.latency, device=args.device, batch=args.batch)
    if args.json:
        print_json({"blocks": [_block_dict(b) for b in find_blocks(model)], "comparison": comparison.to_dict(),
                    "forward_check": {"input": list(x.shape), "teacher": list(out_t.shape),
                                      "student": list(out_s.shape), "ok": ok},
                    "saved": args.save})
        return 0 if ok else 1
    echo(blocks_table(find_blocks(model)))
    echo()
    echo(comparison.table())
    echo(f"\nforward check: input {tuple(x.shape)} -> teacher {tuple(out_t.shape)}, student {tuple(out_s.shape)}: "
         f"{'OK' if ok else 'SHAPE MISMATCH'}")
    if args.save:
        echo(f"saved the student and its record to {args.save} (load it with fxswap.load_student)")
    return 0 if ok else 1
