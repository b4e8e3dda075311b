"""What a student costs: parameters and MACs (:mod:`.counting`), measured latency (:mod:`.latency`), and the
plain-text table the reports print (:mod:`.table`)."""
from .counting import Comparison, CostReport, compare, count
from .latency import BlockLatency, LatencyReport, Timing, latency
from .table import render_table

__all__ = ["count", "compare", "CostReport", "Comparison", "latency", "LatencyReport", "Timing", "BlockLatency",
           "render_table"]
