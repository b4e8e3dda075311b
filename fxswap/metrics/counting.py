"""Parameter and MAC counts, per block and in total.

Two parameter conventions are reported, because the seeds use both:

* ``params``: trainable parameters (BlockSwap Table 2; ``sum(p.numel())``);
* ``params_bn``: parameters plus BatchNorm running mean and variance (the
  convention of Moonshine Tables 3–4: WRN-40-2 has 2,243,546 trainable
  parameters and 2,248,954 counted this way).

MACs are fvcore's count for one input (fvcore counts one multiply-add of a
convolution or linear layer as one "flop"; it also counts normalisation).

>>> from fxswap.models import wrn
>>> r = count(wrn(40, 2), (3, 32, 32))
>>> r.params, r.params_bn
(2243546, 2248954)
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..blocks.block import Block, common_path, find_blocks
from ..errors import FxswapError, NoBlocksError
from ..surgery.applied import AppliedPlan, record_of
from ..tracing.modes import kept_modes

from .latency import check_input_shape
from .table import render_table

__all__ = ["count", "compare", "CostReport", "BlockCost", "Comparison", "bn_running_stats"]


@dataclass(frozen=True)
class BlockCost:
    """Costs of one block (the modules under its name).

    >>> import fxswap
    >>> fxswap.count(fxswap.models.wrn(16, 1), (3, 32, 32)).blocks[0]
    BlockCost(name='layer1.0', params=4672, params_bn=4736, macs=4784128)
    """

    name: str
    params: int
    params_bn: int
    macs: int


@dataclass(frozen=True)
class CostReport:
    """Totals and per-block costs of one model; ``table()`` renders them.

    >>> print(CostReport(10_000, 10_064, 1_500_000, (3, 32, 32), (BlockCost("layer1.0", 4_000, 4_032, 900_000),)))
    block     params  params+BN stats       MACs
    --------  ------  ---------------  ---------
    layer1.0   4,000            4,032    900,000
    total     10,000           10,064  1,500,000
    """

    params: int
    params_bn: int
    macs: int
    input_shape: tuple[int, ...]
    blocks: tuple[BlockCost, ...] = field(default=())

    def table(self) -> str:
        """A fixed-width table: one row per block, then the total."""
        rows = [(b.name, b.params, b.params_bn, b.macs) for b in self.blocks]
        rows.append(("total", self.params, self.params_bn, self.macs))
        return render_table(["block", "params", "params+BN stats", "MACs"], rows)

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable).

        >>> CostReport(10, 12, 300, (3, 8, 8), (BlockCost("b", 4, 4, 100),)).to_dict()["blocks"][0]
        {'name': 'b', 'params': 4, 'params_bn': 4, 'macs': 100}
        """
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class Comparison:
    """Teacher vs student costs, from :func:`compare`.

    ``teacher_latency`` / ``student_latency`` are
    :class:`fxswap.metrics.latency.LatencyReport` objects when ``compare(...,
    latency=True)`` measured them, else ``None``. ``applied`` is what
    :func:`fxswap.cheapen` did per block (:func:`fxswap.applied_plan`), when the
    student carries that record: the table then has a ``spec`` column, and a
    note per group of blocks kept as they are, with the reason. In the table
    a ratio above 1 (the student's block costs *more* than the teacher's) is
    marked ``*``.

    >>> c = Comparison(CostReport(1000, 1032, 50_000, (3, 32, 32)), CostReport(250, 282, 20_000, (3, 32, 32)))
    >>> print(c.table().splitlines()[2])
    total            1,000       250  0.250  50,000  20,000  0.400
    >>> c.to_dict()["ratios"]["params"]
    0.25
    """

    teacher: CostReport
    student: CostReport
    teacher_latency: object = None
    student_latency: object = None
    applied: AppliedPlan | None = None

    @property
    def has_latency(self) -> bool:
        """Whether latency was measured for both models."""
        return self.teacher_latency is not None and self.student_latency is not None

    def table(self) -> str:
        """Per block: params and MACs (and latency, if measured) before and after, with the ratio."""
        s_blocks = {b.name: b for b in self.student.blocks}
        lat = self.has_latency
        specs = _spec_cells(self.applied, [b.name for b in self.teacher.blocks])
        rows, marked = [], False
        for b in self.teacher.blocks:
            s = s_blocks.get(b.name, BlockCost(b.name, 0, 0, 0))
            row = [b.name, *specs.get(b.name, ()), b.params, s.params, _ratio(s.params, b.params), b.macs, s.macs,
                   _ratio(s.macs, b.macs)]
            if lat:
                row += _latency_cells(self.teacher_latency.block(b.name), self.student_latency.block(b.name))
            marked |= any(c.endswith("*") for c in row if isinstance(c, str))
            rows.append(tuple(row))
        t, s = self.teacher, self.student
        pad = [""] if specs else []
        total = ["total", *pad, t.params, s.params, _ratio(s.params, t.params), t.macs, s.macs, _ratio(s.macs, t.macs)]
        if lat:
            total += _latency_cells(self.teacher_latency.total, self.student_latency.total)
        marked |= any(c.endswith("*") for c in total if isinstance(c, str))
        rows.append(tuple(total))
        rows.append(("total+BN stats", *pad, t.params_bn, s.params_bn, _ratio(s.params_bn, t.params_bn), "", "", "")
                    + (("", "", "") if lat else ()))
        header = ["block", *(["spec"] if specs else []), "params", "-> params", "ratio", "MACs", "-> MACs", "ratio"]
        if lat:
            header += ["ms", "-> ms", "ratio"]
        text = render_table(header, rows)
        if lat:
            text += "\nlatency: median per forward pass " + self.student_latency.conditions()
        if marked:
            text += "\n* the student costs more than the teacher here"
        return text + _kept_notes(self.applied)

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable): both reports, the total ratios and, if measured, latencies.

        >>> import json
        >>> c = Comparison(CostReport(100, 110, 900, (3, 8, 8)), CostReport(50, 60, 1200, (3, 8, 8)))
        >>> json.loads(json.dumps(c.to_dict()))["ratios"]["macs"]
        1.333
        """
        t, s = self.teacher, self.student
        ratios = {"params": _ratio_value(s.params, t.params), "params_bn": _ratio_value(s.params_bn, t.params_bn),
                  "macs": _ratio_value(s.macs, t.macs)}
        out = {"teacher": t.to_dict(), "student": s.to_dict(), "ratios": ratios,
               "applied": self.applied.to_dict() if self.applied is not None else None}
        if self.has_latency:
            out["teacher_latency"] = self.teacher_latency.to_dict()
            out["student_latency"] = self.student_latency.to_dict()
            ratios["latency"] = _ratio_value(self.student_latency.total.median_ms, self.teacher_latency.total.median_ms)
        return out

    def __str__(self) -> str:
        return self.table()


def _applied_name(applied: AppliedPlan, name: str) -> str:
    """A teacher block's name in the record (relative to ``cheapen``'s ``root=``)."""
    root = applied.root
    return name[len(root) + 1:] if root and name.startswith(root + ".") else name


def _spec_cells(applied: AppliedPlan | None, names: list[str]) -> dict[str, tuple[str]]:
    """Per block, the spec cell: what was applied, ``S (kept)`` where the asked spec was not."""
    if applied is None:
        return {}
    out = {}
    for name in names:
        key = _applied_name(applied, name)
        spec = applied.plan.get(key, "-")
        out[name] = (f"{spec} (kept)" if key in applied.kept else spec,)
    return out


def _kept_notes(applied: AppliedPlan | None) -> str:
    """One line per reason: the blocks cheapen kept as they are for it."""
    if applied is None or not applied.kept:
        return ""
    groups: dict[str, list[str]] = {}
    for name, why in applied.kept.items():
        groups.setdefault(f"asked {applied.asked.get(name, '?')}: {why}", []).append(name)
    lines = [f"  {', '.join(names) if len(names) <= 8 else ', '.join(names[:8]) + f', ... ({len(names)} in all)'}"
             f" ({why})" for why, names in groups.items()]
    return f"\nkept as they are ({len(applied.kept)} block(s)):\n" + "\n".join(lines)


def _latency_cells(t, s) -> list[str]:
    if t is None or s is None:
        return ["-", "-", "-"]
    return [f"{t.median_ms:.2f}", f"{s.median_ms:.2f}", _ratio(s.median_ms, t.median_ms)]


def _ratio_value(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _ratio(a: float, b: float) -> str:
    """``a / b`` to three decimals, marked ``*`` above 1 (the student costs more)."""
    if not b:
        return "-"
    return f"{a / b:.3f}" + ("*" if a > b else "")


def bn_running_stats(module: nn.Module) -> int:
    """Number of BatchNorm running-mean and running-variance entries in ``module``.

    >>> bn_running_stats(nn.BatchNorm2d(16))
    32
    """
    total = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            total += m.running_mean.numel() + m.running_var.numel()
    return total


@contextlib.contextmanager
def _quiet_fvcore():
    """fvcore traces with torch.jit, which warns that it is deprecated; that
    warning (and fvcore's own skipped-op log lines) is noise for our users."""
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecated")
        try:
            yield
        finally:
            logger.setLevel(level)


def macs_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per module path at batch 1 (fvcore's count, its torch.jit warning silenced).

    >>> from fxswap.models import wrn
    >>> macs_by_module(wrn(10, 1), (3, 32, 32))[""] > 0
    True
    """
    ref = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=ref.device if ref is not None else "cpu",
                    dtype=ref.dtype if ref is not None else torch.float32)
    try:
        # kept_modes, not model.train(was): that would reset every submodule's own flag
        with kept_modes(model), _quiet_fvcore(), torch.no_grad():
            model.eval()
            from fvcore.nn import FlopCountAnalysis

            fca = FlopCountAnalysis(model, x)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return dict(fca.by_module())
    except Exception as exc:
        raise FxswapError(f"fvcore could not count MACs of {type(model).__name__} on input {tuple(x.shape)}: {exc}") from exc


def _block_cost(model: nn.Module, block: Block, macs: dict[str, int]) -> BlockCost:
    """The costs of the module named like the block; a block named by its add (two adds in one module: a
    transformer's attention and MLP) costs the module holding its branch's layers (``blocks.0.attn``)."""
    name = block.name
    path = name if name in dict(model.named_modules()) or not block.convs else common_path(block.convs)
    try:
        sub = model.get_submodule(path)
    except AttributeError:
        return BlockCost(name, 0, 0, 0)
    params = sum(p.numel() for p in sub.parameters())
    return BlockCost(name, params, params + bn_running_stats(sub), int(macs.get(path, 0)))


def _check_module(model, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise FxswapError(f"{who} needs a torch.nn.Module, got {type(model).__name__}")


def count(model: nn.Module, input_shape: tuple[int, ...], blocks: list[Block] | None = None) -> CostReport:
    """Parameters (both conventions) and MACs of ``model`` for one input of ``input_shape`` (C, H, W).

    Per-block rows cover the blocks :func:`fxswap.find_blocks` finds (none
    if the model has no residual block). Never mutates ``model``.

    >>> from fxswap.models import wrn
    >>> print(count(wrn(16, 1), (3, 32, 32)).table().splitlines()[0])
    block     params  params+BN stats        MACs
    """
    _check_module(model, "count")
    input_shape = check_input_shape(input_shape)
    if blocks is None:
        try:
            blocks = find_blocks(model)
        except NoBlocksError:
            blocks = []
    macs = macs_by_module(model, input_shape)
    params = sum(p.numel() for p in model.parameters())
    return CostReport(
        params=params,
        params_bn=params + bn_running_stats(model),
        macs=int(macs.get("", 0)),
        input_shape=input_shape,
        blocks=tuple(_block_cost(model, b, macs) for b in blocks if "." in b.name or b.name in dict(model.named_modules())),
    )


def compare(teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...], *, latency: bool = False,
            device: str = "cpu", batch: int = 1, **latency_options) -> Comparison:
    """Before/after costs, block by block (blocks keep their names in the student).

    ``latency=True`` also measures both models with :func:`fxswap.latency`
    (on ``device`` at ``batch``; ``latency_options`` such as ``min_run_time``
    are passed on) and adds a latency column. It is off by default: parameter
    and MAC counts take milliseconds, honest timings take seconds.

    >>> import fxswap
    >>> t = fxswap.models.wrn(16, 2)
    >>> c = compare(t, fxswap.cheapen(t, "G(N/4)"), (3, 32, 32))
    >>> c.student.params < c.teacher.params
    True
    >>> t = fxswap.models.wrn(10, 1)
    >>> c = compare(t, fxswap.cheapen(t, "B(2)"), (3, 32, 32), latency=True, min_run_time=0.01, num_threads=1)
    >>> c.has_latency, "-> ms" in c.table()
    (True, True)
    """
    _check_module(teacher, "compare (teacher)")
    _check_module(student, "compare (student)")
    t_blocks = find_blocks(teacher)
    result = Comparison(count(teacher, input_shape, t_blocks), count(student, input_shape, t_blocks),
                        applied=record_of(student))
    if not latency:
        return result
    from .latency import latency as measure

    return Comparison(
        result.teacher, result.student,
        measure(teacher, input_shape, device, batch, blocks=t_blocks, **latency_options),
        measure(student, input_shape, device, batch, blocks=t_blocks, **latency_options),
        result.applied,
    )
