"""The layout's rules (issue 21), read off the source with ``ast``: no import cycle between fxswap's modules, no
private name imported from another fxswap module, no function over 100 lines, and old import paths that still work
(with a DeprecationWarning) for one release."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fxswap
from fxswap.deprecated import OLD_NAMES, OLD_PATHS

PACKAGE = Path(fxswap.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported fxswap module, names taken from it, line) for every import in ``path``, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fxswap"):
                continue
            names = [a.name for a in node.names]
            # ``from . import losses`` imports a module, not a name
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not subs:
                found.append((target, rest, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("fxswap")]
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _, _ in _imports(name, path, known):
            if target in known and target != name:
                graph[name].add(target)
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    for name in list(graph):
        for target in list(graph[name]):
            parts = target.split(".")
            for k in range(1, len(parts)):
                parent = ".".join(parts[:k])
                if parent in known and parent != name and not name.startswith(parent + "."):
                    graph[name].add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_fxswap_modules():
    graph = _graph()
    assert len(graph) > 40 and "fxswap.surgery.rewrite" in graph["fxswap.surgery"]
    assert _cycles(graph) == []


def test_no_private_name_is_imported_from_another_fxswap_module():
    mods = _modules()
    known = set(mods)
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {n} from {target}"
           for name, path in mods.items() for target, names, line in _imports(name, path, known)
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def test_no_function_is_longer_than_100_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100]
    assert long == []


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_module_path_is_the_new_module_with_a_deprecation_warning(old):
    # a fresh interpreter: in this one an earlier test may have imported the old path already
    code = (f"import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            f"import fxswap\n"
            f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
            f"warnings.simplefilter('ignore')\n"
            f"print(importlib.import_module({old!r}) is importlib.import_module({OLD_PATHS[old]!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"warned: {old} moved to {OLD_PATHS[old]}" in out.stdout and out.stdout.strip().endswith("True")


def test_old_import_statements_keep_working():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fxswap.rewrite import cheapen
        from fxswap.timing import latency
        from fxswap.blocks import find_blocks
    assert cheapen is fxswap.cheapen and latency is fxswap.latency and find_blocks is fxswap.find_blocks
    # the two old module names that are also functions of the package stay functions
    assert callable(fxswap.trace) and callable(fxswap.blockswap)
    assert importlib.import_module("fxswap.trace").ModeSwitch is fxswap.tracing.ModeSwitch


@pytest.mark.parametrize("name", sorted(OLD_NAMES))
def test_names_that_left_the_top_level_warn_and_still_resolve(name):
    with pytest.warns(DeprecationWarning, match=f"fxswap.{name} moved to"):
        obj = getattr(fxswap, name)
    module, attr = OLD_NAMES[name]
    assert obj is (getattr(importlib.import_module(module), attr) if attr else importlib.import_module(module))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        fxswap.not_a_name  # noqa: B018


def test_every_public_name_is_documented_with_an_example():
    def is_error(obj):
        return isinstance(obj, type) and issubclass(obj, BaseException)

    missing = [n for n in fxswap.__all__ if callable(getattr(fxswap, n)) and not is_error(getattr(fxswap, n))
               and ">>>" not in (getattr(fxswap, n).__doc__ or "")]
    assert missing == []
