"""Distillation: loss terms (:mod:`.terms`), the :class:`Distiller` that composes them, LIT
(:mod:`.lit`), the epoch loop (:mod:`.loop`) and its logging hooks (:mod:`.callbacks`), evaluation,
checkpoints, histories and the method recipes (:mod:`.recipes`)."""
from .callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger
from .checkpoint import load_checkpoint
from .distiller import Distiller
from .evaluation import evaluate
from .history import format_history
from .lit import LITDistiller, stage_points
from .loop import fit
from .recipes import METHODS, distill, train
from .terms import Term, register_term

__all__ = ["Distiller", "LITDistiller", "stage_points", "fit", "distill", "train", "evaluate", "METHODS",
           "load_checkpoint", "format_history", "Term", "register_term", "Callback", "CSVLogger",
           "TensorBoardLogger", "WandbLogger"]
