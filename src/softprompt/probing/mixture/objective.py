"""The mixture's objective (Qin & Eisner eq. 2): the log-loss of Σ_t p(t | r, x) p(y | t, x), and for EM the
expected complete-data loss under given posteriors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from softprompt.engine import MAX_ROWS, Engine
from softprompt.optimizers.base import epoch_seed
from softprompt.probing.mixture.data import MixtureItem
from softprompt.probing.mixture.scoring import SparseDraw, chunks, log_likelihoods, posteriors, score, sparse_score
from softprompt.prompts import MixturePrompt

# Adam's learning rate for the mixture logits (and log T); see MixtureObjective.param_groups.
WEIGHTS_LR = 0.05


class MixtureObjective:
    """The log-loss of the mixture (eq. 2), for gradient descent, and the expected complete-data loss under
    given posteriors, for EM (``optimizers.EM`` computes them each epoch: a ``LatentObjective``)."""

    def __init__(
        self, engine: Engine, mixture: MixturePrompt, train: Sequence[MixtureItem], dev: Sequence[MixtureItem],
        max_rows: int = MAX_ROWS, weights_lr: float = WEIGHTS_LR, sparse_k: int | None = None,
        sparse_m: int | None = None, sparse_draw: SparseDraw = "top", seed: int = 0,
    ) -> None:
        self.engine, self.prompt, self.items, self.dev = engine, mixture, train, dev
        self.max_rows, self.weights_lr = max_rows, weights_lr
        # With k >= K every pair is live: the plain pass computes the same without the extra inference pass.
        every = sparse_k is not None and sparse_k >= len(mixture)
        self.sparse = not every and (sparse_k, sparse_m) != (None, None)
        self.sparse_k, self.sparse_m, self.sparse_draw, self.seed = sparse_k, sparse_m, sparse_draw, seed
        self.draws = torch.Generator()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Prompt vectors at ``lr``; the mixture logits and log-temperature at ``weights_lr``.

        The logits are O(1) numbers that must move by several nats to select prompts, while prompt vectors
        move on the scale of word embeddings (about 0.1 per coordinate); Adam's steps are about lr in size,
        so one learning rate cannot suit both in a few hundred steps.
        """
        mixture = self.prompt
        weights = [p for p in (mixture.weight_logits, mixture.log_temperature) if p is not None and p.requires_grad]
        prompts = [p for p in mixture.components.parameters() if p.requires_grad]
        return [{"params": prompts, "lr": lr}, {"params": weights, "lr": self.weights_lr}]

    def backward(self, indices: list[int]) -> float:
        return self._backward(indices, lambda chunk, joint: -joint.logsumexp(-1).sum())

    def expected_backward(self, indices: list[int], posteriors: torch.Tensor) -> float:
        return self._backward(indices, lambda chunk, joint: -(posteriors[chunk].to(joint.device) * joint).sum())

    def _backward(self, indices: list[int], loss_of: Callable[[list[int], torch.Tensor], torch.Tensor]) -> float:
        """Add the gradient of the mean loss over ``indices``, chunk by chunk; ``loss_of(chunk, joint)`` sums
        a chunk's losses from its (n, K) log p(t | r, x) + log p(y | t, x)."""
        total = 0.0
        # sparse_score bounds its own passes, and ranks each prompt's items across the whole batch.
        parts = [indices] if self.sparse else chunks(indices, len(self.prompt), self.max_rows)
        for chunk in parts:
            items = [self.items[i] for i in chunk]
            scores = (sparse_score(self.engine, self.prompt, items, self.sparse_k, self.sparse_m, self.max_rows,
                                   self.sparse_draw, self.draws)
                      if self.sparse else score(self.engine, self.prompt, items))
            loss = loss_of(chunk, scores.log_weights + scores.logprobs)
            (loss / len(indices)).backward()
            total += loss.item()
        return total / len(indices)

    def posteriors(self) -> torch.Tensor:
        return posteriors(self.engine, self.prompt, self.items, self.max_rows)

    def dev_loss(self) -> float:
        return -float(log_likelihoods(self.engine, self.prompt, self.dev, self.max_rows).mean())

    def start_epoch(self, epoch: int) -> None:
        # Seeded per epoch, like the shuffle, so a run resumed from an epoch's checkpoint draws the same pairs.
        self.draws.manual_seed(epoch_seed(self.seed, epoch))
