"""softprompt: learn, search, analyse and transfer prompts for frozen language models.

The public names below are imported on first use (PEP 562), so that ``import softprompt`` (and the command
line's start, which can then answer Ctrl-C cleanly) does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Engine": "softprompt.engine",
    "SoftpromptError": "softprompt.errors",
    "DEFAULT_MODEL": "softprompt.models", "LanguageModel": "softprompt.models", "load_model": "softprompt.models",
    "EM": "softprompt.optimizers", "FitResult": "softprompt.optimizers", "GradientDescent": "softprompt.optimizers",
    "Optimizer": "softprompt.optimizers", "TrainConfig": "softprompt.optimizers", "PEZ": "softprompt.optimizers",
    "AutoPrompt": "softprompt.optimizers", "RLPrompt": "softprompt.optimizers",
    "GeneticPromptSearch": "softprompt.optimizers", "GPSConfig": "softprompt.optimizers",
    "run_gps": "softprompt.tasks.gps",
    "MultitaskSettings": "softprompt.zeroprompt", "train_multitask": "softprompt.zeroprompt",
    "load_multitask": "softprompt.zeroprompt", "eval_multitask": "softprompt.zeroprompt",
    "Projector": "softprompt.transfer", "PromptInit": "softprompt.transfer", "bridge_prompt": "softprompt.transfer",
    "TemplateSearch": "softprompt.probing.search", "LayoutSearch": "softprompt.tasks.search",
    "train_prompt": "softprompt.probing",
    "DeepPrompt": "softprompt.prompts", "HardPrompt": "softprompt.prompts", "MixturePrompt": "softprompt.prompts",
    "Prompt": "softprompt.prompts", "SoftPrompt": "softprompt.prompts", "TaskPrompt": "softprompt.prompts",
    "load_prompt": "softprompt.prompts",
    "Template": "softprompt.templates", "TemplateEncoder": "softprompt.templates",
}
__all__ = [
    "DEFAULT_MODEL",
    "EM",
    "PEZ",
    "AutoPrompt",
    "DeepPrompt",
    "Engine",
    "FitResult",
    "GPSConfig",
    "GeneticPromptSearch",
    "GradientDescent",
    "HardPrompt",
    "LanguageModel",
    "LayoutSearch",
    "MixturePrompt",
    "MultitaskSettings",
    "Optimizer",
    "Projector",
    "Prompt",
    "PromptInit",
    "RLPrompt",
    "SoftPrompt",
    "SoftpromptError",
    "TaskPrompt",
    "Template",
    "TemplateEncoder",
    "TemplateSearch",
    "TrainConfig",
    "bridge_prompt",
    "eval_multitask",
    "load_model",
    "load_multitask",
    "load_prompt",
    "run_gps",
    "train_multitask",
    "train_prompt",
]

if TYPE_CHECKING:
    from softprompt.engine import Engine
    from softprompt.errors import SoftpromptError
    from softprompt.models import DEFAULT_MODEL, LanguageModel, load_model
    from softprompt.optimizers import (
        EM,
        PEZ,
        AutoPrompt,
        FitResult,
        GeneticPromptSearch,
        GPSConfig,
        GradientDescent,
        Optimizer,
        RLPrompt,
        TrainConfig,
    )
    from softprompt.probing import train_prompt
    from softprompt.probing.search import TemplateSearch
    from softprompt.prompts import (
        DeepPrompt,
        HardPrompt,
        MixturePrompt,
        Prompt,
        SoftPrompt,
        TaskPrompt,
        load_prompt,
    )
    from softprompt.tasks.gps import run_gps
    from softprompt.tasks.search import LayoutSearch
    from softprompt.templates import Template, TemplateEncoder
    from softprompt.transfer import Projector, PromptInit, bridge_prompt
    from softprompt.zeroprompt import MultitaskSettings, eval_multitask, load_multitask, train_multitask


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'softprompt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
