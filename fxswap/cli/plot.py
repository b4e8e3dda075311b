"""``fxswap plot``: a search's Pareto front or a run's training curves, drawn to a PNG (matplotlib).

    fxswap search wrn-40-2 --budget 400k --out search.json
    fxswap plot search.json                       # search.png: Fisher potential vs params / MACs / latency
    fxswap distill ... --out runs/g4
    fxswap plot runs/g4/student/history.jsonl --out curves.png   # loss terms and error per epoch

Needs matplotlib: ``pip install matplotlib`` (in a checkout: ``pip install -e '.[plot]'``).
See :mod:`fxswap.integrations.plotting`.

>>> from fxswap.cli.main import build_parser
>>> build_parser().parse_args(["plot", "search.json", "--out", "front.png"]).out
'front.png'
"""
from __future__ import annotations

import argparse

from .common import check_writable, echo

__all__ = ["add_parsers", "run_plot"]


def add_parsers(subparsers, model: argparse.ArgumentParser | None = None) -> None:
    """Add ``plot`` to ``subparsers`` (it reads a result file, so it takes no model parent parser)."""
    p = subparsers.add_parser("plot", help="draw a search's Pareto front or a run's training curves (PNG)",
                              description=__doc__.split(">>>")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a search result .json (fxswap search --out), a history.jsonl, or a run folder")
    p.add_argument("--out", default=None, help="the image to write (default: FILE with the suffix .png)")
    p.add_argument("--metrics", default=None,
                   help="search only: the costs to plot, comma-separated (params,macs,latency; default: all present)")
    p.set_defaults(run=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    """``fxswap plot``: check the output path, draw, say where the image is."""
    from pathlib import Path

    from ..errors import FxswapError
    from ..integrations.plotting import plot, plot_search

    check_writable(args.out, "--out")
    if args.metrics:
        if Path(args.file).suffix.lower() != ".json":
            raise FxswapError("--metrics applies to a search result .json only")
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        out = plot_search(args.file, args.out or Path(args.file).with_suffix(".png"), metrics)
    else:
        out = plot(args.file, args.out)
    echo(f"wrote {out}")
    return 0
