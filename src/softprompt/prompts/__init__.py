"""The prompt family: hard (frozen words), soft (trainable vectors), deep (per-layer perturbations), task
prompts (vectors laid out around a task's input) and mixtures, all ``Prompt``s saved and loaded alike."""

from softprompt.prompts.base import PROMPT_KINDS, Prompt, TemplatePrompt, stack_prompts
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.files import load_prompt, read_prompt_file
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.mixture import MixturePrompt, effective_prompts
from softprompt.prompts.soft import SoftPrompt, initial_vectors
from softprompt.prompts.task import TaskPrompt

__all__ = [
    "PROMPT_KINDS",
    "DeepPrompt",
    "HardPrompt",
    "MixturePrompt",
    "Prompt",
    "SoftPrompt",
    "TaskPrompt",
    "TemplatePrompt",
    "effective_prompts",
    "initial_vectors",
    "load_prompt",
    "read_prompt_file",
    "stack_prompts",
]
