"""``fxswap`` on the command line: a thin layer over the API.

    fxswap blocks  MODEL                 the residual blocks found
    fxswap cheapen MODEL SPEC|PLAN.json  before/after table + a forward check
    fxswap count   MODEL                 params and MACs per block
    fxswap search  MODEL --budget 400k   BlockSwap: the best mixed-block plan under a budget
    fxswap distill --teacher T --student S --method at --data PATH

MODEL is ``wrn-40-2``, ``resnet-20`` (CIFAR), a timm name (``resnet26d``) or a
torchvision name (``tv:resnet18``); see :func:`fxswap.models.create_model`.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from .accounting import compare, count
from .blocks import find_blocks
from .errors import FxswapError
from .models.registry import create_model, default_input_shape
from .rewrite import cheapen

__all__ = ["main"]


def _shape(text: str | None, model) -> tuple[int, ...]:
    if not text:
        return default_input_shape(model)
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise FxswapError(f"--input must look like 3,32,32 (C,H,W), got {text!r}") from None
    if len(shape) != 3:
        raise FxswapError(f"--input must have three numbers C,H,W, got {text!r}")
    return shape


def _plan(text: str):
    path = Path(text)
    if text.endswith(".json") and path.exists():
        data = json.loads(path.read_text())
        return data.get("plan", data) if isinstance(data, dict) else data
    return text


def _blocks_table(blocks) -> str:
    from .accounting import _render

    rows = [(b.name, b.stage, b.in_channels, b.out_channels, b.stride, b.kernel_size, len(b.convs), b.order, b.shortcut)
            for b in blocks]
    return _render(["block", "stage", "in", "out", "stride", "k", "convs", "order", "shortcut"], rows)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fxswap`` command (also ``python -m fxswap``).

    >>> main(["blocks", "wrn-16-1"])  # doctest: +ELLIPSIS
    block     stage  in  out  stride  k  convs  order    shortcut
    ...
    0
    """
    parser = argparse.ArgumentParser(prog="fxswap", description="Cheapen the residual blocks of a CNN with torch.fx.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_blocks = sub.add_parser("blocks", help="list the residual blocks found")
    p_cheapen = sub.add_parser("cheapen", help="rewrite blocks by a spec or plan and compare costs")
    p_cheapen.add_argument("spec", help='a spec ("G(N/4)"), a JSON dict {"glob": "spec"}, or a plan .json file')
    p_cheapen.add_argument("--save", help="save the student's state_dict to this path")
    p_count = sub.add_parser("count", help="parameters and MACs per block")
    for p in (p_blocks, p_cheapen, p_count):
        p.add_argument("model", help="wrn-40-2, resnet-20, a timm name or tv:<torchvision name>")
        p.add_argument("--num-classes", type=int, default=None)
        p.add_argument("--input", default=None, help="input shape C,H,W (default: the model's)")
    from .cli_distill import add_distill_parser
    from .cli_search import add_search_parser

    add_search_parser(sub)
    add_distill_parser(sub)
    # put positional 'model' before 'spec' for cheapen
    p_cheapen._actions.sort(key=lambda a: {"model": 0, "spec": 1}.get(a.dest, 2))
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except FxswapError as exc:
        print(f"fxswap: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "search":
        from .cli_search import run_search

        return run_search(args)
    if args.command == "distill":
        from .cli_distill import run_distill

        return run_distill(args)
    model = create_model(args.model, args.num_classes)
    shape = _shape(args.input, model)
    if args.command == "blocks":
        print(_blocks_table(find_blocks(model)))
        return 0
    if args.command == "count":
        print(count(model, shape).table())
        return 0
    spec = _plan(args.spec)
    if isinstance(spec, str) and spec.strip().startswith("{"):
        spec = json.loads(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = cheapen(model, spec)
    for w in caught:
        print(f"fxswap: warning: {w.message}", file=sys.stderr)
    print(_blocks_table(find_blocks(model)))
    print()
    print(compare(model, student, shape).table())
    student.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape)
        out_t, out_s = model.eval()(x), student(x)
    print(f"\nforward check: input {tuple(x.shape)} -> teacher {tuple(out_t.shape)}, student {tuple(out_s.shape)}: "
          f"{'OK' if out_t.shape == out_s.shape else 'SHAPE MISMATCH'}")
    if args.save:
        torch.save(student.state_dict(), args.save)
        print(f"saved the student's state_dict to {args.save}")
    return 0 if out_t.shape == out_s.shape else 1
