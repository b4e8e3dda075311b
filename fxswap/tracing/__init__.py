"""Tracing: the tracer and its leaves (:mod:`.tracer`), train/eval graphs (:mod:`.modes`, ``ModeSwitch``), and the
graph analysis every pass shares (:mod:`.graph`)."""
from .graph import GraphView
from .modes import kept_modes, training_flags
from .tracer import FxswapTracer, ModeSwitch, node_scope, retrace_both_modes, trace

__all__ = ["trace", "FxswapTracer", "ModeSwitch", "retrace_both_modes", "node_scope", "kept_modes",
           "training_flags", "GraphView"]
