"""The search's cost table: per block × candidate spec, what the block costs.

A plain table, built by :class:`fxswap.search.plans.CostModel` (one
:func:`fxswap.cheapen` per spec) and read by the sampler: ``params[block][spec]``
and ``macs[block][spec]`` are the costs of that block's module, ``latency``
(same layout, milliseconds) the measured latency of that module at the
search's batch and input shape (:func:`fxswap.metrics.latency.block_latency_table`,
filled by :meth:`fxswap.search.plans.CostModel.measure_latency`). A plan's cost
is ``fixed + Σ block costs``: for params and MACs equal to what
``count(cheapen(teacher, plan))`` reports; for latency an estimate, with
``fixed`` the measured teacher total minus the teacher's blocks (see
``docs/benchmarks.md`` for how close it comes to a re-measurement).

>>> t = CostTable(["a", "b"], {"a": {"S": 10, "G": 4}, "b": {"S": 20, "G": 5}}, fixed={"params": 3},
...               teacher={"params": 33})
>>> t.cost({"a": "G", "b": "S"}), t.reachable(), t.options("b")
(27, (12, 33), ['S', 'G'])
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BudgetError

__all__ = ["CostTable", "METRICS"]

#: The columns a table may have; a budget names one.
METRICS = ("params", "macs", "latency")


@dataclass
class CostTable:
    """Per-block costs of every candidate spec: ``params``, optionally ``macs`` and ``latency``.

    ``fixed[metric]``: the cost outside the blocks; ``teacher[metric]``: the
    unmodified network's; ``skipped[block][spec]``: why a spec could not apply;
    ``measured_on``: where the latency column holds (device, batch, input, threads).

    >>> CostTable(["a"], {"a": {"S": 1}}).cost({"a": "S"}, "macs")
    Traceback (most recent call last):
    ...
    fxswap.errors.BudgetError: this cost table has no 'macs' column (it has: params); build it with macs=True
    """

    names: list[str]
    params: dict[str, dict[str, int]]
    macs: dict[str, dict[str, int]] | None = None
    latency: dict[str, dict[str, float]] | None = None
    fixed: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    measured_on: str | None = None

    def column(self, metric: str = "params") -> tuple[dict[str, dict[str, float]], float]:
        """``(per-block costs, fixed cost)`` of one metric."""
        if metric not in METRICS:
            raise BudgetError(f"budget metric must be one of {METRICS}, got {metric!r}")
        table = getattr(self, metric)
        if table is None:
            have = ", ".join(m for m in METRICS if getattr(self, m) is not None)
            how = ("measure it with CostModel.measure_latency(batch)" if metric == "latency"
                   else f"build it with {metric}=True")
            raise BudgetError(f"this cost table has no {metric!r} column (it has: {have}); {how}")
        return table, self.fixed.get(metric, 0)

    def options(self, name: str) -> list[str]:
        """The specs block ``name`` may take, in candidate order."""
        return list(self.params[name])

    def cost(self, specs: dict[str, str], metric: str = "params"):
        """The cost of a plan given as one spec per block."""
        table, fixed = self.column(metric)
        return fixed + sum(table[n][s] for n, s in specs.items())

    def total(self, metric: str = "params"):
        """The unmodified network's cost (``None`` when not measured)."""
        return self.teacher.get(metric)

    def reachable(self, metric: str = "params") -> tuple:
        """``(cheapest, dearest)`` over all configurations."""
        table, fixed = self.column(metric)
        return (fixed + sum(min(table[n].values()) for n in self.names),
                fixed + sum(max(table[n].values()) for n in self.names))
