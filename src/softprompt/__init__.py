"""softprompt: learn, search, analyse and transfer prompts for frozen language models."""

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from softprompt.prompts import DeepPrompt, HardPrompt, MixturePrompt, Prompt, SoftPrompt, load_prompt
from softprompt.templates import Template, TemplateEncoder
from softprompt.train import TrainConfig, train_prompt

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DeepPrompt",
    "Engine",
    "HardPrompt",
    "LanguageModel",
    "MixturePrompt",
    "Prompt",
    "SoftPrompt",
    "SoftpromptError",
    "Template",
    "TemplateEncoder",
    "TrainConfig",
    "load_model",
    "load_prompt",
    "train_prompt",
]
