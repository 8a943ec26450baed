"""EM for latent-variable objectives (mixtures: which prompt explains each fact), Qin & Eisner §3.5.

At the start of each epoch the E step computes every training item's posterior over the latent choices,
q(t) ∝ p(t | x) p(y | t, x), with the current parameters; the epoch's gradient steps (the M step) then
minimise the expected complete-data loss -Σ_t q(t) [log p(t | x) + log p(y | t, x)]. With one step per E
step the two gradients coincide, so EM differs from gradient descent only through posteriors that go stale
within an epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from softprompt.errors import SoftpromptError
from softprompt.optimizers.base import Objective
from softprompt.optimizers.gradient import GradientDescent


class LatentObjective(Objective, Protocol):
    """An objective with a latent choice per item: its posteriors, and the loss they weigh."""

    def posteriors(self) -> torch.Tensor:
        """(n, K) posteriors of the training items, without gradients."""
        ...

    def expected_backward(self, indices: list[int], posteriors: torch.Tensor) -> float:
        """Add the gradient of the mean expected complete-data loss of these items (``posteriors`` are all
        items'); return that loss."""
        ...


class EM(GradientDescent):
    name = "em"

    def epoch_backward(self, objective: Objective, epoch: int) -> Callable[[list[int]], float]:
        if not hasattr(objective, "posteriors"):
            raise SoftpromptError(f"EM needs an objective with latent choices (a mixture), not "
                                  f"{type(objective).__name__}")
        q = objective.posteriors()  # the E step
        return lambda indices: objective.expected_backward(indices, q)
