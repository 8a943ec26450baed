"""Knowledge probing with mixtures of prompts (Qin & Eisner §3.3–3.5): data encoded under K prompts
(``data``), scoring in few engine calls (``scoring``), the objective (``objective``) and runs (``run``)."""

from softprompt.probing.mixture.data import (
    MixtureData,
    MixtureItem,
    PromptSetReport,
    encode_mixture_data,
    encode_prompt_set,
)
from softprompt.probing.mixture.objective import WEIGHTS_LR, MixtureObjective
from softprompt.probing.mixture.run import METHODS, MixtureSettings, mixture_settings, run_mixture
from softprompt.probing.mixture.scoring import (
    MixtureScores,
    evaluate_mixture,
    log_likelihoods,
    posteriors,
    predict_mixture,
    score,
    select_prompts,
    sparse_score,
)

__all__ = [
    "METHODS",
    "WEIGHTS_LR",
    "MixtureData",
    "MixtureItem",
    "MixtureObjective",
    "MixtureScores",
    "MixtureSettings",
    "PromptSetReport",
    "encode_mixture_data",
    "encode_prompt_set",
    "evaluate_mixture",
    "log_likelihoods",
    "mixture_settings",
    "posteriors",
    "predict_mixture",
    "run_mixture",
    "score",
    "select_prompts",
    "sparse_score",
]
