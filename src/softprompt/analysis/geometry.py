"""Prompts as matrices: norms, seed-to-seed spread (Dayton et al. §5.2), similarity indicators
(Dayton et al. §5.3, Su et al.) and a 2-D t-SNE map.

Similarities between prompts of different shapes are undefined for the Frobenius and flattened-cosine
indicators and come out as NaN; the cosine of mean vectors works for any two prompts of one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from softprompt.errors import SoftpromptError


def frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖A − B‖_F (lower: more similar)."""
    if a.shape != b.shape:
        return math.nan
    return float((a.double() - b.double()).norm())


def cosine_flat(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the two prompts flattened to vectors (Su et al.'s CosineSimilarity)."""
    if a.shape != b.shape:
        return math.nan
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def cosine_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the prompts' mean vectors."""
    return float(F.cosine_similarity(a.double().mean(0), b.double().mean(0), dim=0))


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "frobenius": frobenius,
    "cosine_flat": cosine_flat,
    "cosine_mean": cosine_mean,
}
# Whether a larger value of the indicator means "more similar".
HIGHER_IS_SIMILAR = {"frobenius": False, "cosine_flat": True, "cosine_mean": True, "neuron_overlap": True}


def pairwise(items: Sequence[torch.Tensor], fn: Callable[[torch.Tensor, torch.Tensor], float]) -> list[list[float]]:
    return [[fn(a, b) for b in items] for a in items]


def group_mean(matrix: Sequence[Sequence[float]], groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Task-level similarity: the mean over pairs of prompts from the two tasks (distinct prompts only)."""
    names = list(dict.fromkeys(groups))
    out: dict[str, dict[str, float]] = {}
    for g in names:
        out[g] = {}
        for h in names:
            values = [matrix[i][j] for i in range(len(groups)) for j in range(len(groups))
                      if groups[i] == g and groups[j] == h and i != j and not math.isnan(matrix[i][j])]
            out[g][h] = float(np.mean(values)) if values else math.nan
    return out


@dataclass
class Spread:
    """How much prompts of one task trained with different seeds differ (Dayton et al. Table 1)."""

    prompts: int
    mean_norm: float  # mean ‖P‖_F
    norm_variance: float  # sample variance of ‖P‖_F over seeds
    total_variance: float  # mean squared Frobenius distance to the task's mean prompt
    within_distance: float  # mean ‖A − B‖_F over pairs of this task's prompts
    between_distance: float  # mean ‖A − B‖_F to other tasks' prompts of the same shape

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def stochasticity(groups: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, Spread]:
    out = {}
    for name, prompts in groups.items():
        stack = torch.stack([p.double() for p in prompts])
        norms = stack.flatten(1).norm(dim=-1)
        centre = stack.mean(0)
        within = [frobenius(a, b) for i, a in enumerate(prompts) for b in prompts[i + 1 :]]
        others = [q for other, qs in groups.items() if other != name for q in qs if q.shape == prompts[0].shape]
        between = [frobenius(a, b) for a in prompts for b in others]
        out[name] = Spread(
            prompts=len(prompts), mean_norm=float(norms.mean()),
            norm_variance=float(norms.var()) if len(prompts) > 1 else 0.0,
            total_variance=float(((stack - centre) ** 2).flatten(1).sum(-1).mean()),
            within_distance=float(np.mean(within)) if within else math.nan,
            between_distance=float(np.mean(between)) if between else math.nan,
        )
    return out


def tsne_map(prompts: Sequence[torch.Tensor], seed: int = 0) -> list[list[float]]:
    """2-D t-SNE coordinates of the flattened prompts (all of one shape), reproducible for a seed."""
    from sklearn.manifold import TSNE

    if len({tuple(p.shape) for p in prompts}) != 1:
        raise SoftpromptError("a t-SNE map needs prompts of one shape (same length and model)")
    if len(prompts) < 3:
        raise SoftpromptError(f"a t-SNE map needs at least 3 prompts, got {len(prompts)}")
    data = torch.stack([p.double().flatten() for p in prompts]).numpy()
    # Perplexity must stay below the number of points; with a few seeds per task, neighbourhoods are small.
    tsne = TSNE(n_components=2, perplexity=min(5.0, len(prompts) - 1.0), init="pca", random_state=seed)
    return tsne.fit_transform(data).tolist()
