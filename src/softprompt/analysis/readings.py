"""Reading prompt vectors as vocabulary tokens: nearest neighbours and the unembedding f_U.

Three notions of "nearest" are in use in the literature: cosine similarity to the input embeddings
(Dayton et al. §5.1), Euclidean distance (Patel et al.'s f_U and distance differential) and the model's
own p(w | v) ∝ exp(e_w · v) over the input embeddings (Qin & Eisner Appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.base import Prompt

METRICS = ("cosine", "euclidean", "dot")


@dataclass
class Neighbours:
    """The k nearest tokens of each vector: ids (P, k) and their scores (cosine, distance or probability)."""

    metric: str
    ids: torch.Tensor
    scores: torch.Tensor

    def tokens(self, lm: LanguageModel) -> list[list[str]]:
        return [[lm.tokenizer.decode([i]) for i in row] for row in self.ids.tolist()]


def prompt_vectors(prompt: Prompt) -> torch.Tensor:
    """What enters the LM at the prompt positions, (P, d): the vectors, plus a deep prompt's layer-0 delta."""
    vectors = prompt.vectors()
    if vectors is None:
        raise SoftpromptError(f"a {prompt.kind} prompt without vectors has nothing to read")
    deltas = prompt.deltas()
    out = vectors if deltas is None else vectors + deltas[0]
    return out.detach().float()


def vocabulary(lm: LanguageModel) -> torch.Tensor:
    """The input embeddings of the tokenizer's tokens (embedding matrices often carry unused padding rows)."""
    n = min(len(lm.tokenizer), lm.embedding_matrix.shape[0])
    return lm.embedding_matrix[:n].detach().float()


def nearest_tokens(lm: LanguageModel, vectors: torch.Tensor, k: int = 3, metric: str = "cosine") -> Neighbours:
    """The ``k`` vocabulary tokens nearest to each row of ``vectors`` (P, d), best first."""
    if metric not in METRICS:
        raise SoftpromptError(f"unknown nearest-token metric {metric!r}; choose one of: {', '.join(METRICS)}")
    emb = vocabulary(lm)
    vectors = vectors.detach().float().to(emb.device)
    k = min(k, len(emb))
    with torch.no_grad():
        if metric == "cosine":
            scores, ids = (F.normalize(vectors, dim=-1) @ F.normalize(emb, dim=-1).T).topk(k, dim=-1)
        elif metric == "dot":
            scores, ids = (vectors @ emb.T).softmax(-1).topk(k, dim=-1)
        else:
            # Rank with the expanded form, then measure the chosen few directly: the expansion cancels badly
            # near zero, and "an embedding's nearest token is itself at distance 0" should hold exactly.
            squared = (emb * emb).sum(-1)[None, :] - 2 * vectors @ emb.T
            ids = squared.topk(k, dim=-1, largest=False).indices
            scores = (emb[ids] - vectors[:, None, :]).norm(dim=-1)
    return Neighbours(metric, ids.cpu(), scores.cpu())


def unembed(lm: LanguageModel, vectors: torch.Tensor, metric: str = "euclidean") -> list[int]:
    """f_U: each vector's nearest token (the hard prompt a soft prompt "reads as")."""
    return nearest_tokens(lm, vectors, 1, metric).ids[:, 0].tolist()
