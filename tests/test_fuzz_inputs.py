"""Fuzz targets, one per input surface (issue 12): each input works or fails clearly.

Small here (the ``ci`` profile); ``HYPOTHESIS_PROFILE=nightly`` runs each with
1,000 cases, and ``benchmarks/fuzz.py`` counts the outcomes. The cases come from
:mod:`fuzzing` (tests/fuzzing.py), drawn from a seeded ``random.Random``.

Inputs that once ended in a raw exception are pinned in ``REGRESSIONS``, one
each, and must now be clear errors; the fuzz itself tolerates no raw exception.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxswap
from fuzzing import SURFACES, Surface, outcome

# the raw failure each input once gave -> (surface, the input, what it was)
REGRESSIONS = {
    r"Exceeds the limit \(\d+ digits\) for integer string conversion": (
        "plan-json", '{"*": "G(' + "9" * 5000 + ')"}', "huge integers in specs: spec.py, fixed on branch models"),
    r"RecursionError": (
        "plan", "nested",  # JSON nested just under json's own limit: the window depends on the stack, so pinned as a dict
        "a {'plan': {'plan': ...}} nested ~1000 deep recurses in rewrite.resolve_plan: branch models"),
    r"expected input\[.*\] to have \d+ channels": (
        "cli", ["cheapen", "wrn-10-1", "S", "--input", "1,32,32"],
        "--input with the wrong channel count exits 1, not 2: cli/, branch structure"),
    r"Is a directory": (
        "cli", ["cheapen", "wrn-10-1", "S", "--save", "{folder}"],
        "--save/--out naming a folder exits 1, not 2: cli/, branch structure"),
}

SIZES = {"npz": 60, "plan-json": 25, "cli": 12}
# the properties are built inside the test (one per surface), out of reach of the
# conftest's nightly hook, so they read the profile's size themselves
NIGHTLY = settings.default.max_examples >= 1000


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_every_fuzz_input_works_or_fails_clearly(surface, tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp(f"fuzz-{surface}")
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    seen = {"ok": 0, "clear error": 0}

    @settings(max_examples=settings.default.max_examples if NIGHTLY else SIZES[surface], deadline=None, suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed):
        case = SURFACES[surface].make(random.Random(seed), folder)
        kind, detail = outcome(SURFACES[surface], case)
        assert kind != "raw exception", f"{surface} case {case!r}: {detail}"
        if kind in seen:
            seen[kind] += 1

    check()
    assert seen["clear error"] > 0  # the fuzz does reach the error paths
    assert list(cwd.iterdir()) == []  # nothing was written where the user stands


@pytest.mark.parametrize("pattern", list(REGRESSIONS), ids=["huge-int-spec", "nested-plan", "input-channels", "save-to-folder"])
def test_once_raw_failures_are_clear_errors(pattern, tmp_path):
    surface, case, reason = REGRESSIONS[pattern]
    if surface == "plan":
        nested = "G(2)"
        for _ in range(5000):
            nested = {"plan": nested}
        runner = Surface("plan", lambda r, f: None, lambda _: fxswap.cheapen(fxswap.models.wrn(10, 1), nested))
    elif surface == "plan-json":
        runner, case = SURFACES[surface], tmp_path / "plan.json"
        case.write_text(REGRESSIONS[pattern][1])
    else:
        runner, case = SURFACES[surface], [a.format(folder=tmp_path) for a in case]
    kind, detail = outcome(runner, case)
    assert kind == "clear error", f"{reason}: {kind}: {detail}"


def test_the_npz_fuzz_reaches_working_files(tmp_path):
    kinds = [outcome(SURFACES["npz"], SURFACES["npz"].make(random.Random(s), tmp_path))[0] for s in range(40)]
    assert kinds.count("ok") >= 2 and kinds.count("clear error") >= 10 and "raw exception" not in kinds


def test_cli_cases_write_nothing_where_the_user_stands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["search", "wrn-10-1", "--budget", "60%", "--samples", "1", "--batch-size", "4", "--no-macs",
            "--no-progress"]  # no --out: search writes blockswap-wrn-10-1-60.json into the working folder
    assert outcome(SURFACES["cli"], argv)[0] == "ok"
    assert list(tmp_path.iterdir()) == []
