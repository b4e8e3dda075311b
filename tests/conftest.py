"""Hypothesis profiles for the suite, chosen with the ``HYPOTHESIS_PROFILE`` environment variable.

* ``ci`` (the default): derandomised, so a run is reproducible and a failure
  seen once is seen again; no example database, and hypothesis' scratch files
  go to the system temp folder, so no ``.hypothesis/`` folder appears in the
  checkout.
* ``nightly``: at least ``NIGHTLY_EXAMPLES`` examples for *every* property,
  including those whose ``@settings`` name a smaller ``max_examples`` for the
  quick run; random (not derandomised), so each night explores new inputs.
  Run it as ``HYPOTHESIS_PROFILE=nightly python -m pytest -q -p no:cacheprovider``.
"""
from __future__ import annotations

import os
import tempfile
import warnings

# Read lazily by hypothesis at its first write; set before any test runs so the
# charmap cache and friends never land in the working tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "fxswap-hypothesis"))

from hypothesis import HealthCheck, settings  # noqa: E402

NIGHTLY_EXAMPLES = 1000
PROFILES = ("ci", "nightly")

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile(
    "nightly",
    max_examples=NIGHTLY_EXAMPLES,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise RuntimeError(f"HYPOTHESIS_PROFILE={PROFILE!r}: accepted profiles are {', '.join(PROFILES)}")
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(config, items):
    """Under ``nightly``, raise every property's ``max_examples`` to at least ``NIGHTLY_EXAMPLES``.

    A test's own ``@settings(max_examples=40)`` overrides any profile, so the
    profile alone would leave the quick-run sizes in place. Hypothesis reads the
    wrapped test's settings when it is called, so they are replaced here.
    """
    if PROFILE != "nightly":
        return
    for item in items:
        test = getattr(item, "obj", None)
        test = getattr(test, "__func__", test)  # methods: the function holds the settings
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is None:
            continue
        try:
            test._hypothesis_internal_use_settings = settings(
                own, max_examples=max(own.max_examples, NIGHTLY_EXAMPLES), deadline=None
            )
        except AttributeError:  # an object that refuses attributes
            warnings.warn(f"nightly profile: could not raise max_examples of {item.nodeid}", stacklevel=1)
