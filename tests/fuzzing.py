"""Fuzz cases for fxswap's input surfaces, and the rule every case must obey.

The rule (issue 12): each input either works, or fails with a clear error — an
:class:`~fxswap.errors.FxswapError` from the library, or exit status 2 with one
``fxswap: error: ...`` line and no traceback from the command line. Anything
else (a ``KeyError`` from deep inside numpy, exit status 1, a traceback) is a
*raw* failure: a bug.

A surface is a pair of functions: ``make(rng, folder)`` draws one case from a
``random.Random`` (writing any file it needs under ``folder``), and
``run(case)`` feeds it to fxswap. :func:`outcome` runs one case and sorts the
result into ``"ok"``, ``"clear error"`` or ``"raw exception"``. The cases are
plain functions of a seeded ``random.Random`` so the test suite (through
hypothesis, a few dozen cases) and ``benchmarks/fuzz.py`` (a thousand) share
them.

Surfaces: ``npz`` (data files for :func:`fxswap.data.cifar_loaders`: random
and corrupted bytes, crafted headers, crafted arrays), ``plan-json`` (plan
files for ``fxswap cheapen MODEL plan.json``: corrupted, re-encoded, nested,
odd values) and ``cli`` (``fxswap`` argv, run in-process, sizes kept small).

>>> import random, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     kinds = [outcome(SURFACES["npz"], SURFACES["npz"].make(random.Random(s), Path(d)))[0] for s in range(5)]
>>> set(kinds) <= {"ok", "clear error"}
True
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import re
import tempfile
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fxswap.errors import FxswapError

__all__ = ["Surface", "SURFACES", "outcome", "OUTCOMES"]

OUTCOMES = ("ok", "clear error", "raw exception")


@dataclass(frozen=True)
class Surface:
    """One input surface: ``make(rng, folder) -> case`` and ``run(case)`` (raises on failure).

    ``run`` may also return an outcome itself (the CLI reports through its exit status).
    """

    name: str
    make: Callable[[random.Random, Path], Any]
    run: Callable[[Any], Any]


def outcome(surface: Surface, case: Any) -> tuple[str, str]:
    """``(kind, detail)``: run ``case`` and sort the result into one of :data:`OUTCOMES`.

    >>> outcome(Surface("demo", lambda r, f: None, lambda c: None), None)
    ('ok', '')
    >>> outcome(Surface("demo", lambda r, f: None, lambda c: {}["x"]), None)[0]
    'raw exception'
    """
    try:
        result = surface.run(case)
    except FxswapError as e:
        return "clear error", f"{type(e).__name__}: {e}"[:300]
    except (Exception, SystemExit) as e:  # the thing a fuzz run is looking for
        return "raw exception", "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
    if isinstance(result, tuple) and result and result[0] in OUTCOMES:
        return result
    return "ok", ""


# ---------------------------------------------------------------------------
# byte-level mutations shared by the file surfaces
# ---------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One of: truncate, flip bytes, zero a range, insert or append garbage, duplicate a slice."""
    b = bytearray(data)
    how = rng.choice(["truncate", "flip", "zero", "insert", "append", "duplicate"])
    if not b or how == "append":
        b += rng.randbytes(rng.randint(1, 64))
    elif how == "truncate":
        del b[rng.randrange(len(b)):]
    elif how == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == "zero":
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 64)] = bytes(len(b[i:i + rng.randint(1, 64)]))
    elif how == "insert":
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 32))
    else:
        i = rng.randrange(len(b))
        b[i:i] = b[i:i + rng.randint(1, 64)]
    return bytes(b)


# ---------------------------------------------------------------------------
# npz data files
# ---------------------------------------------------------------------------

_DTYPES = ["uint8", "int64", "int32", ">i4", "int8", "uint64", "float32", "float16", "bool", "<U3", "complex64"]
_DIMS = [0, 1, 2, 3, 4, 32, 32, 32, 64]


def _valid_arrays(rng: random.Random) -> dict[str, np.ndarray]:
    nprng = np.random.default_rng(rng.randrange(2**32))
    out = {}
    for split in ("train", "test"):
        n = rng.randint(1, 6)
        out[f"x_{split}"] = nprng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        out[f"y_{split}"] = nprng.integers(0, 10, size=n)
    if rng.random() < 0.5:
        out["class_names"] = np.array([f"c{i}" for i in range(10)])
    return out


def _random_array(rng: random.Random) -> np.ndarray:
    shape = tuple(rng.choice(_DIMS) for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 4, 4, 5])))
    if np.prod(shape, dtype=np.int64) > 200_000:
        shape = shape[:2]
    dtype = np.dtype(rng.choice(_DTYPES))
    nprng = np.random.default_rng(rng.randrange(2**32))
    if dtype.kind == "U":
        return nprng.choice(np.array(["cat", "dog", "", "7"]), size=shape)
    if dtype.kind == "b":
        return nprng.integers(0, 2, size=shape).astype(bool)
    lo, hi = rng.choice([(0, 10), (-5, 10), (0, 256), (0, 2**31 - 1), (10, 12)])
    with np.errstate(over="ignore", invalid="ignore"):  # wrapping into small dtypes is part of the fuzz
        return nprng.integers(lo, hi, size=shape).astype(dtype)


def _crafted_arrays(rng: random.Random) -> dict[str, np.ndarray]:
    arrays = _valid_arrays(rng)
    for key in rng.sample(sorted(arrays), rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.15:
            del arrays[key]
        elif choice < 0.6:
            arrays[key] = _random_array(rng)
        else:  # a plausible neighbour: other shape, dtype or values of the same array
            a = arrays[key]
            if key.startswith("x_"):
                shape = list(a.shape)
                shape[rng.randrange(4)] = rng.choice([0, 1, 4, 64, 3])
                arrays[key] = np.zeros(shape, dtype=rng.choice(["uint8", "uint8", "float32"]))
            elif key.startswith("y_"):
                arrays[key] = a + rng.choice([-20, 10, 2**33, 0]) if a.size else a
            else:
                arrays[key] = a[: rng.randint(0, 3)]
    return arrays


def _npy_header_entry(rng: random.Random) -> bytes:
    """A ``.npy`` whose header claims one shape and whose data holds another size (9 TiB claims included)."""
    dtype = np.dtype(rng.choice(["uint8", "int64", "float32"]))
    shape = rng.choice([(2**43, 32, 32, 3), (rng.randint(0, 9), 32, 32, 3), (2**62,), (3, 2**31, 2**31),
                        (rng.randint(0, 5),)])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": rng.random() < 0.2, "shape": shape})
    return header.getvalue() + rng.randbytes(rng.choice([0, 8, 3072, 6144]))


def _write_npz(rng: random.Random, path: Path, arrays: dict[str, np.ndarray]) -> None:
    (np.savez_compressed if rng.random() < 0.3 else np.savez)(path, **arrays)


def make_npz_case(rng: random.Random, folder: Path) -> Path:
    """A file named ``*.npz``: valid, corrupted, crafted, or not an npz at all."""
    path = folder / f"case{rng.randrange(10**9)}.npz"
    kind = rng.choice(["valid", "arrays", "arrays", "mutated", "mutated", "header", "bytes", "npy", "empty"])
    if kind == "valid":
        _write_npz(rng, path, _valid_arrays(rng))
    elif kind == "arrays":
        _write_npz(rng, path, _crafted_arrays(rng))
    elif kind == "mutated":
        _write_npz(rng, path, _valid_arrays(rng))
        path.write_bytes(_mutate(rng, path.read_bytes()))
    elif kind == "header":
        arrays = _valid_arrays(rng)
        crafted = rng.choice(["x_train", "y_train", "x_test"])
        with zipfile.ZipFile(path, "w") as zf:
            for key, a in arrays.items():
                buf = io.BytesIO()
                np.save(buf, a)
                zf.writestr(f"{key}.npy", _npy_header_entry(rng) if key == crafted else buf.getvalue())
    elif kind == "bytes":
        prefix = rng.choice([b"", b"PK\x03\x04", b"\x93NUMPY", b"PK\x05\x06"])
        path.write_bytes(prefix + rng.randbytes(rng.randint(0, 2048)))
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, _random_array(rng))
    else:
        path.write_bytes(b"")
    return path


def run_npz_case(path: Path) -> None:
    """Load both splits and draw one batch of each, as a training run would."""
    from fxswap.data import cifar_loaders

    train, val = cifar_loaders(path, batch_size=4, num_workers=0, seed=0)
    next(iter(train))
    next(iter(val))


# ---------------------------------------------------------------------------
# plan JSON files
# ---------------------------------------------------------------------------

_SPECS = ["S", "I", "G(2)", "G(N/4)", "B(2)", "BG(2,2)", "BG(2,M/4)", "S-2x2", "G(7)", "G(0)", "G(-1)", "B(0)",
          "G(4)x", "S)", "g ( n / 4 )", "G(\u0664)", "G(\uff14)", "G(\u00a04)", "G(" + "9" * 5000 + ")",
          "", " ", "Z", "G(N/0)", "BG(2)", "B(2,2)", "G(1e3)", "G(2.0)"]
_KEYS = ["*", "layer1.*", "layer2.0", "layer3.*", "layer9.*", "", "[", "layer1.0.conv1", "*.*", "plan"]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 3 or pick < 0.45:
        return rng.choice([*_SPECS, *_SPECS, 0, 1.5, -1, None, True, 2**70])
    if pick < 0.75:
        return {rng.choice(_KEYS): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _valid_plan(rng: random.Random) -> Any:
    specs = ["S", "I", "G(2)", "G(N/4)", "B(2)", "BG(2,2)", "S-2x2"]
    form = rng.choice(["dict", "list", "string", "result"])
    if form == "dict":
        keys = rng.sample(["layer1.*", "layer2.*", "layer3.0", "*"], rng.randint(1, 3))
        return {k: rng.choice(specs) for k in keys}
    if form == "list":
        return [rng.choice(specs) for _ in range(3)]
    if form == "string":
        return rng.choice(specs)
    return {"plan": {f"layer{i}.0": rng.choice(specs) for i in (1, 2, 3)}, "budget": 1000}


def make_plan_case(rng: random.Random, folder: Path) -> Path:
    """A path given as a plan file: valid, corrupted, re-encoded, deeply nested, odd values, or a folder."""
    path = folder / f"plan{rng.randrange(10**9)}.json"
    kind = rng.choice(["valid", "random", "random", "mutated", "mutated", "bom", "latin-1", "utf-16", "nested",
                       "bytes", "empty", "folder", "missing"])
    if kind == "folder":
        path.mkdir()
        return path
    if kind == "missing":
        return path
    text = json.dumps(_random_json(rng) if kind == "random" else _valid_plan(rng), ensure_ascii=False)
    if kind == "nested":
        depth = rng.choice([50, 500, 990, 5000, 100_000])
        opener, closer = rng.choice([("[", "]"), ('{"plan": ', "}"), ('{"*": ', "}")])
        text = opener * depth + text + closer * depth
    data = text.encode("utf-8")
    if kind == "mutated":
        data = _mutate(rng, data)
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data
    elif kind == "latin-1":
        data = (text + ' ').replace("}", ', "caf\u00e9": "G(2)"}', 1).encode("latin-1", errors="replace")
    elif kind == "utf-16":
        data = text.encode("utf-16")
    elif kind == "bytes":
        data = rng.randbytes(rng.randint(1, 512))
    elif kind == "empty":
        data = b""
    path.write_bytes(data)
    return path


@functools.lru_cache(maxsize=1)
def _plan_model():
    from fxswap.models import wrn

    return wrn(10, 1)


def run_plan_case(path: Path) -> None:
    """What ``fxswap cheapen wrn-10-1 PATH`` does with the file: load the plan, cheapen the model."""
    from fxswap.cli.common import load_plan
    from fxswap import cheapen

    cheapen(_plan_model(), load_plan(str(path)))


# ---------------------------------------------------------------------------
# command-line argv
# ---------------------------------------------------------------------------

# (good values, bad values): a draw takes a good one with probability GOOD, so that
# most argv get past parsing and reach the deeper code with one or two bad values.
GOOD = 0.6
_MODELS = (["wrn-10-1", "resnet-8", "WRN-10-1", " wrn-10-1 "],
           ["wrn-15-1", "wrn-16-0", "resnet-21", "resnet-0", "", "tv:nope", "timm:nope", "no-such-model",
            "wrn-10-1-1", "wrn--10-1", "\uff57rn-10-1"])
_INTS = (["1", "2", "10", "100"], ["0", "-1", "x", "", "1.5", "3e2", "\u0664", "99999999999999999999999"])
_SMALL_INTS = (["1", "2"], ["0", "-1", "x", "", "1.5"])  # sizes that cost time (epochs, samples, ...)
_FLOATS = (["0.5", "0.1", "1e-3"], ["0", "-1", "nan", "inf", "-inf", "1e400", "abc", ""])
_INPUTS = (["3,32,32", "3x16x16", "3,8,8"],
           ["0,32,32", "3,32", "a,b,c", "-3,32,32", "1,32,32", "3,1,1", "4,32,32", "3,32,32,1", ""])


def _draw(rng: random.Random, pool: tuple[list[str], list[str]]) -> str:
    good, bad = pool
    return rng.choice(good if rng.random() < GOOD else bad)


def _cli_files(folder: Path) -> dict[str, list[str]]:
    """Paths the argv draws from (made once per folder): good, broken, missing, folders."""
    good = folder / "good.npz"
    if not good.exists():
        _write_npz(random.Random(0), good, _valid_arrays(random.Random(1)))
        (folder / "bad.npz").write_bytes(b"PK\x03\x04broken")
        (folder / "plan.json").write_text(json.dumps({"layer1.*": "G(2)"}))
        (folder / "bad.json").write_bytes(b'{"layer1.*": ')
        (folder / "dir").mkdir(exist_ok=True)
        (folder / "ckpt.pt").write_bytes(b"not a checkpoint")
    f = str(folder)
    return {
        "data": [f"{f}/good.npz", f"{f}/good.npz", f"{f}/bad.npz", f"{f}/missing.npz", f"{f}/dir", f],
        "spec": [*_SPECS[:20], f"{f}/plan.json", f"{f}/bad.json", f"{f}/missing.json", f"{f}/dir",
                 '{"layer1.*": "B(2)"}', '{"layer1.*": ', "[1, 2]"],
        "out": [f"{f}/out/o.json", f"{f}/no/such/dir/o.json", f"{f}/dir", f"{f}/o.json", ""],
        "ckpt": [f"{f}/ckpt.pt", f"{f}/missing.pt", f"{f}/dir"],
        "plan": [f"{f}/plan.json"],
    }


def _options(rng: random.Random, files: dict[str, list[str]], command: str) -> list[str]:
    pool: dict[str, Callable[[], str | None]] = {
        "--num-classes": lambda: _draw(rng, _INTS),
        "--input": lambda: _draw(rng, _INPUTS),
    }
    if command == "cheapen":
        pool["--save"] = lambda: rng.choice(files["out"]).replace(".json", ".pt")
    if command == "search":
        pool.update({
            "--budget": lambda: _draw(rng, (["60%", "0.5", "50k"], ["400k", "150%", "101%", "1.5", "nan", "inf",
                                                                    "-1", "0", "abc", "1e9", ""])),
            "--metric": lambda: _draw(rng, (["params", "macs"], ["flops"])),
            "--tolerance": lambda: _draw(rng, (["0.5", "0.99"], _FLOATS[1])),
            "--data": lambda: rng.choice(files["data"]),
            "--candidates": lambda: rng.choice(["S,G(N/4)", "", "G(7)", "x", "S", "S,,B(2)", "S;G(2)"]),
            "--seed": lambda: _draw(rng, _INTS),
            "--top": lambda: _draw(rng, _SMALL_INTS),
            "--out": lambda: rng.choice(files["out"]),
            "--no-macs": lambda: None,
        })
    if command == "distill":
        pool.update({
            "--method": lambda: _draw(rng, (["at", "kd", "lit", "hint", '{"at": 1000}'],
                                            ["nope", '{"nope": 1}', "{", "[1]", "null", '{"kd": {"T": -1}}',
                                             '{"kd": {"bogus": 1}}'])),
            "--dataset": lambda: rng.choice(["cifar10", "cifar100", "mnist"]),
            "--finetune-epochs": lambda: _draw(rng, _SMALL_INTS),
            "--cutout": lambda: rng.choice(["0", "16", "-1", "x"]),
            "--preset": lambda: rng.choice(["moonshine", "cosine", "lit", "nope"]),
            "--lr": lambda: _draw(rng, _FLOATS),
            "--teacher-checkpoint": lambda: rng.choice(files["ckpt"]),
            "--train-teacher-epochs": lambda: _draw(rng, _SMALL_INTS),
            "--out": lambda: rng.choice(files["out"]).replace("o.json", "run"),
            "--resume": lambda: None,
            "--device": lambda: _draw(rng, (["cpu"], ["cuda", "foo", "cuda:1", "", "meta"])),
            "--amp": lambda: None,
            "--seed": lambda: _draw(rng, _INTS),
        })
    argv = []
    for flag in rng.sample(sorted(pool), rng.randint(0, min(4, len(pool)))):
        value = pool[flag]()
        argv += [flag] if value is None else [flag, value]
    return argv


def make_cli_case(rng: random.Random, folder: Path) -> list[str]:
    """An ``fxswap`` argv. Work is kept small: the sizes that cost time only take small or bad values."""
    files = _cli_files(folder)
    spec = _draw(rng, (["G(N/4)", "B(2)", "S", files["plan"][0]], files["spec"]))
    command = rng.choice(["blocks", "count", "cheapen", "cheapen", "search", "search", "distill", "distill",
                          "nope", ""])
    model = _draw(rng, _MODELS)
    if command in ("blocks", "count"):
        argv = [command, model]
    elif command == "cheapen":
        argv = [command, model, spec]
    elif command == "search":
        argv = [command, model, "--budget", _draw(rng, (["60%", "0.6", "40k"], ["x", "0"])), "--no-progress",
                "--samples", _draw(rng, _SMALL_INTS), "--batch-size", _draw(rng, (["4", "8"], _SMALL_INTS[1])),
                "--out", _draw(rng, (files["out"][:1], files["out"][1:]))]
    elif command == "distill":
        argv = [command, "--teacher", model, "--student", _draw(rng, ([spec, "wrn-10-1"], ["x", spec])),
                "--data", _draw(rng, (files["data"][:1], files["data"][1:])), "--epochs", _draw(rng, _SMALL_INTS),
                "--limit", _draw(rng, (["4"], ["0", "-1"])), "--batch-size", _draw(rng, (["2", "4"], ["0", "x"])),
                "--workers", _draw(rng, (["0"], ["-1", "x"])), "--no-progress"]
    else:
        argv = [command] if command else []
    argv += _options(rng, files, command) if command in ("blocks", "count", "cheapen", "search", "distill") else []
    if rng.random() < 0.15:  # junk: an unknown flag or a stray token...
        junk = rng.choice(["--nope", "extra", "-x", "--", "\u2192", "--epochs=2"])
        argv.insert(rng.randint(0, len(argv)), junk)
    elif argv and rng.random() < 0.1:  # ...or one token dropped (a flag without its value, a missing argument)
        argv.pop(rng.randrange(len(argv)))
    return argv


_ERROR_LINE = re.compile(r"^fxswap[\w -]*: error: ")


def run_cli_case(argv: list[str]) -> tuple[str, str]:
    """Run ``fxswap argv`` in-process; the outcome follows the exit-status contract."""
    from fxswap.cli import main

    out, err = io.StringIO(), io.StringIO()
    home = os.getcwd()
    # a command may write a default output file (search: blockswap-MODEL-BUDGET.json) into the working folder
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(scratch)
        try:
            code = main(argv)
        finally:
            os.chdir(home)
    text = err.getvalue()
    errors = [line for line in text.splitlines() if _ERROR_LINE.match(line)]
    if code == 0:
        return "ok", ""
    if code == 2 and len(errors) == 1 and "Traceback" not in text:
        return "clear error", errors[0][:300]
    return "raw exception", f"exit {code}: {text.strip().splitlines()[-1] if text.strip() else '(no stderr)'}"[:300]


SURFACES: dict[str, Surface] = {
    "npz": Surface("npz", make_npz_case, run_npz_case),
    "plan-json": Surface("plan-json", make_plan_case, run_plan_case),
    "cli": Surface("cli", make_cli_case, run_cli_case),
}
