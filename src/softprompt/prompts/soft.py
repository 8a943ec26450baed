"""Soft prompts (Qin & Eisner §3.1): one trainable vector per template token, blanks kept in place."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import TemplatePrompt
from softprompt.templates import TemplateEncoder

INITS = ("template", "random")


def initial_vectors(encoder: TemplateEncoder, init: str, seed: int = 0) -> torch.Tensor:
    """The template's token embeddings, or as many draws from a Gaussian fitted to the embedding matrix."""
    lm = encoder.lm
    ids = torch.tensor(encoder.prompt_ids, dtype=torch.long)
    if init == "template":
        return lm.embed(ids.to(lm.device)).detach().float().clone()
    if init == "random":
        return embedding_gaussian(lm).sample(len(ids), seed).to(lm.device)
    raise SoftpromptError(f"unknown prompt init {init!r}; choose one of: {', '.join(INITS)}")


class EmbeddingGaussian:
    """A full-covariance Gaussian fitted to all word embeddings of a model."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        e = embeddings.detach().cpu().double()
        self.mean = e.mean(0)
        centred = e - self.mean
        cov = centred.T @ centred / (len(e) - 1)
        jitter = 1e-8 * cov.diagonal().mean()
        self.scale = torch.linalg.cholesky(cov + jitter * torch.eye(len(cov), dtype=cov.dtype))

    def sample(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, len(self.mean), generator=gen, dtype=torch.float64)
        return (self.mean + z @ self.scale.T).float()


# Keyed weakly by the model itself: an id() key could be reused by a later model once this one is freed.
_GAUSSIANS: weakref.WeakKeyDictionary[nn.Module, EmbeddingGaussian] = weakref.WeakKeyDictionary()


def embedding_gaussian(lm: LanguageModel) -> EmbeddingGaussian:
    key = lm.model
    if key not in _GAUSSIANS:
        _GAUSSIANS[key] = EmbeddingGaussian(lm.embedding_matrix)
    return _GAUSSIANS[key]


class SoftPrompt(TemplatePrompt):
    kind = "soft"

    def __init__(self, encoder: TemplateEncoder, init: str = "template", seed: int = 0) -> None:
        super().__init__(encoder, init)
        self.weight = nn.Parameter(initial_vectors(encoder, init, seed))

    def vectors(self) -> torch.Tensor:
        return self.weight
