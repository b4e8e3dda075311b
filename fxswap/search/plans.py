"""BlockSwap (seed 003): sample mixed-block students under a budget, rank them by Fisher potential.

Three steps (seed 003 §4, Fig. 1):

1. *candidates*: each block may become any spec of a list, by default the
   paper's (``S, B(2), B(4), G(2…16), G(N/16…N/2), G(N), BG(2,2…16),
   BG(2,M/16…M/2), BG(2,M)``, :data:`PAPER_CANDIDATES`), or the reference
   code's 23 (``candidates="reference"``, :data:`REFERENCE_CANDIDATES`);
2. *sampling*: random configurations, one candidate per block drawn
   uniformly, kept when the network's parameter count (or MACs) is within
   ``±tolerance`` of the budget (the reference's ``var = 0.025 *
   param_budget`` in ``model_generator.py`` ``generate_archs``);
3. *ranking*: each sample's Fisher potential on one training minibatch at
   a random initialisation (:func:`fxswap.fisher_potential`); the highest wins.

What makes it cheap (benchmarks/blockswap_speed.py measures it):

* costs are *per block*: :class:`CostModel` cheapens the teacher once per
  candidate spec and reads each block's parameters and MACs off the result,
  so a configuration's cost is a sum of table entries (exact to the digit:
  ``cost(teacher) − Σ cost(replaced block) + Σ cost(its substitute)``);
  sampling builds no model (the reference does the same with ``p_dict``);
* scoring builds no model either: the block variants built for the cost
  table, each probed once after its last convolution, are swapped into one
  working network per sample (a random initialisation per (block, spec),
  reused across samples, seeded);
* gradients are taken for the probed activations only (no weight gradients,
  nothing below the first probe).

A *latency* budget (``budget="25ms"``, ``"60%latency"``, or a fraction with
``metric="latency"``; :func:`parse_budget`) works on a measured column of
the same table (:meth:`CostModel.measure_latency`): each block's module as
each spec cheapens it is timed, on the device the search runs on, at the
search's batch and input shape, on the input that block gets in the teacher
(:func:`fxswap.metrics.latency.block_latency_table`). A plan's latency is estimated
as ``teacher total − Σ teacher blocks + Σ chosen blocks``; a latency budget
is a ceiling, so a sample is kept when its estimate lies in
``[budget·(1 − tolerance), budget]``. ``docs/benchmarks.md`` measures how
close the estimate comes to timing the built student.

>>> import torch, fxswap
>>> teacher = fxswap.models.wrn(16, 1)
>>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
>>> result = blockswap(teacher, 0.5, (x, y), samples=4, candidates=["S", "G(N/4)", "B(2)"], macs=False)
>>> abs(result.candidates[0].params - result.budget) <= 0.025 * result.budget
True
>>> student = fxswap.cheapen(teacher, result.best)
>>> sum(p.numel() for p in student.parameters()) == result.candidates[0].params
True
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.block import Block, find_blocks
from ..errors import BudgetError, FxswapError, SpecError
from .costs import METRICS, CostTable
from .fisher import FisherScorer, fisher_potential, random_init
from ..surgery.applied import applied_plan
from ..surgery.rewrite import cheapen, is_larger, param_count
from ..precision import Precision, resolve_precision
from ..process_group import Dist, gather_objects, join
from ..seeding import derived_seed, seeded
from ..surgery.spec import BlockSpec, parse_spec
from ..metrics.latency import is_duration, parse_duration

__all__ = [
    "PAPER_CANDIDATES", "CostModel", "Candidate", "BlockSwapResult", "blockswap", "parse_budget", "sample_plans",
    "REFERENCE_CANDIDATES", "CANDIDATE_SETS", "candidate_specs", "budget_metric", "share_latency",
]

#: The candidate blocks of seed 003 §4 (the standard block ``S`` included).
PAPER_CANDIDATES: tuple[str, ...] = (
    "S", "B(2)", "B(4)",
    "G(2)", "G(4)", "G(8)", "G(16)",
    "G(N/16)", "G(N/8)", "G(N/4)", "G(N/2)", "G(N)",
    "BG(2,2)", "BG(2,4)", "BG(2,8)", "BG(2,16)",
    "BG(2,M/16)", "BG(2,M/8)", "BG(2,M/4)", "BG(2,M/2)", "BG(2,M)",
)

#: The candidate blocks the reference code searches (BayesWatch/pytorch-blockswap ``utils.py``
#: ``string_to_conv``, used by ``model_generator.py``), in its order: the paper's 21 without
#: ``BG(2,M)`` and with three bottleneck-4 grouped blocks, 23 in all. Its class names map as
#: ``DConvA<g>`` → ``G(g)``, ``DConvG<k>`` → ``G(N/k)`` (``groups = in_planes // k``), ``DConv`` →
#: ``G(N)``, ``ConvB<b>`` → ``B(b)``, ``A<g>B<b>`` → ``BG(b,g)``, ``G<k>B<b>`` → ``BG(b,M/k)``
#: (``groups = bottleneck // k``).
REFERENCE_CANDIDATES: tuple[str, ...] = (
    "S",                                                  # Conv
    "G(2)", "G(4)", "G(8)", "G(16)",                      # DConvA2..16
    "G(N/16)", "G(N/8)", "G(N/4)", "G(N/2)", "G(N)",      # DConvG16..2, DConv
    "B(2)", "B(4)",                                       # ConvB2, ConvB4
    "BG(2,2)", "BG(2,4)", "BG(2,8)", "BG(2,16)",          # A2B2..A16B2
    "BG(2,M/16)", "BG(2,M/8)", "BG(4,M/8)", "BG(2,M/4)",  # G16B2, G8B2, G8B4, G4B2
    "BG(2,M/2)", "BG(4,M/4)", "BG(4,M/2)",                # G2B2, G4B4, G2B4
)

#: Candidate sets by name: ``candidates="reference"`` (or the name as one entry of a list,
#: e.g. ``fxswap search --candidates reference``) selects one.
CANDIDATE_SETS: dict[str, tuple[str, ...]] = {"paper": PAPER_CANDIDATES, "reference": REFERENCE_CANDIDATES}


def candidate_specs(candidates: str | Sequence[str | BlockSpec] | None = None) -> list[str]:
    """The candidate specs ``candidates`` names: ``None`` → :data:`PAPER_CANDIDATES`, a set name
    (:data:`CANDIDATE_SETS`) → that set, a list → its specs, where an entry naming a set stands for it;
    canonical, duplicates dropped, in order.

    >>> len(candidate_specs()), len(candidate_specs("reference")), candidate_specs(["S", "g(n/4)", "G(N/4)"])
    (21, 23, ['S', 'G(N/4)'])
    >>> sorted(set(candidate_specs("reference")) ^ set(candidate_specs("paper")))
    ['BG(2,M)', 'BG(4,M/2)', 'BG(4,M/4)', 'BG(4,M/8)']
    """
    if candidates is None:
        candidates = PAPER_CANDIDATES
    if isinstance(candidates, (str, BlockSpec)):
        candidates = [candidates]
    out: list[str] = []
    for c in candidates:
        key = c.strip().lower() if isinstance(c, str) else None
        for spec in (CANDIDATE_SETS[key] if key in CANDIDATE_SETS else (c,)):
            try:
                out.append(str(parse_spec(spec)))
            except SpecError as exc:
                raise SpecError(f"{exc} (or name a candidate set: {', '.join(CANDIDATE_SETS)})") from None
    return list(dict.fromkeys(out))


def _batch_source(fresh_batch) -> Callable[[], tuple] | None:
    """``fresh_batch`` as a function drawing the next ``(x, y)``: a callable as is, an iterable (a
    DataLoader) through one iterator, restarted when it runs out (a new shuffle, new augmentations)."""
    if fresh_batch is None:
        return None
    if callable(fresh_batch):
        draw = fresh_batch
    elif hasattr(fresh_batch, "__iter__"):
        it = iter(fresh_batch)

        def draw():
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(fresh_batch)
                return next(it)
    else:
        raise FxswapError(f"fresh_batch must be a callable returning (x, y) or an iterable of (x, y) minibatches "
                          f"(a DataLoader), got {type(fresh_batch).__name__}")

    def checked():
        b = draw()
        if not (isinstance(b, (tuple, list)) and len(b) >= 2 and all(isinstance(t, torch.Tensor) for t in b[:2])):
            raise FxswapError(f"fresh_batch gave {type(b).__name__}; it must give (x, y) tensor pairs")
        return b[0], b[1]

    return checked



_BUDGET_FORMS = ("a parameter count (400000, 400k, 1.2M), a fraction of the teacher in (0, 1] (0.25) or a "
                 "percentage in (0, 100] (25%)")


_LATENCY_FORMS = ("a duration ('25ms', '0.1s', '800us'), a fraction of the teacher's measured latency in (0, 1] "
                  "(0.6) or a percentage in (0, 100] ('60%', '60%latency')")


def _is_latency_text(budget) -> bool:
    return isinstance(budget, str) and (is_duration(budget) or budget.strip().lower().endswith("latency"))


def budget_metric(budget, metric: str | None = None) -> str:
    """What a budget counts: ``metric`` if given, else ``"latency"`` for a duration
    (``"25ms"``) or ``"…latency"`` (``"60%latency"``), else ``"params"``.

    >>> budget_metric("25ms"), budget_metric("60% latency"), budget_metric("400k"), budget_metric(0.5, "macs")
    ('latency', 'latency', 'params', 'macs')
    >>> budget_metric("25ms", "params")
    Traceback (most recent call last):
    ...
    fxswap.errors.BudgetError: budget '25ms' is a latency budget but metric='params'; leave metric unset or pass metric='latency'
    """
    if metric is not None and metric not in METRICS:
        raise BudgetError(f"budget metric must be one of {METRICS}, got {metric!r}")
    timed = _is_latency_text(budget)
    if metric is None:
        return "latency" if timed else "params"
    if timed and metric != "latency":
        raise BudgetError(f"budget {budget!r} is a latency budget but metric={metric!r}; leave metric unset or "
                          f"pass metric='latency'")
    return metric


def parse_budget(budget, total, metric: str = "params"):
    """An absolute budget from an int (a count), a float in (0, 1] (a fraction of
    ``total``) or a string: ``"400k"``, ``"1.2M"``, ``"25%"``, ``"0.25"``.

    A number above 1 without a unit must be a whole count; ``"150%"``,
    ``"1.5"``, NaN and infinities raise :class:`~fxswap.errors.BudgetError`.

    With ``metric="latency"`` the budget is milliseconds (a float): a duration
    (``"25ms"``, ``"0.1s"``, ``"800us"``), or a fraction (``0.6``, ``"60%"``,
    ``"60%latency"``) of ``total``, the teacher's measured latency in ms. A
    bare number above 1 is refused there: write its unit.

    >>> parse_budget("400k", 2_243_546), parse_budget(0.25, 2_000_000), parse_budget("1.5M", 0)
    (400000, 500000, 1500000)
    >>> parse_budget("150%", 1000)
    Traceback (most recent call last):
    ...
    fxswap.errors.BudgetError: budget '150%': a percentage must be in (0, 100]; use a parameter count ...
    >>> parse_budget("25ms", 40.0, "latency"), parse_budget("60%latency", 40.0, "latency"), parse_budget(0.5, 40.0, "latency")
    (25.0, 24.0, 20.0)
    >>> parse_budget(25, 40.0, "latency")
    Traceback (most recent call last):
    ...
    fxswap.errors.BudgetError: latency budget 25: a bare number above 1 has no unit; use a duration ('25ms', ...
    """
    if metric == "latency":
        return _latency_budget(budget, total)
    if _is_latency_text(budget):
        raise BudgetError(f"budget {budget!r} is a latency budget, not a {metric} count; use metric='latency' "
                          f"(or leave it unset), or {_BUDGET_FORMS}")
    if isinstance(budget, str):
        text = budget.strip().replace("_", "").replace(",", "")
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG%]?)", text)
        if not m:
            raise BudgetError(f"budget {budget!r}: use {_BUDGET_FORMS}")
        value, unit = float(m.group(1)), m.group(2).lower()
        if unit == "%":
            if not 0 < value <= 100:
                raise BudgetError(f"budget {budget!r}: a percentage must be in (0, 100]; use {_BUDGET_FORMS}")
            return parse_budget(value / 100, total)
        if unit:
            return _whole(value * {"k": 1e3, "m": 1e6, "g": 1e9}[unit], budget)
        budget = value
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise BudgetError(f"budget {budget!r}: use {_BUDGET_FORMS}")
    if budget <= 1 and isinstance(budget, float):
        return max(1, int(round(budget * total)))
    if budget != int(budget):
        raise BudgetError(f"budget {budget!r}: above 1 it is a count and must be whole; use {_BUDGET_FORMS}")
    return int(budget)


def _latency_budget(budget, total) -> float:
    """Milliseconds from a duration, or from a fraction/percentage of ``total`` (the teacher's ms)."""
    fraction = None
    if isinstance(budget, str):
        text = budget.strip()
        if is_duration(text):
            try:
                return parse_duration(text)
            except FxswapError as exc:
                raise BudgetError(f"latency budget {budget!r}: {exc}; use {_LATENCY_FORMS}") from None
        text = re.sub(r"\s*latency$", "", text, flags=re.IGNORECASE)
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%?)", text)
        if not m:
            raise BudgetError(f"latency budget {budget!r}: use {_LATENCY_FORMS}")
        value = float(m.group(1))
        if m.group(2):
            if not 0 < value <= 100:
                raise BudgetError(f"latency budget {budget!r}: a percentage must be in (0, 100]; use {_LATENCY_FORMS}")
            fraction = value / 100
        else:
            budget = value
    if fraction is None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
                or budget <= 0:
            raise BudgetError(f"latency budget {budget!r}: use {_LATENCY_FORMS}")
        if budget > 1:
            raise BudgetError(f"latency budget {budget!r}: a bare number above 1 has no unit; use {_LATENCY_FORMS}")
        fraction = float(budget)
    if total is None or not total > 0:
        raise BudgetError(f"latency budget {budget!r} is a fraction of the teacher's latency, which has not been "
                          f"measured; measure it (CostModel.measure_latency) or give a duration such as '25ms'")
    return fraction * float(total)


def _whole(value: float, text) -> int:
    count = int(round(value))
    if count < 1:
        raise BudgetError(f"budget {text!r} is less than one; use {_BUDGET_FORMS}")
    return count


class CostModel:
    """The search space of one teacher and candidate list: a :class:`~fxswap.search.costs.CostTable`
    (``.table``) and a :class:`~fxswap.search.fisher.FisherScorer` (``.scorer``) over the same block variants.

    Built once: one :func:`fxswap.cheapen` per spec (a block the spec cannot
    apply to is tried alone, and left out of that block's options if it still
    fails), whose blocks are read off for the table and kept for the scorer.
    A plan's cost is ``fixed + Σ block costs``, equal to what
    ``count(cheapen(teacher, plan))`` reports. ``reinit`` (default)
    re-initialises the network with ``seed`` (:func:`fxswap.search.fisher.random_init`):
    BlockSwap scores randomly initialised networks. Each spec's substitutes are
    initialised from a seed derived from ``(seed, spec)``. ``precision``: the
    scorer's (:func:`~fxswap.search.fisher.fisher_potential`).

    A spec that makes a block larger than the teacher's block is not among that
    block's options (:func:`fxswap.surgery.rewrite.is_larger`, the rule
    :func:`fxswap.cheapen` refuses by), so every plan sampled builds with
    ``cheapen(teacher, plan)``; ``allow_larger=True`` offers it, and the plan
    then needs ``cheapen(..., allow_larger=True)``. Why a spec is not offered
    for a block is in :attr:`skipped`.

    >>> from fxswap.models import wrn
    >>> cm = CostModel(wrn(10, 1), ["S", "G(N/4)"], macs=False)
    >>> cm.cost({"layer1.0": "G(N/4)", "layer2.0": "S", "layer3.0": "S"})
    74970
    >>> from fxswap import cheapen
    >>> sum(p.numel() for p in cheapen(wrn(10, 1), {"layer1.*": "G(N/4)"}).parameters())
    74970
    """

    def __init__(self, teacher: nn.Module, candidates: Sequence[str | BlockSpec] | None = None, *,
                 input_shape: tuple[int, ...] | None = None, macs: bool = True, seed: int = 0,
                 reinit: bool = True, leaf_modules=(), allow_larger: bool = False,
                 precision: str | Precision = "auto"):
        self.specs = candidate_specs(candidates)
        if not self.specs:
            raise SpecError("blockswap needs at least one candidate spec")
        self.seed, self.leaf_modules, self.allow_larger = seed, tuple(leaf_modules), bool(allow_larger)
        self.base = copy.deepcopy(teacher)
        if reinit:
            random_init(self.base, seed)
        self.blocks: list[Block] = find_blocks(self.base, leaf_modules)
        self.names = [b.name for b in self.blocks]
        self._check_swappable()
        self.has_macs = bool(macs)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if macs and self.input_shape is None:
            from ..models.registry import default_input_shape

            self.input_shape = default_input_shape(self.base)
        self.variants: dict[str, dict[str, nn.Module]] = {n: {} for n in self.names}
        self.points: dict[str, dict[str, str | None]] = {n: {} for n in self.names}
        self.table = self._empty_table()
        for spec in self.specs:
            for student, names in self._built(spec):
                self._read_blocks(spec, student, names)
        empty = [n for n in self.names if not self.table.params[n]]
        if empty:
            raise SpecError(f"no candidate spec applies to block(s) {empty}: "
                            f"{ {n: self.table.skipped.get(n) for n in empty} }")
        self.scorer = FisherScorer(self.base, self.variants, self.points, self.leaf_modules, precision=precision)

    def _costs(self, model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
        """(params, MACs) of ``model`` (key ``""``) and of each block module."""
        from ..metrics.counting import macs_by_module

        macs = macs_by_module(model, self.input_shape) if self.has_macs else {}
        params = {n: param_count(model.get_submodule(n)) for n in self.names}
        params[""] = param_count(model)
        return params, {k: int(v) for k, v in macs.items()}

    def _empty_table(self) -> CostTable:
        params, macs = self._costs(self.base)
        fixed = {"params": params[""] - sum(params[n] for n in self.names)}
        teacher = {"params": params[""]}
        if self.has_macs:
            teacher["macs"] = macs.get("", 0)
            fixed["macs"] = teacher["macs"] - sum(macs.get(n, 0) for n in self.names)
        self._teacher_blocks = params
        return CostTable(list(self.names), {n: {} for n in self.names},
                         {n: {} for n in self.names} if self.has_macs else None, fixed=fixed, teacher=teacher)

    def _built(self, spec: str) -> list[tuple[nn.Module, list[str]]]:
        """The networks holding ``spec``'s variant of each block: one for all, or one per block that takes it."""
        if parse_spec(spec).kind == "S":
            return [(self.base, self.names)]
        try:
            return [(self._cheapen(spec, spec), self.names)]
        except SpecError:
            built = []
            for n in self.names:
                try:
                    built.append((self._cheapen({n: spec}, spec), [n]))
                except SpecError as exc:
                    self.table.skipped.setdefault(n, {})[spec] = str(exc)
            return built

    def _read_blocks(self, spec: str, student: nn.Module, names: list[str]) -> None:
        if student is not self.base:  # "S" is the teacher itself
            applied = applied_plan(student)
            for n in [n for n in names if n in applied.kept]:  # a whole-model spec kept it: not an option
                self.table.skipped.setdefault(n, {})[spec] = applied.kept[n]
            names = [n for n in names if applied.plan[n] == spec]
        params, macs = self._costs(student)
        points = {b.name: b.last_conv for b in find_blocks(student, self.leaf_modules)}
        expected = self.table.teacher["params"] + sum(params[n] - self._teacher_blocks[n] for n in names)
        if expected != params[""]:
            raise FxswapError(
                f"{spec} changes the network outside its blocks' modules ({params['']} params, block sums give "
                f"{expected}): blockswap needs each block's rewrite to stay inside the block's module")
        for n in names:
            if not self.allow_larger and is_larger(self._teacher_blocks[n], params[n]):
                self.table.skipped.setdefault(n, {})[spec] = (f"would be larger: {self._teacher_blocks[n]:,} -> "
                                                             f"{params[n]:,} parameters")
                continue
            self.table.params[n][spec] = params[n]
            if self.table.macs is not None:
                self.table.macs[n][spec] = macs.get(n, 0)
            self.variants[n][spec] = student.get_submodule(n)
            point = points.get(n)
            self.points[n][spec] = point[len(n) + 1:] if point and point.startswith(n + ".") else None

    def _check_swappable(self) -> None:
        modules = dict(self.base.named_modules())
        for n in self.names:
            if n not in modules or not n:
                raise FxswapError(f"block {n!r} is not a module of its own; blockswap swaps block modules "
                                  f"(ResNet/WRN-style models whose blocks are submodules)")
        for a in self.names:
            for b in self.names:
                if a != b and b.startswith(a + "."):
                    raise FxswapError(f"blocks {a!r} and {b!r} are nested; blockswap needs disjoint block modules")

    def _cheapen(self, plan, spec: str) -> nn.Module:
        key = spec if isinstance(plan, str) else f"{spec}@{next(iter(plan))}"
        with warnings.catch_warnings(), seeded(derived_seed(self.seed, key)):
            warnings.simplefilter("ignore")
            return cheapen(self.base, plan, leaf_modules=self.leaf_modules, strict=True,
                           allow_larger=self.allow_larger)

    # -- the table's answers, for a plan in any form cheapen accepts ---------------------------
    @property
    def skipped(self) -> dict[str, dict[str, str]]:
        """``{block: {spec: why it does not apply}}``."""
        return self.table.skipped

    @property
    def teacher_params(self) -> int:
        return self.table.teacher["params"]

    @property
    def teacher_macs(self) -> int | None:
        return self.table.teacher.get("macs")

    @property
    def teacher_latency(self) -> float | None:
        """The teacher's measured latency in ms (``None`` before :meth:`measure_latency`)."""
        return self.table.teacher.get("latency")

    @property
    def has_latency(self) -> bool:
        """Whether the table has its measured latency column."""
        return self.table.latency is not None

    def measure_latency(self, batch: int = 1, *, warmup: int = 3, min_run_time: float = 0.2,
                        num_threads: int | None = None, timer=None, rounds: int = 1):
        """Time every block × candidate variant and the teacher: the table's ``latency`` column (ms).

        On the device the (re-initialised) teacher is on, at ``batch`` and the
        table's input shape, each variant on the input its block receives in
        the teacher (:func:`fxswap.metrics.latency.block_latency_table`, the measurement
        of :func:`fxswap.latency`; ``timer`` replaces it; ``rounds`` repeats it
        round-robin and keeps medians). ``fixed`` becomes
        the teacher total minus its blocks, so ``cost(plan, "latency")`` is
        ``teacher total − Σ teacher blocks + Σ chosen blocks``: exact for the
        teacher, an estimate otherwise. Returns the
        :class:`~fxswap.metrics.latency.BlockLatencyTable`.

        >>> from fxswap.models import wrn
        >>> cm = CostModel(wrn(10, 1), ["S", "B(2)"], input_shape=(3, 16, 16), macs=False)
        >>> t = cm.measure_latency(2, timer=lambda module, args, kwargs: 1.0)  # every module "takes 1 ms"
        >>> cm.total("latency"), cm.cost({"layer1.*": "B(2)"}, "latency"), cm.table.measured_on
        (1.0, 1.0, '(cpu, batch 2, input (3, 16, 16), ... threads)')
        """
        from ..metrics.latency import block_latency_table

        shape = self.input_shape
        if shape is None:
            from ..models.registry import default_input_shape

            shape = default_input_shape(self.base)
        measured = block_latency_table(self.base, self.variants, shape, batch, warmup=warmup,
                                       min_run_time=min_run_time, num_threads=num_threads, timer=timer,
                                       rounds=rounds)
        self.table.latency = {n: {s: measured.blocks[n][s] for s in self.table.params[n]} for n in self.names}
        self.table.teacher["latency"] = measured.total_ms
        self.table.fixed["latency"] = measured.fixed_ms
        self.table.measured_on = measured.conditions()
        return measured

    def options(self, name: str) -> list[str]:
        """The specs block ``name`` may take (those that apply to it), in candidate order."""
        return self.table.options(name)

    def cost(self, plan, metric: str = "params") -> int:
        """Exact parameter count (or MACs) of ``cheapen(teacher, plan)``, from the table (latency: estimated ms)."""
        return self.table.cost(self.resolve(plan), metric)

    def total(self, metric: str = "params") -> int:
        """The (re-initialised) teacher's parameter count or MACs."""
        return self.table.total(metric)

    def reachable(self, metric: str = "params") -> tuple[int, int]:
        """(cheapest, dearest) cost over all configurations of the candidates."""
        return self.table.reachable(metric)

    def resolve(self, plan) -> dict[str, str]:
        """``plan`` as one candidate spec per block; a spec a block cannot take is a :class:`SpecError`."""
        from ..surgery.rewrite import resolve_plan

        if isinstance(plan, dict) and set(plan) == set(self.names):
            specs = {n: str(parse_spec(plan[n])) for n in self.names}
        else:
            specs = {n: str(s) for n, s in resolve_plan(self.blocks, plan).items()}
        for n, s in specs.items():
            if s not in self.table.params[n]:
                why = self.table.skipped.get(n, {}).get(s, "it is not among the candidates")
                raise SpecError(f"block {n!r} cannot take {s}: {why}")
        return specs

    # -- the scorer ------------------------------------------------------------------------------
    def build(self, plan) -> nn.Module:
        """A standalone network for ``plan`` with exactly the weights the scorer uses."""
        return self.scorer.build(self.resolve(plan))

    def score(self, plan, batch, loss_fn: Callable = F.cross_entropy, *, init_seed: int | None = None,
              precision: str | Precision | None = None) -> tuple[float, dict[str, float]]:
        """Fisher potential of ``plan`` (total, per block), without building a network.

        Equal to ``fisher_potential(self.build(plan), batch, loss_fn)``. With
        ``init_seed`` the plan's network is built and freshly initialised
        (:func:`~fxswap.search.fisher.random_init` with that seed) before scoring, as
        the reference builds a new ``WideResNet`` per candidate
        (``model_generator.py`` ``rank_arch``); slower, and the table's variants
        are left as they were. ``precision``: default the scorer's.

        >>> import torch
        >>> from fxswap.models import wrn
        >>> cm = CostModel(wrn(10, 1), ["S", "G(N/4)"], macs=False)
        >>> plan, batch = {"layer*": "G(N/4)"}, (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
        >>> cm.score(plan, batch, init_seed=1) == cm.score(plan, batch, init_seed=1) != cm.score(plan, batch)
        True
        """
        if init_seed is None:
            return self.scorer.score(self.resolve(plan), batch, loss_fn, precision=precision)
        net = random_init(self.build(plan), init_seed)
        fp = fisher_potential(net, batch, loss_fn, leaf_modules=self.leaf_modules,
                              precision=self.scorer.precision if precision is None else precision)
        return fp.total, dict(fp.blocks)


def sample_plans(cost_model: CostModel, budget: int, samples: int, *, tolerance: float = 0.025,
                 metric: str = "params", seed: int = 0, max_draws: int = 2_000_000) -> list[dict[str, str]]:
    """Random configurations whose cost lies within ``budget ± tolerance·budget``.

    Each block's spec is drawn uniformly from its options and the draw kept
    if the total is in the window (the reference's rejection sampling, in
    vectorised chunks). When the window is too narrow for that to find
    ``samples`` distinct plans within ``max_draws`` draws, the rest come from
    the same distribution (uniform over the configurations in the window)
    by dynamic programming over binned costs, each checked exactly. Raises
    :class:`fxswap.BudgetError` if no configuration can meet the budget.

    >>> from fxswap.models import wrn
    >>> cm = CostModel(wrn(16, 1), ["S", "G(N/4)", "B(2)"], macs=False)
    >>> plans = sample_plans(cm, 100_000, 3, seed=1)
    >>> all(abs(cm.cost(p) - 100_000) <= 2_500 for p in plans), len(plans)
    (True, 3)
    """
    if samples < 1:
        raise BudgetError(f"samples must be at least 1, got {samples}")
    if not 0 <= tolerance < 1:
        raise BudgetError(f"tolerance is a fraction of the budget in [0, 1), got {tolerance}")
    table, fixed = cost_model.table.column(metric)
    names = cost_model.names
    opts = [list(table[n]) for n in names]
    timed = metric == "latency"
    costs = [np.array([table[n][s] for s in o], dtype=np.float64 if timed else np.int64) for n, o in zip(names, opts)]
    # a latency budget is a ceiling: within tolerance below it, never above (estimates are in ms)
    lo, hi = (budget - tolerance * budget, budget * (1 + 1e-9) if timed else budget + tolerance * budget)
    cheapest, dearest = cost_model.reachable(metric)
    unit = {"params": "parameters", "macs": "MACs"}.get(metric, "ms")
    if timed and (hi < cheapest or lo > dearest):
        raise BudgetError(
            f"no configuration of the candidates meets a latency budget of {budget:.4g} ms (kept: estimates in "
            f"[{lo:.4g}, {hi:.4g}] ms, tolerance {tolerance:.1%} below it): the fastest reachable is "
            f"{cheapest:.4g} ms and the slowest {dearest:.4g} ms (teacher: {cost_model.total(metric):.4g} ms, "
            f"measured {cost_model.table.measured_on}); choose a budget in that range, widen the tolerance or add "
            f"faster/slower candidates")
    if hi < cheapest or lo > dearest:
        raise BudgetError(
            f"no configuration of the candidates meets a budget of {budget:,} {unit} ±{tolerance:.1%} "
            f"([{int(np.ceil(lo)):,}, {int(hi):,}]): the cheapest reachable is {cheapest:,} and the dearest "
            f"{dearest:,} (teacher: {cost_model.total(metric):,}); choose a budget in that range, widen the "
            f"tolerance or add cheaper/dearer candidates")
    rng = np.random.default_rng(seed)
    found: dict[tuple, None] = {}
    chunk = int(min(max(4 * samples, 4096), 65536))
    draws = 0
    while len(found) < samples and draws < max_draws:
        idx = np.stack([rng.integers(0, len(o), size=chunk) for o in opts], axis=1)
        totals = fixed + sum(c[idx[:, b]] for b, c in enumerate(costs))
        ok = (totals >= lo) & (totals <= hi)
        for row in idx[ok]:
            found.setdefault(tuple(int(v) for v in row))
            if len(found) >= samples:
                break
        draws += chunk
    if len(found) < samples:
        _dp_sample(costs, fixed, lo, hi, samples, found, rng)
    if not found and timed:
        raise BudgetError(
            f"no configuration of the candidates meets a latency budget of {budget:.4g} ms: the reachable "
            f"estimates range over [{cheapest:.4g}, {dearest:.4g}] ms but none falls in [{lo:.4g}, {hi:.4g}] ms; "
            f"widen the tolerance")
    if not found:
        raise BudgetError(
            f"no configuration of the candidates meets a budget of {budget:,} {unit} ±{tolerance:.1%}: the "
            f"reachable costs range over [{cheapest:,}, {dearest:,}] but none falls in [{int(np.ceil(lo)):,}, "
            f"{int(hi):,}]; widen the tolerance")
    if len(found) < samples:
        warnings.warn(f"only {len(found)} distinct configurations meet the budget (asked for {samples})",
                      stacklevel=2)
    return [{n: opts[b][i] for b, (n, i) in enumerate(zip(names, row))} for row in found]


def _dp_sample(costs, fixed, lo, hi, samples, found, rng, tries_per_sample: int = 20) -> None:
    """Uniform sampling over configurations in [lo, hi] by counting them per binned cost."""
    width = max(hi - lo, 1.0)
    step = max(1, int(width // 256))
    if any(c.dtype.kind == "f" for c in costs):  # measured milliseconds: bins finer than one unit, not unbounded
        spread = sum(float(c.max() - c.min()) for c in costs)
        step = max((hi - lo) / 256, spread / 100_000, 1e-9)
    binned = [np.rint(c / step).astype(np.int64) for c in costs]
    mins = [int(b.min()) for b in binned]
    rel = [b - m for b, m in zip(binned, mins)]
    offset = fixed / step + sum(mins)
    size = sum(int(r.max()) for r in rel) + 1
    levels = [np.zeros(size)]
    levels[0][0] = 1.0
    for r in rel:
        prev, cur = levels[-1], np.zeros(size)
        for v in r:
            cur[v:] += prev[: size - v]
        cur /= cur.max()  # only ratios within a level matter
        levels.append(cur)
    slack = len(costs) // 2 + 1  # rounding errors accumulate by at most half a bin per block
    t_lo = max(int(np.floor(lo / step - offset)) - slack, 0)
    t_hi = min(int(np.ceil(hi / step - offset)) + slack, size - 1)
    if t_hi < t_lo:
        return
    weights = levels[-1][t_lo: t_hi + 1]
    if weights.sum() <= 0:
        return
    weights = weights / weights.sum()
    for _ in range(samples * tries_per_sample):
        if len(found) >= samples:
            return
        t = t_lo + int(rng.choice(len(weights), p=weights))
        row = [0] * len(costs)
        for b in range(len(costs) - 1, -1, -1):
            prev = levels[b]
            w = np.array([prev[t - v] if 0 <= t - v < size else 0.0 for v in rel[b]])
            if w.sum() <= 0:
                break
            i = int(rng.choice(len(w), p=w / w.sum()))
            row[b] = i
            t -= int(rel[b][i])
        else:
            total = fixed + sum(int(c[i]) for c, i in zip(costs, row))
            if lo <= total <= hi:
                found.setdefault(tuple(row))


@dataclass(frozen=True)
class Candidate:
    """One scored configuration: its plan (``{block: spec}``), costs and Fisher potential.

    ``latency_ms``: the estimated latency from the measured table (``None`` when not measured).

    >>> c = Candidate({"layer1.0": "S", "layer2.0": "G(N/4)"}, params=64506, macs=None, fisher=0.25)
    >>> c.to_dict()
    {'plan': {'layer1.0': 'S', 'layer2.0': 'G(N/4)'}, 'params': 64506, 'macs': None, 'fisher': 0.25, 'latency_ms': None}
    """

    plan: dict[str, str]
    params: int
    macs: int | None
    fisher: float
    blocks: dict[str, float] = field(default_factory=dict, repr=False)
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        return {"plan": dict(self.plan), "params": self.params, "macs": self.macs, "fisher": self.fisher,
                "latency_ms": self.latency_ms}


@dataclass
class BlockSwapResult:
    """What :func:`blockswap` found: ``best`` (a plan :func:`fxswap.cheapen` accepts),
    ``candidates`` (every scored sample, highest Fisher potential first).

    >>> import tempfile, os
    >>> r = BlockSwapResult([Candidate({"layer1.0": "B(2)", "layer2.0": "S"}, 50000, None, 0.5)], budget=50000)
    >>> r.best
    {'layer1.0': 'B(2)', 'layer2.0': 'S'}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     BlockSwapResult.from_json(r.to_json(os.path.join(d, "plan.json"))).best == r.best
    True
    """

    candidates: list[Candidate]
    budget: int
    metric: str = "params"
    tolerance: float = 0.025
    teacher_params: int | None = None
    teacher_macs: int | None = None
    seed: int = 0
    samples: int = 0
    seconds: float = 0.0
    model: str | None = None
    teacher_latency_ms: float | None = None
    latency_measured_on: str | None = None
    precision: str | None = None
    #: whether specs larger than the teacher's block were sampled (build with ``cheapen(..., allow_larger=True)``)
    allow_larger: bool = False

    @property
    def best(self) -> dict[str, str]:
        """The winning plan: one spec per block name."""
        return dict(self.candidates[0].plan)

    def table(self, top: int = 10) -> str:
        """The ``top`` candidates: rank, params, MACs, (estimated latency,) Fisher potential and their specs in block
        order."""
        from ..metrics.table import render_table

        timed = any(c.latency_ms is not None for c in self.candidates)
        rows = []
        for i, c in enumerate(self.candidates[:top]):
            latency = [f"{c.latency_ms:.2f}" if c.latency_ms is not None else "-"] if timed else []
            rows.append((i + 1, c.params, c.macs if c.macs is not None else "-", *latency, f"{c.fisher:.5g}",
                         " ".join(c.plan.values())))
        if self.metric == "latency":
            head = f"BlockSwap: {len(self.candidates)} samples within {self.budget:.4g} ms (-{self.tolerance:.1%})"
        else:
            head = f"BlockSwap: {len(self.candidates)} samples within {self.budget:,} {self.metric} ±{self.tolerance:.1%}"
        teacher = [f"{self.teacher_params:,} params"] if self.teacher_params else []
        if timed and self.teacher_latency_ms is not None:
            teacher.append(f"{self.teacher_latency_ms:.4g} ms")
        head += f" (teacher: {', '.join(teacher)})" if teacher else ""
        if timed:
            head += f"\nlatency: estimated from per-block timings {self.latency_measured_on or ''}".rstrip()
        columns = ["rank", "params", "MACs", *(["latency ms"] if timed else []), "fisher", "specs (block order)"]
        return head + "\n" + render_table(columns, rows)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self, top: int | None = None) -> dict:
        """The JSON form: ``{"plan", "params", "macs", "fisher", "budget", ..., "top": [...]}``; ``top``
        holds every scored candidate, best first (or the first ``top``)."""
        best = self.candidates[0]
        return {
            "plan": best.plan, "params": best.params, "macs": best.macs, "fisher": best.fisher,
            "budget": self.budget, "metric": self.metric, "tolerance": self.tolerance,
            "teacher_params": self.teacher_params, "teacher_macs": self.teacher_macs, "seed": self.seed,
            "samples": self.samples, "seconds": round(self.seconds, 3), "model": self.model,
            "latency_ms": best.latency_ms, "teacher_latency_ms": self.teacher_latency_ms,
            "latency_measured_on": self.latency_measured_on, "precision": self.precision,
            "allow_larger": self.allow_larger,
            "top": [c.to_dict() for c in self.candidates[:top]],
        }

    def to_json(self, path: str | Path, top: int | None = None) -> Path:
        """Save :meth:`to_dict` (every scored candidate by default) as JSON (``fxswap cheapen MODEL path.json``
        reads it)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(top), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "BlockSwapResult":
        """Load a result saved by :meth:`to_json` (its ``top`` candidates)."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or "plan" not in data:
            raise FxswapError(f"{path} is not a saved BlockSwap result (no 'plan' key)")
        tops = data.get("top") or [{k: data.get(k) for k in ("plan", "params", "macs", "fisher", "latency_ms")}]
        cands = [Candidate(dict(t["plan"]), t.get("params"), t.get("macs"), t.get("fisher"),
                           latency_ms=t.get("latency_ms")) for t in tops]
        return cls(cands, data.get("budget"), data.get("metric", "params"), data.get("tolerance", 0.025),
                   data.get("teacher_params"), data.get("teacher_macs"), data.get("seed", 0),
                   data.get("samples", len(cands)), data.get("seconds", 0.0), data.get("model"),
                   data.get("teacher_latency_ms"), data.get("latency_measured_on"), data.get("precision"),
                   bool(data.get("allow_larger")))


def share_latency(cost_model: CostModel, where: Dist) -> None:
    """Rank 0's latency column (if it measured one) for every rank of ``where``: the ranks sample from one table.

    >>> from fxswap.models import wrn
    >>> from fxswap.process_group import SINGLE
    >>> cm = CostModel(wrn(10, 1), ["S"], macs=False); share_latency(cm, SINGLE); cm.has_latency
    False
    """
    if where.world == 1:
        return
    t = cost_model.table
    mine = (t.latency, t.teacher.get("latency"), t.fixed.get("latency"), t.measured_on) if t.latency else None
    first = gather_objects(mine, where)[0]
    if first is not None:
        t.latency, t.teacher["latency"], t.fixed["latency"], t.measured_on = first


def _score_share(cost_model: CostModel, plans, batch, draw, loss_fn, seed: int, fresh_init: bool, where: Dist,
                 progress: bool, device, prec: Precision) -> list[Candidate]:
    """This rank's share of the candidates (samples rank, rank + world, ...), scored."""
    iterator = plans
    if progress and where.writer:
        from tqdm import tqdm

        iterator = tqdm(plans, desc="BlockSwap: scoring", unit="net")
    scored = []
    for i, plan in enumerate(iterator):
        # every rank draws every candidate's batch, so that the stream is the one process's
        b = batch if draw is None else tuple(t.to(device) if device is not None else t for t in draw())
        if i % where.world != where.rank:
            continue
        total, blocks = cost_model.score(plan, b, loss_fn, precision=prec,
                                         init_seed=derived_seed(seed, f"fresh-init/{i}") if fresh_init else None)
        scored.append(Candidate(plan, cost_model.cost(plan, "params"),
                                cost_model.cost(plan, "macs") if cost_model.has_macs else None, total, blocks,
                                cost_model.cost(plan, "latency") if cost_model.has_latency else None))
    return scored


def _gathered(scored: list[Candidate], where: Dist) -> list[Candidate]:
    """Every rank's candidates in sample order (rank r scored samples r, r + world, ...)."""
    if where.world == 1:
        return scored
    shares = gather_objects(scored, where)
    return [shares[i % where.world][i // where.world] for i in range(sum(len(s) for s in shares))]


def blockswap(teacher: nn.Module, budget, batch, samples: int = 1000, *,
              candidates: Sequence[str | BlockSpec] | None = None, tolerance: float = 0.025,
              metric: str | None = None, loss_fn: Callable = F.cross_entropy, seed: int = 0, reinit: bool = True,
              macs: bool = True, input_shape: tuple[int, ...] | None = None, progress: bool = False,
              leaf_modules=(), cost_model: CostModel | None = None, fresh_batch=None,
              fresh_init: bool = False, latency: bool = False,
              latency_batch: int | None = None, latency_options: dict | None = None,
              process_group=None, precision: str | Precision = "auto",
              allow_larger: bool = False) -> BlockSwapResult:
    """BlockSwap: the best of ``samples`` random configurations within ``budget``, by Fisher potential.

    ``budget``: an int (parameters, or MACs with ``metric="macs"``), a float
    in (0, 1] (a fraction of the teacher) or a string (``"400k"``);
    ``batch``: one training minibatch ``(x, y)`` (the paper uses the training
    batch size, 128 on CIFAR); ``candidates``: specs a block may become
    (default :data:`PAPER_CANDIDATES`); ``seed`` fixes the sampling and the
    random initialisation, so the same seed gives the same plan. ``macs``
    counts MACs (with fvcore, for ``input_shape``, default ``x``'s) for the
    table; a MAC budget needs it. A prebuilt ``cost_model`` may be reused
    across budgets. ``candidates="reference"`` searches the reference code's
    23 specs (:data:`REFERENCE_CANDIDATES`). A spec that would make a block
    larger than the teacher's is never sampled for it (the rule ``cheapen``
    refuses by, :func:`fxswap.surgery.rewrite.is_larger`) unless
    ``allow_larger=True``; then build with ``cheapen(..., allow_larger=True)``.

    As the reference scores (pytorch-blockswap ``rank_arch``: a new network and
    minibatch per candidate): ``fresh_batch`` (a callable returning ``(x, y)``
    or an iterable; ``batch`` may then be None) gives each candidate its own
    minibatch, ``fresh_init=True`` its own seeded initialisation. By default
    every candidate sees ``batch`` and one initialisation per (block, spec).

    A latency budget (``"25ms"``, ``"60%latency"``, or ``metric="latency"``
    with a fraction; :func:`budget_metric` reads ``metric`` off the budget
    when it is not given) measures the table's latency column first
    (:meth:`CostModel.measure_latency`, on the teacher's device, at
    ``latency_batch``, default the minibatch's size; ``latency_options``:
    ``warmup``, ``min_run_time``, ``num_threads``, ``timer``, ``rounds``) unless
    ``cost_model`` has it already, and keeps samples whose estimated latency
    lies in ``[budget·(1 − tolerance), budget]``. ``latency=True`` measures
    the column for a parameter or MAC budget too, to show it.

    ``precision``: the scoring's, as :func:`~fxswap.search.fisher.fisher_potential`'s (over
    ``cost_model``'s); recorded in the result and its JSON.

    Over several processes (``torchrun``; the group is ``process_group``,
    the initialised default one, or one :func:`fxswap.process_group.join`
    initialises from torchrun's environment) the samples are split over the
    ranks (rank r scores samples r, r + world, ...), gathered, and every rank
    returns what one process returns with the same seed; rank 0 alone times
    the latency column and shows progress, and its timings are everyone's.

    Returns a :class:`BlockSwapResult`; ``fxswap.cheapen(teacher, result.best)``
    builds the student (see the module docstring for a fuller example).

    >>> import torch, fxswap
    >>> x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))  # a tiny minibatch
    >>> r = blockswap(fxswap.models.wrn(10, 1), "66k", (x, y), samples=2, candidates=["S", "G(N/4)"], macs=False)
    >>> r.best["layer2.0"], sorted(c.params for c in r.candidates)
    ('G(N/4)', [64506, 67386])
    >>> fake = {"timer": lambda module, args, kwargs: float(sum(p.numel() for p in module.parameters())) / 1e4}
    >>> r = blockswap(fxswap.models.wrn(10, 1), "6.8ms", (x, y), samples=2, candidates=["S", "G(N/4)"], macs=False,
    ...               tolerance=0.06, latency_options=fake)  # a fake timer: 1 ms per 10k parameters
    >>> r.metric, r.budget, sorted(round(c.latency_ms, 4) for c in r.candidates)  # kept: [6.392, 6.8] ms
    ('latency', 6.8, [6.4506, 6.7386])
    """
    start = time.perf_counter()
    if not isinstance(fresh_init, bool):
        raise FxswapError(f"fresh_init must be True or False, got {fresh_init!r}")
    draw = _batch_source(fresh_batch)
    if batch is None and draw is None:
        raise FxswapError("blockswap needs a minibatch batch=(x, y), or fresh_batch= to draw one per candidate")
    x, y = batch if batch is not None else draw()
    metric = budget_metric(budget, metric)
    options = dict(latency_options or {})
    unknown = set(options) - {"warmup", "min_run_time", "num_threads", "timer", "rounds"}
    if unknown:
        raise BudgetError(f"latency_options {sorted(unknown)} unknown; accepted: warmup, min_run_time, num_threads, "
                          f"timer, rounds")
    if cost_model is None:
        shape = tuple(input_shape) if input_shape is not None else tuple(x.shape[1:])
        cost_model = CostModel(teacher, candidates, input_shape=shape, macs=macs or metric == "macs", seed=seed,
                               reinit=reinit, leaf_modules=leaf_modules, allow_larger=allow_larger)
    ref = next(cost_model.base.parameters(), None)
    where = join(process_group, ref.device if ref is not None else None)
    if (latency or metric == "latency") and not cost_model.has_latency and where.writer:
        cost_model.measure_latency(latency_batch or len(x), **options)
    share_latency(cost_model, where)
    absolute = parse_budget(budget, cost_model.total(metric) if metric in METRICS else 0, metric)
    plans = sample_plans(cost_model, absolute, samples, tolerance=tolerance, metric=metric, seed=seed)
    if ref is not None:
        x, y = x.to(ref.device), y.to(ref.device)
    prec = resolve_precision(precision, x.device, purpose="score")
    scored = _gathered(_score_share(cost_model, plans, (x, y), draw, loss_fn, seed, fresh_init, where,
                                    progress, ref.device if ref is not None else None, prec), where)
    scored.sort(key=lambda c: -c.fisher if np.isfinite(c.fisher) else float("inf"))
    return BlockSwapResult(scored, absolute, metric, tolerance, cost_model.teacher_params, cost_model.teacher_macs,
                           seed, len(scored), time.perf_counter() - start, None, cost_model.teacher_latency,
                           cost_model.table.measured_on, prec.label, cost_model.allow_larger)
