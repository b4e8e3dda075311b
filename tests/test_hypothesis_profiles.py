"""The hypothesis profiles of tests/conftest.py do what README's "Testing" section says."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conftest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(conftest.PROFILE != "ci", reason="checks the default profile")
def test_ci_profile_is_derandomised_and_keeps_no_database():
    assert settings.default.derandomize is True
    assert settings.default.database is None


def test_hypothesis_writes_nothing_into_the_checkout():
    storage = Path(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"]).resolve()
    assert ROOT not in storage.parents and storage != ROOT


def test_nightly_profile_runs_1000_examples_even_where_a_test_asks_for_fewer(monkeypatch):
    assert settings.get_profile("nightly").max_examples >= 1000
    calls = []

    @settings(max_examples=5, database=None)
    @given(st.integers())
    def prop(n):
        calls.append(n)

    monkeypatch.setattr(conftest, "PROFILE", "nightly")
    conftest.pytest_collection_modifyitems(None, [SimpleNamespace(obj=prop, nodeid="prop")])
    prop()
    assert len(calls) >= 1000


def test_an_unknown_profile_is_refused(monkeypatch):
    import importlib

    monkeypatch.setenv("HYPOTHESIS_PROFILE", "weekly")
    with pytest.raises(RuntimeError, match="accepted profiles are ci, nightly"):
        importlib.reload(conftest)
    monkeypatch.undo()  # the environment the suite started with...
    importlib.reload(conftest)  # ...and so its profile again
