"""Distillation: loss terms (:mod:`.terms`), the :class:`Distiller` that composes them, LIT
(:mod:`.lit`), FitNets' hint stage (:mod:`.fitnets`), the epoch loop (:mod:`.loop`) and its logging hooks
(:mod:`.callbacks`), evaluation, checkpoints, histories and the method recipes (:mod:`.recipes`)."""
from .callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger
from .checkpoint import load_checkpoint
from .distiller import Distiller
from .evaluation import evaluate
from .history import format_history
from .lit import LITDistiller, stage_points
from .loop import fit
from .fitnets import HintStage
from .recipes import METHODS, distill, fitnets_two_stage, train
from .terms import Term, register_term
from .warm_start import WarmStartReport, warm_start

__all__ = ["Distiller", "LITDistiller", "stage_points", "fit", "distill", "train", "evaluate", "METHODS",
           "load_checkpoint", "format_history", "Term", "register_term", "HintStage", "fitnets_two_stage",
           "Callback", "CSVLogger", "TensorBoardLogger", "WandbLogger", "warm_start", "WarmStartReport"]
