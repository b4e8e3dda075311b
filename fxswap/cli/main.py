"""The ``fxswap`` command: one parser, one dispatch, one exit-code contract.

Exit status: 0 done, 2 bad input (one ``fxswap: error: ...`` line saying what
was wrong and what is accepted), 1 any other failure (one line; set
``FXSWAP_TRACEBACK=1`` for the traceback).

>>> build_parser().parse_args(["cheapen", "wrn-16-1", "G(N/4)"]).spec
'G(N/4)'
"""
from __future__ import annotations

import os
import sys

from ..errors import FxswapError
from . import cheapen, distill, plot, search, ship
from .common import CliParser, model_parent

__all__ = ["main", "build_parser"]

COMMAND_GROUPS = (cheapen, search, distill, ship, plot)


def build_parser() -> CliParser:
    """The ``fxswap`` parser: each command group adds its sub-commands, sharing the model parent parser.

    >>> sorted(build_parser().parse_args(["blocks", "resnet-20"]).__dict__)
    ['command', 'input', 'json', 'model', 'num_classes', 'pretrained', 'run', 'weights']
    """
    parser = CliParser(prog="fxswap", description="Cheapen the residual blocks of a CNN with torch.fx.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    model = model_parent()
    for group in COMMAND_GROUPS:
        group.add_parsers(sub, model)
    return parser


def _version() -> str:
    import torch

    from ..version import __version__

    return f"fxswap {__version__} (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fxswap`` command (also ``python -m fxswap``); returns the exit status.

    >>> main(["blocks", "wrn-16-1"])  # doctest: +ELLIPSIS
    block     stage  in  out  stride  k  convs  order    shortcut
    ...
    0
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a bad argument (2, already reported)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.run(args)
    except FxswapError as exc:
        print(f"fxswap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fxswap: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: one line, status 1; the traceback on request
        if os.environ.get("FXSWAP_TRACEBACK"):
            raise
        print(f"fxswap: failed: {type(exc).__name__}: {exc} (FXSWAP_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
