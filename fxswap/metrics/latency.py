"""Measured latency, per block and in total: the cost that MACs do not predict.

Fewer MACs is not the same as faster. A grouped conv of Moonshine's ``G(N/16)``
cuts MACs by an order of magnitude, but on a CPU it runs in a kernel that is
far less efficient per MAC than a dense conv, and the extra BN-act-1×1 it adds
are memory-bound; the student can be *slower* than its teacher (see
``docs/benchmarks.md``). :func:`latency` measures instead of estimating.

How it measures (and what the numbers mean):

* the model is deep-copied, moved to ``device`` and put in eval mode; the
  user's model is never touched;
* one forward pass of a random batch captures, by forward pre-hooks, the exact
  inputs each block's module receives;
* the whole model and then each block's module alone (on its captured input)
  are timed with :mod:`torch.utils.benchmark` under ``torch.no_grad()``:
  ``warmup`` untimed calls, then 7 timed blocks of ``number`` calls each,
  ``number`` chosen so the blocks last about ``min_run_time`` seconds together.
  The reported figure is the median time per call over the blocks, the spread
  their interquartile range (IQR);
* ``torch.utils.benchmark`` synchronises CUDA around each timed block, so GPU
  figures are wall-clock kernel time, not launch time.

A block timed alone runs with warm caches of its own weights and no
neighbours, so the block rows do not add up exactly to the total; their sum
also leaves out the stem and the head. Use the rows to compare a block with
its substitute, and the total to compare models.

>>> import fxswap
>>> r = fxswap.latency(fxswap.models.wrn(10, 1), (3, 32, 32), min_run_time=0.01)
>>> [b.name for b in r.blocks], r.total.median_ms > 0
(['layer1.0', 'layer2.0', 'layer3.0'], True)
"""
from __future__ import annotations

import copy
import logging
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ..blocks.block import Block, find_blocks
from ..errors import FxswapError, NoBlocksError

__all__ = ["latency", "LatencyReport", "Timing", "BlockLatency", "parse_duration", "is_duration", "BlockLatencyTable",
           "block_latency_table", "check_input_shape"]


@dataclass(frozen=True)
class Timing:
    """One measurement: median and interquartile range per call, in milliseconds.

    >>> Timing(median_ms=2.5, iqr_ms=0.1, runs=40).median_ms
    2.5
    """

    median_ms: float
    iqr_ms: float
    runs: int


@dataclass(frozen=True)
class BlockLatency:
    """The timing of one block's module, alone, on the input it gets in the model.

    >>> BlockLatency("layer1.0", Timing(1.0, 0.05, 20)).timing.runs
    20
    """

    name: str
    timing: Timing


@dataclass(frozen=True)
class LatencyReport:
    """Latency of one model at one batch size on one device; ``str()`` renders a table.

    >>> r = LatencyReport(Timing(10.0, 0.4, 30), "cpu", 32, (3, 32, 32), 2,
    ...                   (BlockLatency("layer1.0", Timing(3.0, 0.1, 90)),))
    >>> print(r)
    block     median ms  IQR ms  runs
    --------  ---------  ------  ----
    layer1.0      3.000   0.100    90
    total        10.000   0.400    30
    (cpu, batch 32, input (3, 32, 32), 2 threads)
    >>> r.to_dict()["total"]["median_ms"]
    10.0
    """

    total: Timing
    device: str
    batch: int
    input_shape: tuple[int, ...]
    threads: int
    blocks: tuple[BlockLatency, ...] = field(default=())

    def block(self, name: str) -> Timing | None:
        """The timing of block ``name``, or ``None`` if it was not timed.

        >>> LatencyReport(Timing(1.0, 0.0, 1), "cpu", 1, (3, 8, 8), 1).block("layer1.0") is None
        True
        """
        return next((b.timing for b in self.blocks if b.name == name), None)

    def table(self) -> str:
        """Fixed-width table: one row per block, then the total, then the conditions."""
        from .table import render_table

        rows = [(b.name, f"{b.timing.median_ms:.3f}", f"{b.timing.iqr_ms:.3f}", b.timing.runs) for b in self.blocks]
        rows.append(("total", f"{self.total.median_ms:.3f}", f"{self.total.iqr_ms:.3f}", self.total.runs))
        return render_table(["block", "median ms", "IQR ms", "runs"], rows) + "\n" + self.conditions()

    def conditions(self) -> str:
        """Where the numbers hold: device, batch, input shape, threads.

        >>> LatencyReport(Timing(1.0, 0.0, 1), "cpu", 8, (3, 32, 32), 4).conditions()
        '(cpu, batch 8, input (3, 32, 32), 4 threads)'
        """
        return f"({self.device}, batch {self.batch}, input {tuple(self.input_shape)}, {self.threads} threads)"

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable): totals, per-block timings and the conditions."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def __str__(self) -> str:
        return self.table()


def latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: str | torch.device = "cpu",
    batch: int = 1,
    *,
    blocks: list[Block] | None = None,
    per_block: bool = True,
    warmup: int = 3,
    min_run_time: float = 0.2,
    num_threads: int | None = None,
) -> LatencyReport:
    """Measure inference latency of ``model`` on a ``(batch, *input_shape)`` input.

    Returns a :class:`LatencyReport` with the whole model's median and IQR
    (milliseconds per forward pass) and, if ``per_block``, one row per block
    :func:`fxswap.find_blocks` finds (or per ``blocks`` given). ``num_threads``
    defaults to ``torch.get_num_threads()`` (``torch.utils.benchmark`` would
    otherwise use one thread). See the module docstring for the method.
    Never mutates ``model``.

    >>> import fxswap
    >>> r = fxswap.latency(fxswap.models.wrn(10, 1), (3, 32, 32), batch=2, per_block=False, min_run_time=0.01)
    >>> r.blocks, r.batch, r.total.runs > 0
    ((), 2, True)
    """
    input_shape = check_input_shape(input_shape)
    if not isinstance(batch, int) or batch < 1:
        raise FxswapError(f"batch must be a positive integer, got {batch!r}")
    if warmup < 0 or min_run_time <= 0:
        raise FxswapError(f"warmup must be >= 0 and min_run_time > 0, got {warmup!r} and {min_run_time!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FxswapError(f"unknown device {device!r} (e.g. 'cpu', 'cuda', 'cuda:1'): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FxswapError("device 'cuda' asked for, but torch sees no CUDA device; use device='cpu'")
    threads = num_threads or torch.get_num_threads()
    if per_block and blocks is None:
        try:
            blocks = find_blocks(model)
        except NoBlocksError:
            blocks = []
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    work = copy.deepcopy(model).to(device).eval()
    x = torch.randn((batch, *input_shape), device=device, dtype=dtype)
    with torch.no_grad():
        inputs = _block_inputs(work, [b.name for b in blocks or []], x) if per_block else {}
        total = _time(lambda: work(x), warmup, min_run_time, threads)
        rows = tuple(
            BlockLatency(name, _time(_call(work.get_submodule(name), *inputs[name]), warmup, min_run_time, threads))
            for name in inputs
        )
    return LatencyReport(total, str(device), batch, input_shape, threads, rows)


@dataclass(frozen=True)
class BlockLatencyTable:
    """Measured milliseconds per block × candidate variant, and the whole teacher's (BlockSwap's latency column).

    ``blocks[name][spec]``: the median latency of that block's module as
    ``spec`` rewrites it; ``teacher[name]``: the teacher's own block module;
    ``total_ms``: the whole teacher. A plan's latency is estimated as
    :meth:`estimate` does: the teacher total minus its blocks, plus the chosen
    variants (exact for the teacher itself).

    >>> t = BlockLatencyTable(10.0, {"a": 3.0, "b": 4.0}, {"a": {"S": 3.0, "B(2)": 1.0}, "b": {"S": 4.0, "B(2)": 2.5}},
    ...                       "cpu", 32, (3, 32, 32), 1)
    >>> t.fixed_ms, t.estimate({"a": "B(2)", "b": "S"})
    (3.0, 8.0)
    """

    total_ms: float
    teacher: dict[str, float]
    blocks: dict[str, dict[str, float]]
    device: str
    batch: int
    input_shape: tuple[int, ...]
    threads: int

    @property
    def fixed_ms(self) -> float:
        """What the blocks leave: the teacher total minus the teacher's per-block latencies (stem, head, glue)."""
        return self.total_ms - sum(self.teacher.values())

    def estimate(self, plan: Mapping[str, str]) -> float:
        """Estimated milliseconds of the network with ``plan`` (one spec per block)."""
        return self.fixed_ms + sum(self.blocks[n][s] for n, s in plan.items())

    def conditions(self) -> str:
        """Where the numbers hold, as :meth:`LatencyReport.conditions` says it."""
        return f"({self.device}, batch {self.batch}, input {tuple(self.input_shape)}, {self.threads} threads)"


#: A custom measurement: ``timer(module, args, kwargs)`` returns milliseconds per call of ``module(*args, **kwargs)``.
Timer = Callable[[nn.Module, tuple, dict], float]


def block_latency_table(
    model: nn.Module,
    variants: Mapping[str, Mapping[str, nn.Module]],
    input_shape: tuple[int, ...],
    batch: int = 1,
    *,
    warmup: int = 3,
    min_run_time: float = 0.2,
    num_threads: int | None = None,
    timer: Timer | None = None,
    rounds: int = 1,
) -> BlockLatencyTable:
    """Time every block variant on the input its block gets in ``model``, and ``model`` itself.

    ``variants[name][spec]`` is the module that replaces block ``name``
    (a submodule of ``model``) under ``spec``; every variant keeps its
    block's input and output shapes, so each is timed on the exact input the
    teacher's block receives in one forward pass of a random
    ``(batch, *input_shape)`` batch. The measurement is :func:`latency`'s
    (deep copies in eval mode, ``no_grad``, ``warmup`` untimed calls, the
    median of 7 timed runs of ``torch.utils.benchmark``), on the device
    ``model``'s parameters are on. Variants with the same architecture on
    the same input (the identical blocks of one stage, or ``S`` and the
    teacher's block) are timed once and share the figure: the estimate of a
    plan does not pay their noise twice and the table costs a fraction of
    blocks × specs timings. ``rounds`` > 1 times everything (the whole
    teacher included) that many times round-robin and keeps each median: on
    a machine whose load drifts, every entry then sees the same spread of
    conditions. ``timer`` replaces the measurement (tests use a
    deterministic one). Never mutates ``model`` or the variants.

    >>> import fxswap
    >>> teacher = fxswap.models.wrn(10, 1)
    >>> student = fxswap.cheapen(teacher, "B(2)")
    >>> variants = {b.name: {"S": teacher.get_submodule(b.name), "B(2)": student.get_submodule(b.name)}
    ...             for b in fxswap.find_blocks(teacher)}
    >>> params_as_ms = lambda module, args, kwargs: float(sum(p.numel() for p in module.parameters()))
    >>> t = block_latency_table(teacher, variants, (3, 32, 32), batch=2, timer=params_as_ms)
    >>> t.estimate({name: "B(2)" for name in variants}) == sum(p.numel() for p in student.parameters())
    True
    """
    input_shape = check_input_shape(input_shape)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise FxswapError(f"batch must be a positive integer, got {batch!r}")
    if warmup < 0 or min_run_time <= 0:
        raise FxswapError(f"warmup must be >= 0 and min_run_time > 0, got {warmup!r} and {min_run_time!r}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise FxswapError(f"rounds must be a positive integer, got {rounds!r}")
    threads = num_threads or torch.get_num_threads()
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32

    def measure(module: nn.Module, args: tuple, kwargs: dict) -> float:
        if timer is not None:
            ms = timer(module, args, kwargs)
        else:
            ms = _time(_call(module, args, kwargs), warmup, min_run_time, threads).median_ms
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not ms >= 0 or ms == float("inf"):
            raise FxswapError(f"a latency measurement must be a finite number of milliseconds >= 0, got {ms!r}")
        return float(ms)

    work = copy.deepcopy(model).eval()
    x = torch.randn((batch, *input_shape), device=device, dtype=dtype)
    names = list(variants)
    jobs: dict[tuple, tuple] = {("total",): (work, (x,), {})}  # signature -> what to time, first seen first

    def job(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        key = _signature(module, args, kwargs)
        jobs.setdefault(key, (copy.deepcopy(module).eval(), args, kwargs))
        return key

    with torch.no_grad():
        inputs = _block_inputs(work, names, x)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise FxswapError(f"block(s) {missing} are not modules the forward pass calls; a latency table times "
                              f"block modules")
        teacher_keys = {n: job(work.get_submodule(n), *inputs[n]) for n in names}
        block_keys = {n: {spec: job(module, *inputs[n]) for spec, module in variants[n].items()} for n in names}
        # round-robin: each round times every job once, so slow drift of the machine's load reaches all entries
        runs = {key: [] for key in jobs}
        for _ in range(rounds):
            for key, (module, args, kwargs) in jobs.items():
                runs[key].append(measure(module, args, kwargs))
    ms = {key: _quantile(sorted(values), 0.5) for key, values in runs.items()}
    teacher = {n: ms[k] for n, k in teacher_keys.items()}
    blocks = {n: {spec: ms[k] for spec, k in row.items()} for n, row in block_keys.items()}
    return BlockLatencyTable(ms[("total",)], teacher, blocks, str(device), batch, input_shape, threads)


def _signature(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """What decides a module's latency: its architecture (modules, plain settings, traced code) and its input."""
    def settings(m: nn.Module) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in vars(m).items()
                            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple))))

    def layout(value) -> tuple:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
        if isinstance(value, (tuple, list)):
            return tuple(layout(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, layout(v)) for k, v in sorted(value.items()))
        return ("value", repr(value))

    arch = tuple((type(m).__qualname__, settings(m), str(getattr(m, "code", ""))) for m in module.modules())
    return repr(module), arch, layout(args), layout(kwargs)


def check_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` (one sample, no batch dimension) as a tuple of positive ints, or a clear error.

    The one check of :func:`latency`, :func:`block_latency_table` and
    :func:`fxswap.count`: whole numbers only (``operator.index``: no floats,
    strings or bools).

    >>> check_input_shape([3, 32, 32])
    (3, 32, 32)
    >>> check_input_shape((3, 32.0, 32))
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: input_shape must be a tuple of positive ints for one sample (no batch dimension), e.g. (3, 32, 32); got (3, 32.0, 32)
    """
    try:
        shape = tuple(operator.index(d) if not isinstance(d, bool) else None for d in input_shape)
    except TypeError:
        shape = ()
    if not shape or None in shape or min(shape) < 1:
        raise FxswapError(f"input_shape must be a tuple of positive ints for one sample (no batch dimension), "
                          f"e.g. (3, 32, 32); got {input_shape!r}")
    return shape


def _call(module: nn.Module, args: tuple, kwargs: dict):
    return lambda: module(*args, **kwargs)


def _block_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """The (args, kwargs) each named block module receives in one forward pass.

    A block that is not a module of its own (it lives in a parent's forward)
    or that the forward pass never calls has no entry and gets no row.
    """
    modules = dict(model.named_modules())
    seen: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name in names:
        if name and name in modules:
            def hook(_module, args, kwargs, name=name):
                # a clone, so that an in-place op later in the model cannot change it
                seen.setdefault(name, _clone((args, kwargs)))
            handles.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(x)
    except Exception as exc:
        raise FxswapError(f"{type(model).__name__} failed on an input of shape {tuple(x.shape)}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    return {n: seen[n] for n in names if n in seen}


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _time(fn, warmup: int, min_run_time: float, threads: int, repeats: int = 7) -> Timing:
    """Median and IQR of ``repeats`` or more timed blocks, each of ``number`` calls.

    ``number`` is chosen so one block takes about ``min_run_time / repeats``:
    each block is long enough for the clock, and there are enough of them for
    an honest spread (``blocked_autorange`` alone may time one single block).
    """
    import time

    benchmark = _timer_module()
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    once = max((time.perf_counter() - start) / max(warmup, 1), 1e-7)
    number = max(1, int(min_run_time / repeats / once))
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    per_call = sorted(timer.timeit(number).median for _ in range(repeats))
    return Timing(median_ms=_quantile(per_call, 0.5) * 1e3,
                  iqr_ms=(_quantile(per_call, 0.75) - _quantile(per_call, 0.25)) * 1e3,
                  runs=repeats * number)


class _NoCudaRuntimeNote(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def _timer_module():
    """``torch.utils.benchmark``, imported without torch's ``No CUDA runtime is found`` log line.

    Importing it imports ``torch.utils.cpp_extension``, which logs that line on
    every CPU-only machine with a CUDA toolkit installed (``nvcc`` on the PATH
    or ``CUDA_HOME`` set), although timing never compiles anything. Only that
    one message is dropped, and only during the import: every other warning
    and log record still reaches the user.

    >>> _timer_module().Timer.__name__
    'Timer'
    """
    log = logging.getLogger("torch.utils.cpp_extension")
    quiet = _NoCudaRuntimeNote()
    log.addFilter(quiet)
    try:
        from torch.utils import benchmark
    finally:
        log.removeFilter(quiet)
    return benchmark


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|us|µs)\s*")


def is_duration(text) -> bool:
    """Whether ``text`` reads as a duration (``"25ms"``, ``"0.1 s"``, ``"800us"``).

    >>> is_duration("25ms"), is_duration("60%latency"), is_duration(25)
    (True, False, False)
    """
    return isinstance(text, str) and _DURATION.fullmatch(text) is not None


def parse_duration(text: str | float) -> float:
    """A duration in milliseconds: ``"25ms"``, ``"0.1s"``, ``"800us"``, or a number (already ms).

    >>> parse_duration("25ms"), parse_duration("0.1 s"), parse_duration(7)
    (25.0, 100.0, 7.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise FxswapError(f"a duration must be positive, got {text!r}")
        return float(text)
    m = _DURATION.fullmatch(str(text))
    if not m:
        raise FxswapError(f"cannot read {text!r} as a duration; write e.g. '25ms', '0.1s' or '800us'")
    value = float(m.group(1)) * {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}[m.group(2)]
    if value <= 0:
        raise FxswapError(f"a duration must be positive, got {text!r}")
    return value
