"""Old import paths, kept for one release (issue 21 moved the flat modules into folders).

``import fxswap.rewrite`` (and every other module path of fxswap 0.1's flat
layout) still works: a finder on ``sys.meta_path`` answers for the old name
with the module that now holds the code, after a :class:`DeprecationWarning`
that names the new path. The old module *is* the new one (one object), so
attributes set on either are seen by both. ``fxswap.trace`` and
``fxswap.blockswap`` are functions as well as old module names: their modules
are registered without a warning, because importing them afresh would
replace the functions on the package.

>>> import warnings, importlib
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     old = importlib.import_module("fxswap.accounting")
>>> old is importlib.import_module("fxswap.metrics.counting"), caught[0].category.__name__
(True, 'DeprecationWarning')
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

__all__ = ["OLD_PATHS", "OLD_NAMES", "install", "old_name"]

#: old module path → where it lives now
OLD_PATHS = {
    "fxswap.accounting": "fxswap.metrics.counting",
    "fxswap.timing": "fxswap.metrics.latency",
    "fxswap.costs": "fxswap.search.costs",
    "fxswap.fisher": "fxswap.search.fisher",
    "fxswap.spec": "fxswap.surgery.spec",
    "fxswap.substitutes": "fxswap.surgery.substitutes",
    "fxswap.rewrite": "fxswap.surgery.rewrite",
    "fxswap.partial": "fxswap.surgery.partial",
    "fxswap.modes": "fxswap.tracing.modes",
    "fxswap.graph": "fxswap.tracing.graph",
    "fxswap.match": "fxswap.blocks.match",
    "fxswap.device_data": "fxswap.data.device",
    "fxswap.student_io": "fxswap.io.student",
    "fxswap.exporting": "fxswap.io.export",
    "fxswap.plotting": "fxswap.integrations.plotting",
}
#: old module paths that are also functions on the package: registered quietly (see the module docstring)
QUIET_PATHS = {"fxswap.trace": "fxswap.tracing.tracer", "fxswap.blockswap": "fxswap.search.plans"}

#: names that left the top-level namespace → (module, attribute)
OLD_NAMES = {
    "plotting": ("fxswap.integrations.plotting", None),
    "Callback": ("fxswap.distillation.callbacks", "Callback"),
    "CSVLogger": ("fxswap.distillation.callbacks", "CSVLogger"),
    "TensorBoardLogger": ("fxswap.distillation.callbacks", "TensorBoardLogger"),
    "WandbLogger": ("fxswap.distillation.callbacks", "WandbLogger"),
}


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD_PATHS:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = OLD_PATHS[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        # the import system hands out whatever sys.modules holds under the name after this: the new module
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Answer for the old module paths (idempotent); called by ``import fxswap``."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
    for old, new in QUIET_PATHS.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def old_name(name: str):
    """The object a name that left ``fxswap``'s namespace refers to, after a :class:`DeprecationWarning`."""
    if name not in OLD_NAMES:
        raise AttributeError(f"module 'fxswap' has no attribute {name!r}")
    module, attr = OLD_NAMES[name]
    warnings.warn(f"fxswap.{name} moved to {module}{'.' + attr if attr else ''}; the old name goes away in the "
                  "next release", DeprecationWarning, stacklevel=3)
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod
