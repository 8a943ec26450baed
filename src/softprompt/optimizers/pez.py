"""PEZ (Wen et al. 2023, "Hard Prompts Made Easy"), with Patel et al.'s fluency regulariser.

PEZ keeps continuous vectors for the free prompt positions. Each step projects them to their nearest
vocabulary embeddings, runs the loss with the projected prompt, and applies the gradient taken at the
projection to the continuous vectors (a straight-through estimator). The search's answer is always a
projected, hence hard, prompt: the one that did best on dev.

Patel et al.'s J = L + λ·fluency: the regulariser is the negative log-likelihood (or, as in their J, the
perplexity) of the projected prompt's tokens under a reference LM, differentiated through the projected
embeddings ("unembedded gradient descent"; see ``optimizers.fluency``).

Defaults follow the reference implementation (github.com/YuxinWenRick/hard-prompts-made-easy,
sample_config.json): AdamW with lr 0.1 and weight decay 0.1, 3000 steps, evaluation every 100 steps, cosine
nearest neighbours; its batch size (1 image) has no text counterpart, so 16 training items per step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftpromptError
from softprompt.optimizers.base import FitResult, Optimizer, optimizer_tensors, restore_optimizer
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.search import (
    SearchLog,
    SearchObjective,
    allowed_tokens,
    check_objective,
    fluency_of,
    step_items,
)
from softprompt.progress import progress_bar

logger = logging.getLogger(__name__)

PROJECTIONS = ("cosine", "dot")
FLUENCY_FORMS = ("nll", "perplexity")


@dataclass
class PEZConfig:
    steps: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    batch_size: int = 16
    projection: str = "cosine"
    fluency_weight: float = 0.0  # λ
    fluency_form: str = "nll"
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"PEZ's {name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "fluency_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SoftpromptError(f"PEZ's {name} must be a finite number ≥ 0, got {value}")
        if self.projection not in PROJECTIONS:
            raise SoftpromptError(f"unknown projection {self.projection!r}; choose one of: {', '.join(PROJECTIONS)}")
        if self.fluency_form not in FLUENCY_FORMS:
            raise SoftpromptError(f"unknown fluency form {self.fluency_form!r}; choose one of: "
                                  f"{', '.join(FLUENCY_FORMS)}")


class Projection:
    """Nearest allowed vocabulary embedding of each vector, by cosine similarity or dot product."""

    def __init__(self, embeddings: torch.Tensor, allowed: torch.Tensor, kind: str) -> None:
        self.kind = kind
        table = embeddings.detach().float()
        self.table = torch.nn.functional.normalize(table, dim=-1) if kind == "cosine" else table
        self.blocked = ~allowed.to(table.device)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n,) token ids nearest to ``vectors`` (n, d)."""
        query = vectors.detach().float()
        if self.kind == "cosine":
            query = torch.nn.functional.normalize(query, dim=-1)
        return (query @ self.table.T).masked_fill(self.blocked, float("-inf")).argmax(-1)


class PEZ(Optimizer):
    name = "pez"

    def __init__(self, config: PEZConfig | None = None, fluency: Fluency | None = None, progress: bool = True) -> None:
        self.config = config or PEZConfig()
        self.fluency = fluency
        self.progress = progress

    def fit(self, objective: SearchObjective, checkpoint: Path | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> FitResult:
        check_objective(objective)
        config, lm = self.config, objective.lm
        fluency = fluency_of(self, lm)
        if config.fluency_weight and fluency is None:
            raise SoftpromptError(f"model '{lm.name}' is {lm.kind}: PEZ's fluency regulariser needs a causal model")
        embeddings = lm.embedding_matrix
        project = Projection(embeddings, allowed_tokens(lm), config.projection)
        free = torch.tensor(objective.free, dtype=torch.long)
        ids = torch.tensor(objective.initial_ids, dtype=torch.long)
        continuous = torch.nn.Parameter(embeddings[ids[free]].detach().float().clone())
        optimizer = torch.optim.AdamW([continuous], lr=config.lr, weight_decay=config.weight_decay)
        identity = {"method": self.name, "config": asdict(config), "initial_ids": list(objective.initial_ids),
                    "settings": settings or {}}
        log = SearchLog(objective, fluency, checkpoint, identity)
        if (tensors := log.start(resume)) is not None:
            continuous.data.copy_(tensors["continuous"])
            restore_optimizer(optimizer, tensors)

        for step in progress_bar(range(log.step + 1, config.steps + 1), "PEZ", self.progress):
            ids[free] = project(continuous)
            indices = step_items(len(objective.items), config.batch_size, config.seed, step)
            loss, grad = self.gradient(objective, fluency, ids, indices)
            if not math.isfinite(loss):
                raise SoftpromptError(f"PEZ diverged at step {step} (a loss of {loss}); lower the learning rate "
                                      "(--lr) or the fluency weight")
            continuous.grad = grad[free].to(continuous.dtype)  # the straight-through step
            optimizer.step()
            log.count(len(indices))
            if step % config.eval_every == 0 or step == config.steps:
                ids[free] = project(continuous)
                tensors = {"continuous": continuous} | optimizer_tensors(optimizer)
                current = log.evaluate(step, loss, ids.tolist(), tensors)
                if self.progress:
                    logger.info("step %d: loss %.4f  dev accuracy %.4f  dev loss %.4f", step, loss, current.accuracy,
                                current.loss)
        return log.result()

    def gradient(self, objective: SearchObjective, fluency: Fluency | None, ids: torch.Tensor, indices: list[int]
                 ) -> tuple[float, torch.Tensor]:
        """J = loss + λ·fluency of the hard prompt ``ids`` on training items ``indices``, and its gradient with
        respect to the prompt's embeddings, (L, d): the gradient at the projected point."""
        config = self.config
        projected = objective.lm.embedding_matrix[ids].detach().float().requires_grad_()
        loss = objective.loss(projected, indices)
        if config.fluency_weight and fluency is not None:
            nll = fluency.nll_of_vectors(ids, projected)
            loss = loss + config.fluency_weight * (nll.exp() if config.fluency_form == "perplexity" else nll)
        (grad,) = torch.autograd.grad(loss, projected)
        return loss.item(), grad

