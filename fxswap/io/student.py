"""Students that describe themselves: save the weights with the recipe that rebuilds them.

A student is ``cheapen(teacher_architecture, plan)`` plus trained weights. A
bare ``state_dict`` loses the first half; :func:`save_student` keeps it in a
small record next to the weights, in one file::

    {"fxswap_student": 1,
     "record": {"model": "wrn-16-2",            # a fxswap.models name, "timm:NAME", "tv:NAME", or "pkg.mod:factory"
                "model_kwargs": {}, "num_classes": 10, "root": None,
                "plan": {"layer1.0": "G(N/4)", ...},   # one spec per block, as cheapen applied it
                "asked": {...}, "kept": {block: why},  # what the plan asked for; blocks cheapen kept as they are
                "allow_larger": False,                 # the cheapen option the rebuild needs
                "blocks": ["layer1.0", ...],          # the block names the plan was made for
                "input_shape": [3, 32, 32], "versions": {"fxswap": ..., "torch": ...}},
     "state_dict": {...}}

:func:`load_student` rebuilds the architecture from the record (random
weights, never downloaded), re-applies the plan, and loads the weights with
``torch.load(weights_only=True)``: the file holds tensors and plain data only,
no pickled code. A plan whose blocks are not the model's blocks (a plan made
for ``wrn-16-2`` given to ``wrn-40-2``) is an :class:`fxswap.FxswapError`, never
a silently half-applied plan.

>>> import os, tempfile, torch, fxswap
>>> student = fxswap.cheapen(fxswap.models.wrn(16, 1), "G(N/4)")
>>> path = os.path.join(tempfile.mkdtemp(), "student.pt")
>>> _ = save_student(student, path, model="wrn-16-1", plan="G(N/4)", input_shape=(3, 32, 32))
>>> again = load_student(path)
>>> all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))
True
>>> read_record(path)["plan"]["layer2.0"]
'G(N/4)'
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FxswapError, NoBlocksError, SpecError
from ..surgery.applied import AppliedPlan, attach, record_of

__all__ = ["save_student", "load_student", "read_record", "build_model", "check_plan"]

FORMAT_VERSION = 1
_REGISTRY_PREFIXES = ("tv", "torchvision", "timm")
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def build_model(name: str, num_classes: int | None = None, model_kwargs: dict | None = None,
                *, trust_import: bool = False) -> nn.Module:
    """The teacher architecture named in a record, with random weights.

    ``name`` is a :func:`fxswap.models.create_model` name (``wrn-16-2``,
    ``resnet-20``, ``timm:resnet18``, ``tv:resnet18``) or, with
    ``trust_import=True``, an import path ``package.module:factory`` called as
    ``factory(**model_kwargs, num_classes=num_classes)``. Import paths are
    opt-in because importing and calling a name written in a file runs code.

    >>> type(build_model("wrn-16-1")).__name__
    'WideResNet'
    >>> type(build_model("fxswap.models:wrn", model_kwargs={"depth": 10, "width": 1}, trust_import=True)).__name__
    'WideResNet'
    """
    if not isinstance(name, str) or not name.strip():
        raise FxswapError(f"a model is named by a string ('wrn-16-2', 'timm:resnet18', 'pkg.mod:factory'); got {name!r}")
    kwargs = dict(model_kwargs or {})
    if _IMPORT_PATH.fullmatch(name) and name.split(":")[0].lower() not in _REGISTRY_PREFIXES:
        if not trust_import:
            raise FxswapError(f"the record names the import path {name!r}; loading it imports and calls that code. "
                              f"If you trust the file, pass trust_import=True (or model=<your module>)")
        module_name, _, attr = name.partition(":")
        try:
            factory: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as exc:
            raise FxswapError(f"cannot import {name!r}: {exc}") from None
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            model = factory(**kwargs)
        except TypeError as exc:  # wrong keyword arguments for the factory
            raise FxswapError(f"cannot build {name}(**{kwargs}): {exc}") from None
        if not isinstance(model, nn.Module):
            raise FxswapError(f"{name!r} returned a {type(model).__name__}, not an nn.Module")
        return model
    if kwargs:
        raise FxswapError(f"model_kwargs are for import paths ('pkg.mod:factory'); {name!r} takes only num_classes")
    from ..models import create_model

    return create_model(name, num_classes)


def _blocks_of(model: nn.Module, root: str | None) -> list[str]:
    from ..blocks.block import find_blocks
    from ..surgery.partial import submodule_at

    try:
        return [b.name for b in find_blocks(submodule_at(model, root) if root else model)]
    except NoBlocksError:
        return []


def check_plan(model: nn.Module, record: dict) -> None:
    """An :class:`fxswap.FxswapError` unless ``record``'s plan was made for ``model``'s blocks.

    >>> from fxswap.models import wrn
    >>> check_plan(wrn(16, 1), {"model": "wrn-16-1", "blocks": ["layer1.0", "layer1.1"], "root": None})
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: the plan was made for wrn-16-1, whose blocks are layer1.0, layer1.1 (2 blocks); this model's blocks are layer1.0, layer1.1, layer2.0, layer2.1, layer3.0, layer3.1 (6 blocks)
    """
    have = _blocks_of(model, record.get("root"))
    want = list(record["blocks"])
    if have != want:
        raise FxswapError(f"the plan was made for {record.get('model')}, whose blocks are {_names(want)}; "
                          f"this model's blocks are {_names(have)}")


def _names(names: list[str]) -> str:
    shown = ", ".join(names) if len(names) <= 8 else ", ".join(names[:4]) + ", ..., " + ", ".join(names[-2:])
    return f"{shown} ({len(names)} blocks)"


def save_student(student: nn.Module, path: str | os.PathLike, *, model: str, plan=None,
                 input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                 root: str | None = None, model_kwargs: dict | None = None) -> dict:
    """Write ``student``'s weights and the record that rebuilds it to ``path``; return the record.

    ``model`` names the teacher architecture (see :func:`build_model`), ``root``
    the ``cheapen(..., root=)`` if any. The plan stored is the one
    :func:`fxswap.cheapen` *applied*, read off the student
    (:func:`fxswap.applied_plan`): a whole-model spec that kept some blocks as
    they are is stored with ``"S"`` there, so the file rebuilds exactly.
    ``plan``, what was given to ``cheapen`` (a spec, dict, list or a saved
    search result), is then optional and checked against the student's record;
    for a module without one (not returned by ``cheapen``) it is required. The
    record is checked before anything is written: the named model is built, the
    plan re-applied and the rebuilt student's state-dict keys and shapes
    compared with ``student``'s, so a file that is written loads.

    >>> import os, tempfile, fxswap
    >>> s = fxswap.cheapen(fxswap.models.wrn(10, 1), {"layer3.*": "B(2)"})
    >>> record = save_student(s, os.path.join(tempfile.mkdtemp(), "s.pt"), model="wrn-10-1", plan={"layer3.*": "B(2)"})
    >>> record["plan"], record["blocks"]
    ({'layer1.0': 'S', 'layer2.0': 'S', 'layer3.0': 'B(2)'}, ['layer1.0', 'layer2.0', 'layer3.0'])
    """
    from ..version import __version__
    from ..blocks.block import find_blocks
    from ..surgery.partial import submodule_at

    if not isinstance(student, nn.Module):
        raise FxswapError(f"save_student saves an nn.Module; got {type(student).__name__}")
    applied = record_of(student)
    if applied is not None and root is not None and applied.root != root:
        raise FxswapError(f"root={root!r}, but the student was cheapened with root={applied.root!r}")
    root = applied.root if applied is not None else root
    base = build_model(model, num_classes, model_kwargs, trust_import=True)  # the caller wrote this name
    try:
        blocks = find_blocks(submodule_at(base, root) if root else base)
    except NoBlocksError as exc:
        raise FxswapError(f"{model!r} has no residual blocks, so no plan applies to it: {exc}") from None
    applied = _applied(blocks, plan, applied, model)
    record = {
        "model": model,
        "model_kwargs": dict(model_kwargs or {}),
        "num_classes": num_classes,
        "root": root,
        "plan": dict(applied.plan),
        "asked": dict(applied.asked),
        "kept": dict(applied.kept),
        "allow_larger": applied.allow_larger,
        "blocks": [b.name for b in blocks],
        "input_shape": list(input_shape) if input_shape is not None else None,
        "versions": {"fxswap": __version__, "torch": str(torch.__version__)},
    }
    state = student.state_dict()
    _check_same_layout(_rebuild(base, record).state_dict(), state, record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fxswap_student": FORMAT_VERSION, "record": record,
                "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, path)
    return record


def _applied(blocks, plan, applied: AppliedPlan | None, model: str) -> AppliedPlan:
    """The applied plan to store: the student's record, checked against ``plan`` and the named model's blocks;
    without a record, ``plan`` resolved (the student must then be exactly ``cheapen(model, plan)``)."""
    from ..surgery.rewrite import resolve_plan

    names = [b.name for b in blocks]
    if applied is None:
        if plan is None:
            raise FxswapError("this student carries no record of fxswap.cheapen (fxswap.applied_plan): pass plan=, "
                              "the plan it was cheapened with")
        specs = {n: str(s) for n, s in resolve_plan(blocks, plan).items()}
        return AppliedPlan(specs, dict(specs))
    if list(applied.plan) != names:
        raise FxswapError(f"the student was cheapened from a model whose blocks are {_names(list(applied.plan))}; "
                          f"model={model!r} has blocks {_names(names)}: name the model it was cheapened from")
    if plan is not None:
        given = {n: str(s) for n, s in resolve_plan(blocks, plan).items()}
        differ = [f"{n} (plan gives {given[n]}, cheapen was asked {applied.asked.get(n)} and applied "
                  f"{applied.plan[n]})" for n in names if given[n] not in (applied.asked.get(n), applied.plan[n])]
        if differ:
            raise FxswapError(f"plan= is not the plan this student was cheapened with: {', '.join(differ[:5])}"
                              f"{' ...' if len(differ) > 5 else ''}; leave plan= out to save what cheapen applied")
    return applied


def _rebuild(base: nn.Module, record: dict) -> nn.Module:
    import warnings

    from ..surgery.rewrite import cheapen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the plan changes nothing in block ..." was said at save time
        student = cheapen(base, record["plan"], root=record.get("root"),
                          allow_larger=bool(record.get("allow_larger", False)))
    plan = record["plan"]  # the student is the applied plan; what it was asked for and why blocks were kept
    return attach(student, AppliedPlan(dict(plan), dict(record.get("asked") or plan), dict(record.get("kept") or {}),
                                       record.get("root"), bool(record.get("allow_larger", False))))


def _check_same_layout(expected: dict, got: dict, record: dict) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("shape differs", shapes)) if keys)
        raise FxswapError(f"the weights are not those of cheapen({record['model']!r}, plan) "
                          f"(num_classes={record.get('num_classes')}): {detail}")


def read_record(path: str | os.PathLike) -> dict:
    """The record of a saved student (no model is built).

    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "bare.pt")
    >>> torch.save({"w": torch.zeros(1)}, p)
    >>> read_record(p)
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: ... is not a student saved by fxswap.save_student (a bare state_dict?): ...
    """
    return _read(path)["record"]


_NOT_A_STUDENT = (
    "{path!r} is not a student saved by fxswap.save_student: besides tensors it holds pickled Python objects "
    "({objects}), as a training checkpoint does (timm's train.py writes model_best.pth.tar and checkpoint-*.pth.tar: "
    "a dict of state_dict, optimizer, args, ...), and fxswap loads files weights-only, never running pickled code. "
    "fxswap export and fxswap.load_student take a file written by fxswap.save_student (or 'fxswap cheapen --save', "
    "'fxswap distill --out'). To make one from a checkpoint you trust: student = fxswap.cheapen(timm.create_model("
    "NAME, num_classes=N), PLAN); student.load_state_dict(torch.load(FILE, weights_only=False)['state_dict']); "
    "fxswap.save_student(student, 'student.pt', model='timm:NAME', plan=PLAN, num_classes=N)")


def _pickled_objects(path: Path) -> list[str]:
    """The Python classes a checkpoint pickles beside its tensors (read without unpickling them)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    try:
        return list(find(path)) if find is not None else []
    except Exception:  # not a torch zip file at all: the caller reports the load error
        return []


def _read(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FxswapError(f"no such file: {str(path)!r}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        pickled = _pickled_objects(path) if "Weights only load failed" in str(exc) else []
        if pickled:
            raise FxswapError(_NOT_A_STUDENT.format(path=str(path), objects=", ".join(pickled[:4]))) from None
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise FxswapError(f"cannot read {str(path)!r} as a saved student (weights-only loading): "
                          f"{first[0] if first else type(exc).__name__}") from None
    if not isinstance(data, dict) or "fxswap_student" not in data:
        keys = list(data)[:4] if isinstance(data, dict) else type(data).__name__
        raise FxswapError(f"{str(path)!r} is not a student saved by fxswap.save_student (a bare state_dict?): "
                          f"it holds {keys}; rebuild with fxswap.cheapen(model, plan) and load_state_dict")
    if data["fxswap_student"] > FORMAT_VERSION:
        raise FxswapError(f"{str(path)!r} was written by a newer fxswap (format {data['fxswap_student']}); "
                          f"this one reads format {FORMAT_VERSION}")
    return data


def load_student(path: str | os.PathLike, *, model: nn.Module | None = None, map_location="cpu",
                 trust_import: bool = False) -> nn.Module:
    """Rebuild and load a student written by :func:`save_student`.

    The architecture is built from the record (or taken from ``model``, an
    instance of the same teacher architecture: its weights are not used), the
    plan re-applied and the weights loaded strictly. A plan made for another
    model, or weights that do not fit, is an :class:`fxswap.FxswapError`.
    ``trust_import`` allows records naming an import path (see
    :func:`build_model`). The student comes back in training mode, like a
    freshly built module.

    >>> import os, tempfile, fxswap
    >>> p = os.path.join(tempfile.mkdtemp(), "s.pt")
    >>> _ = save_student(fxswap.cheapen(fxswap.models.wrn(16, 1), "B(2)"), p, model="wrn-16-1", plan="B(2)")
    >>> load_student(p, model=fxswap.models.wrn(40, 1))
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: the plan was made for wrn-16-1, whose blocks are ...; this model's blocks are ... (18 blocks)
    """
    data = _read(path, map_location)
    record = data["record"]
    if model is None:
        base = build_model(record["model"], record.get("num_classes"), record.get("model_kwargs"),
                           trust_import=trust_import)
    elif isinstance(model, nn.Module):
        base = model
    else:
        raise FxswapError(f"model= is the teacher architecture as an nn.Module; got {type(model).__name__}")
    check_plan(base, record)
    try:
        student = _rebuild(base, record)
    except SpecError as exc:
        raise FxswapError(f"the saved plan does not apply to this model: {exc}") from None
    _check_same_layout(student.state_dict(), data["state_dict"], record)
    student.load_state_dict(data["state_dict"])
    return student
