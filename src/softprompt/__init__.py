"""softprompt: learn, search, analyse and transfer prompts for frozen language models."""

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from softprompt.optimizers import EM, FitResult, GradientDescent, Optimizer, TrainConfig
from softprompt.probing import train_prompt
from softprompt.prompts import (
    DeepPrompt,
    HardPrompt,
    MixturePrompt,
    Prompt,
    SoftPrompt,
    TaskPrompt,
    load_prompt,
)
from softprompt.templates import Template, TemplateEncoder

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EM",
    "DeepPrompt",
    "Engine",
    "FitResult",
    "GradientDescent",
    "HardPrompt",
    "LanguageModel",
    "MixturePrompt",
    "Optimizer",
    "Prompt",
    "SoftPrompt",
    "SoftpromptError",
    "TaskPrompt",
    "Template",
    "TemplateEncoder",
    "TrainConfig",
    "load_model",
    "load_prompt",
    "train_prompt",
]
