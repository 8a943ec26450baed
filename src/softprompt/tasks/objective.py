"""The task objective: cross-entropy of the gold choice among a task's choices, under one task prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.engine import Engine
from softprompt.prompts import TaskPrompt
from softprompt.tasks.scoring import Encoded, choice_loss, choice_scores, example_rows, example_sizes, row_scores


@dataclass
class ChoiceObjective:
    """Cross-entropy of the gold choice among the task's choices (``optimise``'s Objective)."""

    engine: Engine
    prompt: TaskPrompt
    train: Encoded
    dev: Encoded
    normalise: bool
    eval_batch_size: int

    @property
    def items(self) -> list[range]:
        return example_sizes(self.train)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": self.prompt.trainable_parameters(), "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        scores = row_scores(self.engine, self.train, example_rows(self.train, indices), self.prompt.vectors(),
                            self.prompt.deltas()).view(len(indices), -1)
        lengths = self.train.choice_lengths[indices] if self.normalise else None
        loss = choice_loss(scores, self.train.labels[indices], lengths)
        loss.backward()
        return loss.item()

    def dev_loss(self) -> float:
        scores = choice_scores(self.engine, self.dev, self.prompt.vectors(), self.prompt.deltas(), self.eval_batch_size)
        return choice_loss(scores, self.dev.labels, self.dev.choice_lengths if self.normalise else None).item()

    @property
    def dev_size(self) -> int:
        return self.dev.num_examples

    def dev_terms(self, indices: Sequence[int]) -> float:
        """The dev loss's terms of these dev examples (their cross-entropies over the dev count): data-parallel
        processes each score some of the examples (an ``optimizers.base.ShardedDevObjective``)."""
        if not indices:
            return 0.0
        rows = example_rows(self.dev, indices)
        scores = torch.empty(len(rows), *(() if self.dev.shared_ids is None else (self.dev.num_choices,)))
        with torch.inference_mode():
            for idx in self.engine.eval_batches([self.dev.rows[r] for r in rows], self.eval_batch_size):
                scores[idx] = row_scores(self.engine, self.dev, [rows[i] for i in idx], self.prompt.vectors(),
                                         self.prompt.deltas()).float().cpu()
        lengths = self.dev.choice_lengths[list(indices)] if self.normalise else None
        loss = choice_loss(scores.view(len(indices), -1), self.dev.labels[list(indices)], lengths)
        return loss.item() * len(indices) / self.dev.num_examples

    def start_epoch(self, epoch: int) -> None:
        pass
