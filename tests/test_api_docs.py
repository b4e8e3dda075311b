"""docs/: the generated API reference covers the public API, and the quickstart's code runs as written."""
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import fxswap

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_covers_every_public_name():
    text = _generator().render()
    public = [n for n in fxswap.__all__ if not inspect.ismodule(getattr(fxswap, n))]
    missing = [n for n in public if f"### `fxswap.{n}" not in text]
    assert not missing
    assert "### `fxswap.models.create_model(" in text and "### `fxswap.losses." in text
    committed = (DOCS / "api.md").read_text(encoding="utf-8")
    assert all(f"### `fxswap.{n}" in committed for n in ("latency", "save_student", "load_student", "export"))


def test_quickstart_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block of docs/quickstart.md, in order, in one namespace.

    To stay fast: timm's resnet10t for resnet18, 64x64 inputs, a short latency run, and no ONNX line
    (tests/test_export.py covers ONNX).
    """
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    code = "\n".join(blocks).replace("224, 224", "64, 64").replace("batch=8)", "batch=2, min_run_time=0.01, num_threads=1)")
    code = code.replace("resnet18", "resnet10t")
    code = "\n".join(line for line in code.splitlines() if '"student.onnx"' not in line)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/quickstart.md", "exec"), namespace)
    assert (tmp_path / "student.pt").is_file() and (tmp_path / "student.pt2").is_file()
    assert namespace["r"].max_abs_diff <= 1e-4


def test_readme_links_the_docs_and_keeps_two_setup_blocks():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "docs/quickstart.md" in readme and "docs/concepts.md" in readme and "docs/api.md" in readme
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert setup.count("```bash") == 2


@pytest.mark.parametrize("page", ["quickstart.md", "concepts.md"])
def test_relative_links_in_docs_resolve(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (DOCS / target).exists(), target
