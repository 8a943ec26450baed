"""The probing objectives: the log-loss of the gold answer under one prompt (over the vocabulary, or among
candidate answers), and ``train_prompt`` / ``train_candidates``, which fit a prompt to them by gradient
descent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from softprompt.engine import Batch, Engine
from softprompt.errors import SoftpromptError
from softprompt.optimizers import FitResult, GradientDescent, TrainConfig
from softprompt.optimizers.base import epoch_seed
from softprompt.probing.candidates import CandidateScorer
from softprompt.progress import progress_bar
from softprompt.prompts import Prompt
from softprompt.templates import Example


def mean_loss(engine: Engine, prompt: Prompt, examples: Sequence[Example], batch_size: int) -> float:
    """Mean negative log-likelihood of the gold answers."""
    total = 0.0
    with torch.inference_mode():
        for idx in progress_bar(engine.eval_batches(examples, batch_size), "dev loss"):
            batch = engine.collate([examples[i] for i in idx])
            logits = engine.answer_logits(batch, prompt.vectors(), prompt.deltas())
            total += F.cross_entropy(logits, batch.answer_ids, reduction="sum").item()
    return total / len(examples)


def backward_answer_loss(engine: Engine, prompt: Prompt, batch: Batch) -> float:
    """Add the gradient of the batch's mean answer log-loss; return that loss."""
    loss = F.cross_entropy(engine.answer_logits(batch, prompt.vectors(), prompt.deltas()), batch.answer_ids)
    loss.backward()
    return loss.item()


def train_step(engine: Engine, prompt: Prompt, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One optimizer step on a batch's mean answer log-loss; returns that loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = backward_answer_loss(engine, prompt, batch)
    optimizer.step()
    return loss


@dataclass
class AnswerObjective:
    """The log-loss of the gold answer under one prompt (an ``optimizers.Objective``)."""

    engine: Engine
    prompt: Prompt
    items: Sequence[Example]
    dev: Sequence[Example]
    eval_batch_size: int

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": self.prompt.trainable_parameters(), "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        return backward_answer_loss(self.engine, self.prompt, self.engine.collate([self.items[i] for i in indices]))

    def dev_loss(self) -> float:
        return mean_loss(self.engine, self.prompt, self.dev, self.eval_batch_size)

    @property
    def dev_size(self) -> int:
        return len(self.dev)

    def dev_terms(self, indices: Sequence[int]) -> float:
        """The dev loss's terms of these dev facts (their log-losses over the dev count): data-parallel processes
        each score some of the facts (an ``optimizers.base.ShardedDevObjective``)."""
        part = [self.dev[i] for i in indices]
        if not part:
            return 0.0
        return mean_loss(self.engine, self.prompt, part, self.eval_batch_size) * len(part) / len(self.dev)

    def start_epoch(self, epoch: int) -> None:
        pass


def train_prompt(
    engine: Engine,
    prompt: Prompt,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``prompt`` in place by gradient descent; on return it holds the parameters that scored best on dev."""
    check_trainable(prompt, train, dev)
    objective = AnswerObjective(engine, prompt, train, dev, config.eval_batch_size)
    return GradientDescent(config, progress).fit(objective, checkpoint, resume)


def check_trainable(prompt: Prompt, train: Sequence[Example], dev: Sequence[Example]) -> None:
    """Refuse to train without training or dev facts, or a prompt without parameters."""
    if not train:
        raise SoftpromptError("the training split is empty: nothing to learn from")
    if not dev:
        raise SoftpromptError("the dev split is empty: early stopping needs dev data")
    if not prompt.trainable_parameters():
        raise SoftpromptError(f"a {prompt.kind} prompt has no trainable parameters; use mode soft or deep")


@dataclass
class CandidateObjective:
    """The cross-entropy of the gold answer among the candidate answers under one prompt (an
    ``optimizers.Objective``): the gold candidate's score against every candidate's, or, with the candidates'
    ``negatives`` set, against the batch's golds and that many others drawn at random for each step (a sampled
    softmax: each step's token tree holds those candidates only, so a step costs its sample, not the whole set).
    The dev loss is always over every candidate."""

    scorer: CandidateScorer
    prompt: Prompt
    items: Sequence[Example]
    gold: torch.Tensor  # (N,) each training fact's answer, an index into the candidates
    dev: Sequence[Example]
    dev_gold: torch.Tensor
    seed: int = 0
    epoch: int = field(default=0, init=False)
    steps: int = field(default=0, init=False)  # steps taken in this epoch: with the epoch, seeds the sample

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": self.prompt.trainable_parameters(), "lr": lr}]

    def backward(self, indices: list[int]) -> float:
        """Add the gradient of the batch's mean loss, in chunks of at most one forward pass each (a batch of
        facts times the candidates' slots may not fit in memory at once); return that loss."""
        scorer, gold = self.scorer, self.gold[indices]
        negatives = scorer.candidates.negatives
        if negatives is not None:
            scorer, gold = self.sampled(gold, negatives)
        self.steps += 1
        total = 0.0
        step = scorer.facts_per_pass
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            scores = scorer.scores([self.items[i] for i in chunk], self.prompt.vectors(), self.prompt.deltas())
            loss = F.cross_entropy(scores, gold[start : start + step].to(scores.device), reduction="sum")
            (loss / len(indices)).backward()
            total += loss.item() / len(indices)
        return total

    def sampled(self, gold: torch.Tensor, negatives: int) -> tuple[CandidateScorer, torch.Tensor]:
        """A scorer of the batch's golds and ``negatives`` other candidates drawn uniformly (seeded by the seed,
        the epoch and the step, so a resumed run draws the same), and the golds' positions among them."""
        golds = sorted(set(gold.tolist()))
        others = [c for c in range(len(self.scorer.candidates)) if c not in set(golds)]
        generator = torch.Generator().manual_seed(epoch_seed(epoch_seed(self.seed, self.epoch), self.steps))
        drawn = torch.randperm(len(others), generator=generator)[:negatives].tolist()
        chosen = golds + sorted(others[i] for i in drawn)
        position = {c: i for i, c in enumerate(chosen)}
        scorer = CandidateScorer(self.scorer.engine, self.scorer.candidates.subset(chosen))
        return scorer, torch.tensor([position[g] for g in gold.tolist()])

    def dev_loss(self) -> float:
        scores = self.scorer.all_scores(self.dev, self.prompt.vectors(), self.prompt.deltas())
        return F.cross_entropy(scores, self.dev_gold).item()

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.steps = epoch, 0


def train_candidates(
    scorer: CandidateScorer,
    prompt: Prompt,
    train: Sequence[Example],
    train_gold: Sequence[int],
    dev: Sequence[Example],
    dev_gold: Sequence[int],
    config: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """``train_prompt`` in candidate mode: the loss is the cross-entropy over ``scorer``'s candidates (or a
    sample of them, with their ``negatives`` set), and ``train_gold`` / ``dev_gold`` are each fact's answer among
    them."""
    check_trainable(prompt, train, dev)
    objective = CandidateObjective(scorer, prompt, train, torch.tensor(list(train_gold)), dev,
                                   torch.tensor(list(dev_gold)), config.seed)
    return GradientDescent(config, progress).fit(objective, checkpoint, resume)
