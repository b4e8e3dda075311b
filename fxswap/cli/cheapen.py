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

from .common import check_writable, echo, forwarded_warnings, load_model, load_plan, parse_shape

__all__ = ["add_parsers", "blocks_table"]


def add_parsers(subparsers, model: argparse.ArgumentParser) -> None:
    """Add ``blocks``, ``count`` and ``cheapen`` to ``subparsers``; ``model`` is the shared model parent parser."""
    p = subparsers.add_parser("blocks", parents=[model], help="list the residual blocks found")
    p.set_defaults(run=run_blocks)
    p = subparsers.add_parser("count", parents=[model], help="parameters and MACs per block")
    p.set_defaults(run=run_count)
    p = subparsers.add_parser("cheapen", parents=[model], help="rewrite blocks by a spec or plan and compare costs")
    p.add_argument("spec", help='a spec ("G(N/4)"), a JSON dict {"glob": "spec"}, or a plan .json file')
    p.add_argument("--save", help="save the student's state_dict to this path")
    p.set_defaults(run=run_cheapen)


def blocks_table(blocks) -> str:
    """One row per :class:`fxswap.Block`: stage, channels, stride, kernel, convs, order, shortcut.

    >>> from fxswap import find_blocks, models
    >>> print(blocks_table(find_blocks(models.wrn(10, 1))).splitlines()[0])
    block     stage  in  out  stride  k  convs  order    shortcut
    """
    from ..accounting import _render

    rows = [(b.name, b.stage, b.in_channels, b.out_channels, b.stride, b.kernel_size, len(b.convs), b.order, b.shortcut)
            for b in blocks]
    return _render(["block", "stage", "in", "out", "stride", "k", "convs", "order", "shortcut"], rows)


def run_blocks(args: argparse.Namespace) -> int:
    """``fxswap blocks``: print the residual blocks of the model."""
    from ..blocks import find_blocks

    echo(blocks_table(find_blocks(load_model(args.model, args.num_classes))))
    return 0


def run_count(args: argparse.Namespace) -> int:
    """``fxswap count``: print parameters and MACs per block."""
    from ..accounting import count

    model = load_model(args.model, args.num_classes)
    echo(count(model, parse_shape(args.input, model)).table())
    return 0


def run_cheapen(args: argparse.Namespace) -> int:
    """``fxswap cheapen``: rewrite, save (first), then print both tables and a forward check."""
    from ..accounting import compare
    from ..blocks import find_blocks
    from ..rewrite import cheapen

    check_writable(args.save, "--save")
    model = load_model(args.model, args.num_classes)
    shape = parse_shape(args.input, model)
    plan = load_plan(args.spec)
    with forwarded_warnings():
        student = cheapen(model, plan)
    if args.save:
        torch.save(student.state_dict(), args.save)
    student.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape)
        out_t, out_s = model.eval()(x), student(x)
    echo(blocks_table(find_blocks(model)))
    echo()
    echo(compare(model, student, shape).table())
    echo(f"\nforward check: input {tuple(x.shape)} -> teacher {tuple(out_t.shape)}, student {tuple(out_s.shape)}: "
         f"{'OK' if out_t.shape == out_s.shape else 'SHAPE MISMATCH'}")
    if args.save:
        echo(f"saved the student's state_dict to {args.save}")
    return 0 if out_t.shape == out_s.shape else 1
