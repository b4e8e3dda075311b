"""Export a student for deployment, checked against PyTorch: ``torch.export`` (.pt2) or ONNX.

Both formats are re-loaded after writing and run on ``example_input``; the
largest absolute difference from the eager PyTorch output (in eval mode) is
reported, and above ``atol`` it is an :class:`fxswap.FxswapError` (the file is
left on disk to inspect). ONNX needs the ``[onnx]`` extra (``onnx``,
``onnxscript`` for torch's exporter, ``onnxruntime`` for the check).

>>> import os, tempfile, torch, fxswap
>>> student = fxswap.cheapen(fxswap.models.wrn(10, 1), "G(N/4)")
>>> r = export(student, torch.randn(2, 3, 32, 32), os.path.join(tempfile.mkdtemp(), "student.pt2"))
>>> r.format, r.max_abs_diff < 1e-4
('pt2', True)
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FxswapError

__all__ = ["export", "ExportResult", "FORMATS"]

FORMATS = ("pt2", "onnx")


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close the exported model is to PyTorch.

    >>> ExportResult("s.pt2", "pt2", 3e-7, 1e-4).to_dict()["format"]
    'pt2'
    """

    path: str
    format: str
    max_abs_diff: float
    atol: float

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable)."""
        return {"path": self.path, "format": self.format, "max_abs_diff": self.max_abs_diff, "atol": self.atol}

    def __str__(self) -> str:
        return f"exported to {self.path} ({self.format}); max |exported - PyTorch| = {self.max_abs_diff:.2e} (atol {self.atol:g})"


def export(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, format: str | None = None,
           *, atol: float = 1e-4) -> ExportResult:
    """Write ``model`` (in eval mode) to ``path`` and check the written file against PyTorch.

    ``format`` is ``"pt2"`` (``torch.export``; load with
    ``torch.export.load(path).module()``) or ``"onnx"``; by default it
    follows the suffix of ``path``. The batch size of ``example_input`` is
    fixed in the export. Never mutates ``model``.

    >>> export(torch.nn.Linear(2, 2), torch.zeros(1, 2), "m.tflite")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: cannot tell the export format from 'm.tflite'; pass format='pt2' or format='onnx' (or use a .pt2 / .onnx suffix)
    """
    path = Path(path)
    format = _format(format, path)
    if not isinstance(example_input, torch.Tensor):
        raise FxswapError(f"example_input is one input batch as a tensor, e.g. torch.randn(1, 3, 224, 224); "
                          f"got {type(example_input).__name__}")
    work = copy.deepcopy(model).eval()
    with torch.no_grad():
        try:
            expected = _leaves(work(example_input))
        except Exception as exc:
            raise FxswapError(f"the model failed on example_input of shape {tuple(example_input.shape)}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    got = (_pt2 if format == "pt2" else _onnx)(work, example_input, path)
    if len(got) != len(expected):
        raise FxswapError(f"the exported model returns {len(got)} tensors, PyTorch {len(expected)}")
    diff = max((float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected) if e.numel()), default=0.0)
    if not diff <= atol:
        raise FxswapError(f"the {format} export at {str(path)!r} differs from PyTorch by up to {diff:.3g} "
                          f"(atol {atol:g}); the file is kept for inspection")
    return ExportResult(str(path), format, diff, atol)


def _format(format: str | None, path: Path) -> str:
    if format is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise FxswapError(f"cannot tell the export format from {str(path)!r}; pass format='pt2' or "
                              f"format='onnx' (or use a .pt2 / .onnx suffix)")
        return suffix
    if format not in FORMATS:
        raise FxswapError(f"unknown export format {format!r}; accepted: {', '.join(FORMATS)}")
    return format


def _leaves(output) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def _pt2(model: nn.Module, x: torch.Tensor, path: Path) -> list[torch.Tensor]:
    try:
        program = torch.export.export(model, (x,))
    except Exception as exc:
        raise FxswapError(f"torch.export could not export {type(model).__name__}: {exc}") from exc
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path))
    with torch.no_grad():
        return _leaves(loaded.module()(x))


def _onnx(model: nn.Module, x: torch.Tensor, path: Path) -> list[torch.Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise FxswapError("ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript "
                          "onnxruntime (or, in a checkout of fxswap, pip install -e '.[onnx]')") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=["input"], dynamo=True, verbose=False)
    except Exception as exc:
        raise FxswapError(f"torch.onnx.export could not export {type(model).__name__}: {exc}") from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    return [torch.from_numpy(o) for o in outputs]
