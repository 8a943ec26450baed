"""AutoPrompt (Shin et al. 2020): gradient-guided token swaps in a prompt's trigger positions.

Each step takes the gradient of the training loss with respect to the prompt's embeddings, picks one free
position at random, and ranks every allowed token by how much swapping it in would lower the loss to first
order: −(e' · ∇), HotFlip's estimate (the constant −e · ∇ drops out of the ranking). The top candidates and
the current prompt are then scored together on a fresh sample of training items by the shared candidate
scorer (one pass for all of them, the common prefix computed once); the best candidate replaces the current
token if it lowers that sample's loss. Every ``eval_every`` steps the prompt is evaluated on dev, and the best
dev prompt is the result.

Defaults follow the reference implementation (github.com/ucinlp/autoprompt, create_trigger.py): 10
candidates, 32 items per gradient, triggers initialised to "the"; its 100 iterations each accumulate 10
batches, which we count as steps of one batch (so 1000 steps); candidates are compared on 64 items.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftpromptError
from softprompt.optimizers.base import FitResult, Optimizer, epoch_seed
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


@dataclass
class AutoPromptConfig:
    steps: int = 1000
    candidates: int = 10
    batch_size: int = 32
    eval_size: int = 64
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "candidates", "batch_size", "eval_size", "eval_every"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"AutoPrompt's {name} must be at least 1, got {getattr(self, name)}")


class AutoPrompt(Optimizer):
    name = "autoprompt"

    def __init__(self, config: AutoPromptConfig | None = None, fluency: Fluency | None = None,
                 progress: bool = True) -> None:
        self.config = config or AutoPromptConfig()
        self.fluency = fluency  # only measures the prompts' perplexity for the history
        self.progress = progress

    def candidates(self, objective: SearchObjective, ids: torch.Tensor, position: int, indices: list[int],
                   blocked: torch.Tensor) -> torch.Tensor:
        """The ``candidates`` tokens whose swap into ``position`` lowers the loss most to first order."""
        embeddings = objective.lm.embedding_matrix
        vectors = embeddings[ids].detach().float().requires_grad_()
        (grad,) = torch.autograd.grad(objective.loss(vectors, indices), vectors)
        gain = -(embeddings.detach().float() @ grad[position])
        gain = gain.masked_fill(blocked, float("-inf"))
        gain[ids[position]] = float("-inf")  # the current token is scored anyway
        return gain.topk(self.config.candidates).indices.cpu()

    def fit(self, objective: SearchObjective, checkpoint: Path | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> FitResult:
        check_objective(objective)
        config, lm = self.config, objective.lm
        fluency = fluency_of(self, lm)
        blocked = ~allowed_tokens(lm).to(lm.device)
        identity = {"method": self.name, "config": asdict(config), "initial_ids": list(objective.initial_ids),
                    "settings": settings or {}}
        log = SearchLog(objective, fluency, checkpoint, identity)
        log.start(resume)
        ids = torch.tensor(log.state.get("ids", objective.initial_ids), dtype=torch.long)
        accepted = log.state.get("accepted", 0)

        for step in progress_bar(range(log.step + 1, config.steps + 1), "AutoPrompt", self.progress):
            position = random.Random(epoch_seed(config.seed, step)).choice(objective.free)
            grad_items = step_items(len(objective.items), config.batch_size, config.seed, step)
            swaps = self.candidates(objective, ids, position, grad_items, blocked)
            population = ids.repeat(len(swaps) + 1, 1)
            population[1:, position] = swaps
            eval_items = step_items(len(objective.items), config.eval_size, config.seed + 1, step)
            losses = objective.scores(population, eval_items).loss()
            log.count(len(population) * len(eval_items) + len(grad_items))
            winner = int(losses.argmin())
            if winner and losses[winner] < losses[0]:
                ids = population[winner]
                accepted += 1
            if step % config.eval_every == 0 or step == config.steps:
                current = log.evaluate(step, float(losses[0]), ids.tolist(), ids=ids.tolist(), accepted=accepted)
                if self.progress:
                    logger.info("step %d: dev accuracy %.4f  dev loss %.4f  (%d swaps accepted)", step,
                                current.accuracy, current.loss, accepted)
        return log.result()

