"""Optimizers: what fits a prompt to an objective. One interface (``Optimizer.fit``), one file per method."""

from softprompt.optimizers.autoprompt import AutoPrompt, AutoPromptConfig
from softprompt.optimizers.base import OPTIMIZERS, FitResult, Objective, Optimizer, TrainConfig
from softprompt.optimizers.em import EM, LatentObjective
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.gps import GeneticPromptSearch, GPSConfig
from softprompt.optimizers.gradient import GradientDescent
from softprompt.optimizers.mutators import BackTranslation, Paraphrase, SpanInfill
from softprompt.optimizers.pez import PEZ, PEZConfig
from softprompt.optimizers.rlprompt import RLPrompt, RLPromptConfig
from softprompt.optimizers.search import CandidateScores, SearchObjective
from softprompt.optimizers.selection import SELECTIONS, fit_weights, greedy_selection, select, warmup_history

__all__ = [
    "EM",
    "OPTIMIZERS",
    "PEZ",
    "SELECTIONS",
    "AutoPrompt",
    "AutoPromptConfig",
    "BackTranslation",
    "CandidateScores",
    "FitResult",
    "Fluency",
    "GPSConfig",
    "GeneticPromptSearch",
    "GradientDescent",
    "LatentObjective",
    "Objective",
    "Optimizer",
    "PEZConfig",
    "Paraphrase",
    "RLPrompt",
    "RLPromptConfig",
    "SearchObjective",
    "SpanInfill",
    "TrainConfig",
    "fit_weights",
    "greedy_selection",
    "select",
    "warmup_history",
]
