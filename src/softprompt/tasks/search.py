"""Discrete search over a task layout's [P] positions (an ``optimizers.search.SearchObjective``).

Every [P] position of the layout (``"[P*5]{input}"``, ``"{input} [P*5]"``, markers in the task's template)
is searched; the layout's words stay. Choices are scored as in tuning (summed or length-normalised
log-likelihoods) and normalised over the task's choices: the gold choice's log-probability and the best
other's are what losses, accuracies and RLPrompt's gap reward read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from softprompt.engine import Engine, length_batches
from softprompt.models import LanguageModel
from softprompt.optimizers.search import CandidateScores, starting_ids
from softprompt.prompt_scorer import PrefixMemo, Queries, score_candidates
from softprompt.prompts import TaskPrompt
from softprompt.tasks.scoring import (
    CHOICE_BATCH_SIZE,
    Encoded,
    choice_loss,
    collate_rows,
    example_rows,
    example_sizes,
    row_scores,
)


def rows_from_logits(encoded: Encoded, targets: torch.Tensor, query_rows: torch.Tensor, rows: int,
                     logits: torch.Tensor) -> torch.Tensor:
    """Per-candidate row scores from (k, Q, V) query logits: (k, rows, C) for shared verbalizers, else (k, rows)."""
    logp = logits.log_softmax(-1)
    if encoded.shared_ids is not None:
        return logp[..., list(encoded.shared_ids)].float().cpu()
    token_logp = logp.gather(-1, targets[None, :, None].expand(len(logp), -1, 1))[..., 0]
    return torch.zeros(len(logp), rows, device=logp.device).index_add(1, query_rows, token_logp).float().cpu()


@dataclass
class LayoutSearch:
    engine: Engine
    prompt: TaskPrompt  # fixes the layout; its vectors are not used
    train: Encoded
    dev_encoded: Encoded
    normalise: bool
    init: str = "random"
    seed: int = 0
    batch_size: int = CHOICE_BATCH_SIZE
    classification: bool = True
    free: tuple[int, ...] = field(init=False)
    initial_ids: tuple[int, ...] = field(init=False)
    items: list[range] = field(init=False)  # the training examples as sized items, computed once
    prefixes: PrefixMemo = field(init=False, default_factory=PrefixMemo)  # inputs the scorer has run

    def __post_init__(self) -> None:
        self.items = example_sizes(self.train)
        self.free = tuple(range(self.prompt.length))
        base = [self.lm.tokenizer.pad_token_id] * self.prompt.length
        self.initial_ids = starting_ids(self.lm, base, self.free, "random" if self.init == "keep" else self.init,
                                        self.seed)

    @property
    def lm(self) -> LanguageModel:
        return self.engine.lm

    @property
    def dev(self) -> list[int]:
        return list(range(self.dev_encoded.num_examples))

    def choice_scores(self, candidates: torch.Tensor, encoded: Encoded, examples: Sequence[int]) -> torch.Tensor:
        """(K, n, C) summed log-likelihoods of every choice of the given examples under each candidate."""
        vectors = self.lm.embed(candidates.to(self.lm.device)).detach()
        rows = example_rows(encoded, examples)
        shared = encoded.shared_ids is not None
        out = torch.empty(len(candidates), len(rows), *((encoded.num_choices,) if shared else ()))
        for group in length_batches([encoded.rows[r] for r in rows], self.batch_size):
            batch = collate_rows([encoded.rows[rows[i]] for i in group], self.lm.tokenizer.pad_token_id,
                                 self.engine.padding_side == "left", self.lm.device)
            queries = Queries(batch.query_rows, batch.query_positions)
            read = partial(rows_from_logits, encoded, batch.target_ids, batch.query_rows, len(group))
            out[:, group] = score_candidates(self.engine, batch, queries, vectors, read, memo=self.prefixes)
        return out.view(len(candidates), len(examples), encoded.num_choices)

    def scores(self, candidates: torch.Tensor, indices: Sequence[int] | None = None, dev: bool = False
               ) -> CandidateScores:
        encoded = self.dev_encoded if dev else self.train
        examples = list(range(encoded.num_examples)) if indices is None else list(indices)
        scores = self.choice_scores(candidates, encoded, examples)
        if self.normalise:
            scores = scores / encoded.choice_lengths[examples]
        return CandidateScores.from_logprobs(scores.log_softmax(-1), encoded.labels[examples])

    def loss(self, vectors: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        indices = list(indices)
        scores = row_scores(self.engine, self.train, example_rows(self.train, indices), vectors, None)
        lengths = self.train.choice_lengths[indices] if self.normalise else None
        return choice_loss(scores.view(len(indices), -1), self.train.labels[indices], lengths)

    def hard_prompt(self, ids: Sequence[int]) -> TaskPrompt:
        p = self.prompt
        return TaskPrompt(self.lm, p.layout, 0, p.template_markers, "hard", init=p.init, init_text=p.init_text,
                          seed=p.seed, task=p.task, token_ids=list(ids))
