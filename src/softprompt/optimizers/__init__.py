"""Optimizers: what fits a prompt to an objective. One interface (``Optimizer.fit``), one file per method."""

from softprompt.optimizers.base import OPTIMIZERS, FitResult, Objective, Optimizer, TrainConfig
from softprompt.optimizers.em import EM, LatentObjective
from softprompt.optimizers.gradient import GradientDescent
from softprompt.optimizers.selection import SELECTIONS, fit_weights, greedy_selection, select, warmup_history

__all__ = [
    "EM",
    "OPTIMIZERS",
    "SELECTIONS",
    "FitResult",
    "GradientDescent",
    "LatentObjective",
    "Objective",
    "Optimizer",
    "TrainConfig",
    "fit_weights",
    "greedy_selection",
    "select",
    "warmup_history",
]
