"""Fuzz every input surface with N cases and count the outcomes: ok / clear error / raw exception.

The cases are those of :mod:`fuzzing` (tests/fuzzing.py) (the test suite runs a few dozen of
each): ``npz`` data files, ``plan-json`` plan files, ``cli`` argv. Case ``i`` of a
surface is drawn from ``random.Random(seed * 1_000_003 + i)``, so a count is
reproducible and a raw exception can be replayed from its index. Raw
exceptions are listed (grouped by message) after the table.

    python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--surface npz --surface cli]
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness lives beside the tests
from fuzzing import OUTCOMES, SURFACES, outcome  # noqa: E402


def fuzz(name: str, cases: int, seed: int) -> tuple[collections.Counter, dict[str, list[int]], float]:
    surface = SURFACES[name]
    counts: collections.Counter = collections.Counter()
    raws: dict[str, list[int]] = collections.defaultdict(list)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fuzzed inputs warn a lot; the outcome is what is counted
        for i in range(cases):
            case = surface.make(random.Random(seed * 1_000_003 + i), Path(folder))
            kind, detail = outcome(surface, case)
            counts[kind] += 1
            if kind == "raw exception":
                raws[detail.splitlines()[-1][:160]].append(i)
    return counts, raws, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="cases per surface")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--surface", action="append", choices=sorted(SURFACES), help="default: all")
    args = parser.parse_args()
    names = args.surface or list(SURFACES)
    rows, all_raws = [], {}
    for name in names:
        counts, raws, seconds = fuzz(name, args.cases, args.seed)
        rows.append((name, *(counts[k] for k in OUTCOMES), seconds))
        all_raws[name] = raws
        print(f"{name}: {dict(counts)} in {seconds:.0f} s", file=sys.stderr)
    print(f"| surface | cases | {' | '.join(OUTCOMES)} | seconds |")
    print("|---|---:|" + "---:|" * len(OUTCOMES) + "---:|")
    for name, *counts, seconds in rows:
        print(f"| {name} | {sum(counts)} | {' | '.join(str(c) for c in counts)} | {seconds:.0f} |")
    for name, raws in all_raws.items():
        for message, indices in sorted(raws.items(), key=lambda kv: -len(kv[1])):
            print(f"\n{name}: {len(indices)} x {message}\n  cases {indices[:10]}")
    return 1 if any(all_raws.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
