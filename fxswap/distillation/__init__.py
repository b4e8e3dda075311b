"""Distillation: the Distiller module for users' loops, LIT, and a small training loop."""
from .distiller import Distiller
from .lit import LITDistiller, stage_points

__all__ = ["Distiller", "LITDistiller", "stage_points"]
