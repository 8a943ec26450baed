"""Interpreting trained prompts: nearest-token readings, faithfulness and scrutability (Patel et al.),
seed stochasticity and similarity (Dayton et al.), neuron overlap and zero-shot transfer (Su et al.)."""

from softprompt.analysis.faithfulness import (
    Faithfulness,
    distance_differential,
    faithfulness,
    output_differential,
    projected_prompt,
    token_perplexity,
)
from softprompt.analysis.geometry import cosine_flat, cosine_mean, frobenius, stochasticity, tsne_map
from softprompt.analysis.neurons import mean_activations, neuron_overlap
from softprompt.analysis.pipeline import Analysis, AnalysisConfig, analyse, load_runs
from softprompt.analysis.readings import nearest_tokens, prompt_vectors, unembed
from softprompt.analysis.transfer import TransferMatrix, similarity_vs_transfer, spearman, transfer_matrix

__all__ = [
    "Analysis",
    "AnalysisConfig",
    "Faithfulness",
    "TransferMatrix",
    "analyse",
    "cosine_flat",
    "cosine_mean",
    "distance_differential",
    "faithfulness",
    "frobenius",
    "load_runs",
    "mean_activations",
    "nearest_tokens",
    "neuron_overlap",
    "output_differential",
    "projected_prompt",
    "prompt_vectors",
    "similarity_vs_transfer",
    "spearman",
    "stochasticity",
    "token_perplexity",
    "transfer_matrix",
    "tsne_map",
    "unembed",
]
