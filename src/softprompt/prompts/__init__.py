"""The prompt family: hard (frozen words), soft (trainable vectors), deep (per-layer perturbations)."""

from softprompt.prompts.base import PROMPT_TYPES, Prompt, load_prompt, read_prompt_file
from softprompt.prompts.deep import DeepPrompt
from softprompt.prompts.hard import HardPrompt
from softprompt.prompts.soft import SoftPrompt, initial_vectors

__all__ = [
    "PROMPT_TYPES",
    "DeepPrompt",
    "HardPrompt",
    "Prompt",
    "SoftPrompt",
    "initial_vectors",
    "load_prompt",
    "read_prompt_file",
]
