"""ZeroPrompt's multitask half (Xu et al. 2022, §3.4, Appendix A.3): task-specific soft prompts and a shared
component trained on a task mixture with the LM frozen (``train_multitask``), one loadable file
(``load_multitask``), soft prompts for unseen tasks (``unseen_prompt``) and evaluation on any task
(``eval_multitask``). Genetic Prompt Search, the other half, is ``softprompt.tasks.gps``."""

from softprompt.zeroprompt.evaluate import eval_multitask, prompt_for_task
from softprompt.zeroprompt.multitask import (
    SHARED,
    MultitaskPrompt,
    MultitaskSettings,
    load_multitask,
    new_multitask,
    read_multitask,
)
from softprompt.zeroprompt.train import MixtureObjective, mixed_scores, mixture_sample, train_multitask
from softprompt.zeroprompt.unseen import UNSEEN_INITS, UnseenPrompt, task_feature, unseen_prompt

__all__ = [
    "SHARED",
    "UNSEEN_INITS",
    "MixtureObjective",
    "MultitaskPrompt",
    "MultitaskSettings",
    "UnseenPrompt",
    "eval_multitask",
    "load_multitask",
    "mixed_scores",
    "mixture_sample",
    "new_multitask",
    "prompt_for_task",
    "read_multitask",
    "task_feature",
    "train_multitask",
    "unseen_prompt",
]
