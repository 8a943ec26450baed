"""The prompt family: hard (frozen words), soft (trainable vectors), deep (per-layer perturbations),
and mixtures of them."""

from softprompt.prompts.base import PROMPT_TYPES, Prompt, load_prompt, read_prompt_file
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.mixture import MixturePrompt, effective_prompts
from softprompt.prompts.soft import SoftPrompt, initial_vectors
from softprompt.prompts.task import TaskPrompt

__all__ = [
    "PROMPT_TYPES",
    "DeepPrompt",
    "HardPrompt",
    "MixturePrompt",
    "Prompt",
    "SoftPrompt",
    "TaskPrompt",
    "effective_prompts",
    "initial_vectors",
    "load_prompt",
    "read_prompt_file",
]
