"""``fxswap export``: a saved student to ``torch.export`` (.pt2) or ONNX, checked against PyTorch.

    fxswap cheapen wrn-16-2 "G(N/4)" --save student.pt
    fxswap export student.pt student.pt2            # or student.onnx (pip install -e '.[onnx]' in a checkout)

The student file is one written by ``fxswap cheapen --save`` or
``fxswap.save_student``: its record says how to rebuild it and which input it
takes. The batch dimension is dynamic (``--static-batch`` fixes it at
``--batch``); the exported file is loaded back and compared with the PyTorch
outputs at ``--batch`` and ``--batch`` + 2; a difference above ``--atol`` exits 1.
A student whose code fixes its batch size is exported static, with a note
saying why; an ONNX file over 2 GB keeps its weights in ``OUT.data`` beside it
(the output names every file written).

>>> from fxswap.cli.main import build_parser
>>> build_parser().parse_args(["export", "s.pt", "s.onnx", "--batch", "4"]).batch
4
"""
from __future__ import annotations

import argparse

from .common import check_writable, echo, parse_shape, positive_float, positive_int, print_json

__all__ = ["add_parsers"]


def add_parsers(subparsers, model: argparse.ArgumentParser) -> None:
    """Add ``export`` to ``subparsers`` (it reads a saved student, so it does not take the model parent parser)."""
    p = subparsers.add_parser("export", help="export a saved student to .pt2 (torch.export) or .onnx, checked",
                              description=__doc__.split(">>>")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", help="a student saved by 'fxswap cheapen --save' or fxswap.save_student")
    p.add_argument("out", help="the file to write: .pt2 or .onnx")
    p.add_argument("--format", choices=["pt2", "onnx"], default=None, help="default: from the suffix of OUT")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size of the example input (default 1)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size at --batch (default: any batch size, checked at two)")
    p.add_argument("--input", default=None, help="input shape C,H,W (default: the one in the student's record)")
    p.add_argument("--atol", type=positive_float, default=1e-4, help="largest accepted |exported - PyTorch|")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    """``fxswap export``: rebuild the student from its record, export, check, report."""
    import torch

    from ..errors import FxswapError
    from ..io.export import export
    from ..io.student import load_student, read_record

    check_writable(args.out, "out")
    record = read_record(args.student)
    student = load_student(args.student)
    if args.input:
        shape = parse_shape(args.input, student)
    elif record.get("input_shape"):
        shape = tuple(record["input_shape"])
    else:
        shape = parse_shape(None, student)
    x = torch.randn(args.batch, *shape)
    try:
        result = export(student, x, args.out, args.format, atol=args.atol, dynamic_batch=not args.static_batch)
    except FxswapError as exc:
        if "differs from PyTorch" in str(exc):  # the export ran but is wrong: a failure, not bad input
            echo(f"fxswap: failed: {exc}")
            return 1
        raise
    if args.json:
        print_json(result.to_dict())
    else:
        echo(str(result))
    return 0
