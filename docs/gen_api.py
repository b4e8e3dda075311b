"""Write docs/api.md: the API reference, generated from fxswap's docstrings.

Every name in ``fxswap.__all__`` (and the public names of each subpackage, in the order of the flow: tracing,
blocks, surgery, metrics, search, distillation, io, data, models, losses, testing, integrations.plotting) with
its signature and docstring, in the order of ``__all__``. Rerun after changing a docstring (``--check`` in CI tells
when the committed file is stale; tests/test_api_docs.py checks that every
public name is covered).

    python docs/gen_api.py            # writes docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is stale
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "api.md"
SUBMODULES = ("tracing", "blocks", "surgery", "metrics", "search", "distillation", "io", "data", "models", "losses",
              "testing", "integrations.plotting")


def _signature(obj) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", text)  # no memory address: the file stays stable


def _entry(qualname: str, obj) -> str:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "module" if inspect.ismodule(obj) else "data"
    doc = inspect.getdoc(obj) or "(no docstring)"
    head = f"### `{qualname}{_signature(obj) if kind in ('class', 'function') else ''}`"
    body = [head, "", f"*{kind}*", "", doc, ""]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            target = member.fget if isinstance(member, property) else member
            member_doc = inspect.getdoc(target)
            if member_doc:
                sig = "" if isinstance(member, property) else _signature(target)
                body += [f"#### `{qualname}.{name}{sig}`", "", member_doc, ""]
    return "\n".join(body)


def render() -> str:
    import fxswap

    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand. "
             "Every example below runs in the test suite (tests/test_docs.py).", ""]
    lines += ["## fxswap", ""]
    for name in fxswap.__all__:
        obj = getattr(fxswap, name)
        if inspect.ismodule(obj):
            continue
        lines.append(_entry(f"fxswap.{name}", obj))
    for sub in SUBMODULES:
        module = importlib.import_module(f"fxswap.{sub}")
        lines += [f"## fxswap.{sub}", "", inspect.getdoc(module) or "", ""]
        for name in getattr(module, "__all__", []):
            lines.append(_entry(f"fxswap.{sub}.{name}", getattr(module, name)))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs from the docstrings")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print("docs/api.md is stale: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
