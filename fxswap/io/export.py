"""Export a student for deployment, checked against PyTorch: ``torch.export`` (.pt2) or ONNX.

The batch dimension is dynamic (``torch.export.Dim("batch")``; ONNX's first
input axis is named ``batch``): the file is re-loaded after writing and run at
two batch sizes, the one of ``example_input`` and that plus two, and the largest
absolute difference from the eager PyTorch output (in eval mode) is reported;
above ``atol`` it is an :class:`fxswap.FxswapError` (the file is left on disk
to inspect). A model whose code fixes the batch size (a ``view(1, ...)``, a
branch on ``x.shape[0]``) is exported static at the example's batch size, with
a warning and :attr:`ExportResult.note` saying why. ONNX needs the ``[onnx]``
extra (``onnx``, ``onnxscript`` for torch's exporter, ``onnxruntime`` for the
check); it is one self-contained ``.onnx`` file unless the weights exceed
ONNX's 2 GB protobuf limit, when they go to ``<path>.data`` beside it (listed in
:attr:`ExportResult.files`).

>>> import os, tempfile, torch, fxswap
>>> student = fxswap.cheapen(fxswap.models.wrn(10, 1), "G(N/4)")
>>> r = export(student, torch.randn(1, 3, 32, 32), os.path.join(tempfile.mkdtemp(), "student.pt2"))
>>> r.format, r.dynamic_batch, r.batch_sizes, r.max_abs_diff < 1e-4
('pt2', True, (1, 3), True)
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

#: weights above this many bytes go to an external ``.onnx.data`` file (protobuf's 2 GB limit, with room for
#: the graph itself)
ONNX_SINGLE_FILE_BYTES = 1_800_000_000


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close the exported model is to PyTorch.

    ``batch_sizes``: the batch sizes the written file was run at and compared
    with PyTorch; ``dynamic_batch``: whether the file accepts any batch size;
    ``files``: every file written (an ONNX model over 2 GB has its weights in
    ``<path>.data``); ``note``: why the batch is static, or where the weights
    went, when either needs saying.

    >>> ExportResult("s.pt2", "pt2", 3e-7, 1e-4).to_dict()["format"]
    'pt2'
    """

    path: str
    format: str
    max_abs_diff: float
    atol: float
    batch_sizes: tuple[int, ...] = ()
    dynamic_batch: bool = False
    files: tuple[str, ...] = ()
    note: str = ""

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable)."""
        return {"path": self.path, "format": self.format, "max_abs_diff": self.max_abs_diff, "atol": self.atol,
                "batch_sizes": list(self.batch_sizes), "dynamic_batch": self.dynamic_batch,
                "files": list(self.files or (self.path,)), "note": self.note}

    def __str__(self) -> str:
        batch = "any batch size" if self.dynamic_batch else "a fixed batch size"
        checked = f" at batch {', '.join(map(str, self.batch_sizes))}" if self.batch_sizes else ""
        text = (f"exported to {self.path} ({self.format}, {batch}); max |exported - PyTorch| = "
                f"{self.max_abs_diff:.2e}{checked} (atol {self.atol:g})")
        return text + (f"\nnote: {self.note}" if self.note else "")


def export(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, format: str | None = None,
           *, atol: float = 1e-4, dynamic_batch: bool = True) -> ExportResult:
    """Write ``model`` (in eval mode) to ``path`` and check the written file against PyTorch at two batch sizes.

    ``format`` is ``"pt2"`` (``torch.export``; load with
    ``torch.export.load(path).module()``) or ``"onnx"``; by default it
    follows the suffix of ``path``. The batch dimension is dynamic unless
    ``dynamic_batch=False`` or the model's code fixes it (then a warning says
    why and the file takes the batch size of ``example_input`` only). Never
    mutates ``model``.

    >>> export(torch.nn.Linear(2, 2), torch.zeros(1, 2), "m.tflite")
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: cannot tell the export format from 'm.tflite'; pass format='pt2' or format='onnx' (or use a .pt2 / .onnx suffix)
    """
    path = Path(path)
    format = _format(format, path)
    if not isinstance(example_input, torch.Tensor) or example_input.ndim == 0:
        raise FxswapError(f"example_input is one input batch as a tensor, e.g. torch.randn(1, 3, 224, 224); "
                          f"got {type(example_input).__name__}"
                          + (" of shape ()" if isinstance(example_input, torch.Tensor) else ""))
    if format == "onnx":
        _onnxruntime()  # before any work: the missing extra is the first thing to say
    work = copy.deepcopy(model).eval()
    inputs, expected, why_static = [example_input], [_run_eager(work, example_input)], ""
    if dynamic_batch:
        other = _other_batch(example_input)
        try:
            expected.append(_run_eager(work, other))
            inputs.append(other)
        except FxswapError as exc:
            why_static = f"the model itself fails at batch {len(other)} ({str(exc.__cause__ or exc)[:200]})"
    path.parent.mkdir(parents=True, exist_ok=True)
    program, why_static = _export_program(work, inputs, why_static)
    if why_static:
        inputs, expected = inputs[:1], expected[:1]
    files, where = (_write_pt2 if format == "pt2" else _write_onnx)(program, work, path)
    got = [(_run_pt2 if format == "pt2" else _run_onnx)(path, t) for t in inputs]
    diff = 0.0
    for g, e, t in zip(got, expected, inputs):
        if len(g) != len(e):
            raise FxswapError(f"the exported model returns {len(g)} tensors, PyTorch {len(e)}")
        if any(a.shape != b.shape for a, b in zip(g, e)):
            raise FxswapError(f"the {format} export at {str(path)!r} returns shapes {[tuple(a.shape) for a in g]} at "
                              f"batch {len(t)}, PyTorch {[tuple(b.shape) for b in e]}; the file is kept for inspection")
        diff = max([diff] + [float((a.float() - b.float()).abs().max()) for a, b in zip(g, e) if b.numel()])
    if not diff <= atol:
        raise FxswapError(f"the {format} export at {str(path)!r} differs from PyTorch by up to {diff:.3g} at batch "
                          f"sizes {[len(t) for t in inputs]} (atol {atol:g}); the file is kept for inspection")
    note = "; ".join(n for n in (why_static, where) if n)
    return ExportResult(str(path), format, diff, atol, tuple(len(t) for t in inputs),
                        dynamic_batch and not why_static, files, note)


def _other_batch(x: torch.Tensor) -> torch.Tensor:
    """A second input two samples larger than ``x`` (at batch 1 too: torch.export specialises sizes 0 and 1)."""
    n = x.shape[0] + 2
    if x.is_floating_point():
        return torch.randn((n, *x.shape[1:]), generator=torch.Generator().manual_seed(0)).to(x)
    return x[torch.arange(n) % x.shape[0]]  # token ids and other integer inputs: rows of the example


def _run_eager(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        try:
            return _leaves(model(x))
        except Exception as exc:
            raise FxswapError(f"the model failed on example_input of shape {tuple(x.shape)}: {exc}") from exc


def _export_program(model: nn.Module, inputs: list[torch.Tensor], why_static: str):
    """``torch.export`` with a dynamic batch (traced at the larger batch), else static at the example's batch.

    Returns the program and, when the batch is static although a dynamic one was asked for, why.
    """
    if len(inputs) > 1:
        batch = torch.export.Dim("batch", min=1)
        try:
            return torch.export.export(model, (inputs[1],), dynamic_shapes=({0: batch},)), ""
        except Exception as exc:  # a constraint violation (the code fixes the batch) or any other export failure
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why_static = f"a dynamic batch did not export ({reason[:300]})"
    try:
        program = torch.export.export(model, (inputs[0],))
    except Exception as exc:
        raise FxswapError(f"torch.export could not export {type(model).__name__}: {exc}") from exc
    if why_static:
        why_static = f"the batch size is fixed at {len(inputs[0])}: {why_static}"
        warnings.warn(f"fxswap.export: {why_static}", stacklevel=3)
    return program, why_static


def _write_pt2(program, model: nn.Module, path: Path) -> tuple[tuple[str, ...], str]:
    torch.export.save(program, str(path))
    return (str(path),), ""


def _run_pt2(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _leaves(loaded(x))


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FxswapError("ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript "
                          "onnxruntime (or, in a checkout of fxswap, pip install -e '.[onnx]')") from None
    return onnxruntime


def _write_onnx(program, model: nn.Module, path: Path) -> tuple[tuple[str, ...], str]:
    """One self-contained file when the weights fit protobuf's 2 GB, else the weights in ``<path>.data``."""
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    external = size > ONNX_SINGLE_FILE_BYTES
    data = Path(str(path) + ".data")
    if data.exists():  # a stale one from an earlier export would be read by nothing, or by the wrong model
        data.unlink()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(program, (), str(path), input_names=["input"], dynamo=True, verbose=False,
                              external_data=external)
    except Exception as exc:
        raise FxswapError(f"torch.onnx.export could not export {type(model).__name__}: {exc}") from exc
    if not data.exists():
        return (str(path),), ""
    return (str(path), str(data)), (f"the weights ({size / 1e9:.1f} GB) are over ONNX's 2 GB single-file limit: "
                                    f"they are in {str(data)!r}, which must stay beside {path.name!r}")


def _run_onnx(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    return [torch.from_numpy(o) for o in outputs]


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
