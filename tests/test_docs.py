"""Every public docstring example runs."""
import doctest
import importlib
import pkgutil

import pytest

import fxswap

MODULES = sorted(m.name for m in pkgutil.walk_packages(fxswap.__path__, "fxswap.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
