"""What every ``fxswap`` sub-command shares: the parser class, parent parsers,
argument types, and the helpers for shapes, plans, models, warnings and output.

>>> parse_shape("3x64x64", None)
(3, 64, 64)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Iterator

from ..errors import FxswapError

__all__ = [
    "CliParser", "model_parent", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
    "parse_shape", "load_plan", "load_model", "forwarded_warnings", "noted_warnings", "echo", "check_writable",
    "model_from_args", "load_weights", "print_json",
]

MODEL_HELP = "wrn-40-2, resnet-20, a timm name or tv:<torchvision name>"


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2 (no usage dump).

    >>> p = CliParser(prog="fxswap")
    >>> _ = p.add_argument("--n", type=positive_int)
    >>> try:
    ...     p.parse_args(["--n", "0"])
    ... except SystemExit as e:
    ...     e.code
    2
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, text: str, what: str, ok):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; accepted: {what}") from None
    if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: {what}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1.

    >>> positive_int("8")
    8
    """
    return _number(int, text, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0.

    >>> non_negative_int("0")
    0
    """
    return _number(int, text, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0.

    >>> positive_float("0.1")
    0.1
    """
    return _number(float, text, "a finite number > 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0.

    >>> non_negative_float("0")
    0.0
    """
    return _number(float, text, "a finite number >= 0", lambda v: v >= 0)


def model_parent() -> argparse.ArgumentParser:
    """The arguments of every command that takes one model: ``MODEL``, ``--num-classes``, ``--input``.

    >>> p = CliParser(parents=[model_parent()])
    >>> p.parse_args(["wrn-16-1", "--num-classes", "100"]).num_classes
    100
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("model", help=MODEL_HELP)
    parent.add_argument("--num-classes", type=positive_int, default=None, help="classes of the model's head")
    parent.add_argument("--input", default=None, help="input shape C,H,W (default: the model's)")
    weights = parent.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="start from the published weights of a timm or torchvision model (downloads them)")
    weights.add_argument("--weights", metavar="FILE", default=None,
                         help="load the model's weights from a state_dict file (read with weights_only=True)")
    return parent


def parse_shape(text: str | None, model) -> tuple[int, ...]:
    """``"3,32,32"`` / ``"3x32x32"`` as a (C, H, W) tuple; the model's default input without ``text``.

    >>> parse_shape("3,32,32", None)
    (3, 32, 32)
    """
    if not text:
        from ..models.registry import default_input_shape

        return default_input_shape(model)
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise FxswapError(f"--input must look like 3,32,32 (C,H,W), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise FxswapError(f"--input must be three positive numbers C,H,W, got {text!r}")
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None) if isinstance(model, nn.Module) else None
    if first is not None and shape[0] != first.in_channels:
        # caught here so that the user reads one line, not conv2d's shape error from inside the forward
        raise FxswapError(f"--input {text}: the model's first convolution takes {first.in_channels} channels, "
                          f"not {shape[0]} (e.g. --input {first.in_channels},{shape[1]},{shape[2]})")
    return shape


def _read_json_file(path: Path, flag: str):
    if not path.exists():
        raise FxswapError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise FxswapError(f"{flag} {path}: not a file (expected a plan .json file)")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise FxswapError(f"{flag} {path}: not UTF-8 text (expected a plan .json file)") from None
    except json.JSONDecodeError as e:
        raise FxswapError(f"{flag} {path}: not valid JSON ({e}); expected a spec dict or a search result") from None
    except RecursionError:
        raise FxswapError(f"{flag} {path}: JSON nested too deeply to be a plan") from None


def load_plan(text: str, flag: str = "spec"):
    """A plan from the command line: a JSON dict, a plan ``.json`` file (a
    ``fxswap search`` result's ``"plan"`` is used), or the spec string itself.

    >>> load_plan('{"layer1.*": "B(2)"}')
    {'layer1.*': 'B(2)'}
    >>> load_plan("G(N/4)")
    'G(N/4)'
    >>> load_plan("missing.json")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: spec missing.json: no such file
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as e:
            raise FxswapError(f"{flag} looks like JSON but is not valid JSON: {e}") from None
    if stripped.endswith(".json") or Path(text).is_file():
        data = _read_json_file(Path(text), flag)
        return data.get("plan", data) if isinstance(data, dict) else data
    return text


def load_model(name: str, num_classes: int | None, flag: str = "model"):
    """:func:`fxswap.models.create_model`, with a malformed name (``wrn-15-1``) as an :class:`FxswapError`.

    >>> load_model("wrn-15-1", None)
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: model 'wrn-15-1': WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got 15
    """
    from ..models.registry import create_model

    try:
        return create_model(name, num_classes)
    except FxswapError:
        raise
    except (ValueError, TypeError) as e:
        raise FxswapError(f"{flag} {name!r}: {e}") from None


def model_from_args(args: argparse.Namespace, flag: str = "model"):
    """The model of a :func:`model_parent` command: built by name, then ``--pretrained`` or ``--weights``.

    >>> args = argparse.Namespace(model="wrn-10-1", num_classes=None, pretrained=False, weights=None)
    >>> type(model_from_args(args)).__name__
    'WideResNet'
    """
    name, num_classes = args.model, args.num_classes
    if getattr(args, "pretrained", False):
        return _pretrained(name, num_classes)
    model = load_model(name, num_classes, flag)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    return model


def _pretrained(name: str, num_classes: int | None):
    import re

    key = name.strip().lower()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if re.fullmatch(r"wrn-?\d+-\d+|(cifar-?)?resnet-\d+", key):
        raise FxswapError(f"--pretrained: fxswap's own {name!r} has no published weights; pass --weights FILE")
    try:
        if key.startswith(("tv:", "torchvision:")):
            import torchvision

            return torchvision.models.get_model(name.split(":", 1)[1], weights="DEFAULT", **kwargs)
        import timm

        return timm.create_model(name.split(":", 1)[1] if key.startswith("timm:") else name, pretrained=True, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:  # unknown name, no weights, or no network
        raise FxswapError(f"--pretrained {name!r}: could not get the published weights: {exc}") from None


def load_weights(model, path: str | Path, flag: str = "--weights") -> None:
    """Load a state_dict file into ``model`` (``weights_only=True``), for ``--weights`` and ``--teacher-checkpoint``.

    A raw state dict, or one under ``"student"`` (an fxswap checkpoint), ``"state_dict"``, ``"model"``,
    ``"state_dict_ema"`` or ``"net"`` (timm and common trainers); DataParallel's ``module.`` prefix is dropped.

    >>> import os, tempfile, torch
    >>> src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save({"student": src.state_dict()}, os.path.join(d, "ckpt.pt"))
    ...     load_weights(dst, os.path.join(d, "ckpt.pt"))
    >>> torch.equal(src.weight, dst.weight)
    True
    >>> load_weights(dst, "missing.pt")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: --weights missing.pt: no such file
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FxswapError(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FxswapError(f"{flag} {path}: not a weights-only torch file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "fxswap_student" in state:
        raise FxswapError(f"{flag} {path}: this is a saved student; load it with fxswap.load_student")
    for key in ("student", "state_dict", "model", "state_dict_ema", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FxswapError(f"{flag} {path}: expected a state_dict (names -> tensors), raw or under 'student', "
                          f"'state_dict', 'model', 'state_dict_ema' or 'net'")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise FxswapError(f"{flag} {path}: does not fit the model: {' '.join(first[:3])[:400]}") from None


def print_json(data) -> None:
    """``data`` as indented JSON on stdout (the ``--json`` output of every command).

    >>> print_json({"a": 1})
    {
      "a": 1
    }
    """
    print(json.dumps(data, indent=2))


@contextlib.contextmanager
def forwarded_warnings() -> Iterator[None]:
    """Show the warnings raised inside as ``fxswap: warning: ...`` lines on stderr.

    >>> import warnings
    >>> with forwarded_warnings():
    ...     warnings.warn("careful")
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"fxswap: warning: {w.message}", file=sys.stderr)


@contextlib.contextmanager
def noted_warnings() -> Iterator[None]:
    """Print each ``UserWarning`` raised inside as one ``fxswap: note: ...`` line on stderr when it happens
    (a long run's note is not held back to its end), without Python's category and source line; other
    warning categories are shown as usual.

    >>> import contextlib, sys, warnings
    >>> with contextlib.redirect_stderr(sys.stdout), noted_warnings():
    ...     warnings.warn("resume=True but there is no checkpoint.pt in runs/a")
    fxswap: note: resume=True but there is no checkpoint.pt in runs/a
    """
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning):
                print(f"fxswap: note: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


_ASCII = {"→": "->", "±": "+-", "Δ": "d", "×": "x", "≤": "<=", "≥": ">=", "–": "-", "—": "-", "…": "...", "ρ": "rho"}


def echo(text: str = "", file=None) -> None:
    """``print``, degrading to ASCII where the stream cannot encode ``text`` (``PYTHONIOENCODING=ascii``).

    >>> echo("a → b")
    a → b
    """
    stream = file if file is not None else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        for fancy, plain in _ASCII.items():
            text = text.replace(fancy, plain)
        text = text.encode(encoding, errors="replace").decode(encoding, errors="replace")
    print(text, file=stream)


def check_writable(path: str | Path | None, flag: str, *, is_file: bool = True) -> None:
    """Fail before any work if ``path``'s folder does not exist, or (``is_file``) if ``path`` is a folder.

    >>> check_writable("no/such/folder/x.json", "--out")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: --out no/such/folder/x.json: the folder no/such/folder does not exist
    """
    if path is None:
        return
    if is_file and Path(path).is_dir():
        raise FxswapError(f"{flag} {path}: is a folder; give a file path in it (e.g. {Path(path) / 'out.json'})")
    parent = Path(path).parent
    if not parent.is_dir():
        raise FxswapError(f"{flag} {path}: the folder {parent} does not exist")
