"""The CLI's contract on broken plan files and narrow output encodings (issue 12).

Exit 0 done, 2 bad input with one ``fxswap: error:`` line on stderr (no
traceback); finished work (``--save``, ``--out``) is written even when the
terminal cannot print the tables.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fxswap.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _bad_input(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fxswap: error:"), err
    assert "Traceback" not in err
    return lines[0]


PLAN_FILES = {
    "empty": (b"", r"not valid JSON"),
    "truncated": (b'{"layer1.*": "G(', r"not valid JSON"),
    "latin-1": ('{"layer1.*": "G(N/4)", "layer2.*": "B(2)", "caf\u00e9": 1}'.encode("latin-1"), r"not UTF-8"),
    "binary": (bytes(range(256)) * 4, r"not UTF-8"),
    "nested-lists": (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
    "nested-dicts": (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, r"nested too deeply"),
    "a-number": (b"42", r"plan|spec"),
    "null": (b"null", r"plan|spec"),
    "list-of-lists": (b'[["G(2)"], ["S"], ["S"]]', r"spec must be a string"),
}


@pytest.mark.parametrize("name", PLAN_FILES)
def test_broken_plan_file_is_one_clear_line(tmp_path, capsys, name):
    content, match = PLAN_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    line = _bad_input(capsys, ["cheapen", "wrn-10-1", str(path)])
    assert __import__("re").search(match, line), line


def test_bom_prefixed_plan_file_is_read(tmp_path, capsys):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"layer1.*": "G(2)"}).encode())
    save = tmp_path / "s.pt"
    assert main(["cheapen", "wrn-10-1", str(path), "--save", str(save)]) == 0
    from fxswap import load_student
    from fxswap.models import wrn

    student, teacher = load_student(save), wrn(10, 1)
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the BOM-prefixed plan was read: G(2) cheapened layer1.0 alone
    assert size(student.layer1[0]) < size(teacher.layer1[0])
    assert size(student.layer2[0]) == size(teacher.layer2[0])


@pytest.mark.parametrize("suffix", [".json", ""])
def test_directory_as_plan_is_one_clear_line(tmp_path, capsys, suffix):
    folder = tmp_path / f"plans{suffix}"
    folder.mkdir()
    line = _bad_input(capsys, ["cheapen", "wrn-10-1", str(folder)])
    assert "not a file" in line or "invalid spec" in line


def test_missing_plan_file_is_not_called_an_invalid_spec(tmp_path, capsys):
    line = _bad_input(capsys, ["cheapen", "wrn-10-1", str(tmp_path / "plan.json")])
    assert "no such file" in line and "invalid spec" not in line


def _run(args, encoding, cwd):
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fxswap", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["ascii"])
def test_cheapen_save_survives_a_narrow_terminal(tmp_path, encoding):
    save = tmp_path / "student.pt"
    proc = _run(["cheapen", "wrn-10-1", "B(2)", "--save", str(save)], encoding, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    from fxswap import load_student

    assert "layer2.0.substitute.up.weight" in load_student(save).state_dict()
    proc.stdout.decode(encoding)  # everything printed is in the terminal's encoding


@pytest.mark.slow
def test_search_out_survives_an_ascii_terminal(tmp_path):
    out = tmp_path / "plan.json"
    proc = _run(["search", "wrn-10-1", "--budget", "0.6", "--samples", "3", "--batch-size", "4", "--no-macs",
                 "--no-progress", "--out", str(out)], "ascii", tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(out.read_text())
    assert set(result["plan"]) == {"layer1.0", "layer2.0", "layer3.0"}
    proc.stdout.decode("ascii")
