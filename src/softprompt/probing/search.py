"""Discrete search over a LAMA template's prompt tokens (an ``optimizers.search.SearchObjective``).

The searched positions are the template's [T] triggers (``"[X] [T] [T] [T] [T] [T] [Y]"``, or triggers among
kept words), or every prompt token of a template without triggers (a search that starts from the manual
template). The gold answer is scored over the whole vocabulary, as in vocabulary-mode probing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from softprompt.engine import Engine, length_batches
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.search import CandidateScores, starting_ids
from softprompt.prompt_scorer import PrefixMemo, Queries, frozen_prefix_logits, score_candidates
from softprompt.prompts import HardPrompt
from softprompt.templates import Example, TemplateEncoder

# Facts per scoring pass (each pass runs every candidate on them).
SEARCH_BATCH_SIZE = 64


def gold_and_best_other(gold: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(k, n, 2): each item's gold log-probability and the best wrong answer's, from (k, n, V) logits."""
    scores = CandidateScores.from_logprobs(logits.log_softmax(-1), gold)
    return torch.stack([scores.gold, scores.best_other], -1).float().cpu()


@dataclass
class TemplateSearch:
    engine: Engine
    encoder: TemplateEncoder
    items: Sequence[Example]
    dev: Sequence[Example]
    init: str = "random"
    seed: int = 0
    batch_size: int = SEARCH_BATCH_SIZE
    classification: bool = False
    free: tuple[int, ...] = field(init=False)
    initial_ids: tuple[int, ...] = field(init=False)
    prefixes: PrefixMemo = field(init=False, default_factory=PrefixMemo)  # subjects the scorer has run

    def __post_init__(self) -> None:
        self.free = self.encoder.triggers or tuple(range(len(self.encoder.prompt_ids)))
        if self.init == "keep" and self.encoder.triggers:
            raise SoftpromptError(f"template {self.encoder.template.text!r} has [T] triggers, which have no words to "
                                  "keep; start them from 'random' or a text (e.g. --init the)")
        self.initial_ids = starting_ids(self.lm, self.encoder.prompt_ids, self.free, self.init, self.seed)

    @property
    def lm(self) -> LanguageModel:
        return self.engine.lm

    def scores(self, candidates: torch.Tensor, indices: Sequence[int] | None = None, dev: bool = False
               ) -> CandidateScores:
        facts = self.dev if dev else self.items
        chosen = list(range(len(facts))) if indices is None else list(indices)
        vectors = self.lm.embed(candidates.to(self.lm.device)).detach()
        out = torch.empty(len(candidates), len(chosen), 2)
        for group in length_batches([facts[i] for i in chosen], self.batch_size):
            batch = self.engine.collate([facts[chosen[i]] for i in group])
            queries = Queries(torch.arange(len(group), device=batch.input_ids.device), batch.answer_positions)
            out[:, group] = score_candidates(self.engine, batch, queries, vectors,
                                             partial(gold_and_best_other, batch.answer_ids), memo=self.prefixes)
        return CandidateScores(out[..., 0], out[..., 1])

    def loss(self, vectors: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        batch = self.engine.collate([self.items[i] for i in indices])
        queries = Queries(torch.arange(len(batch), device=batch.input_ids.device), batch.answer_positions)
        logits = frozen_prefix_logits(self.engine, batch, queries, vectors)  # the subject before the triggers
        return F.cross_entropy(self.engine.answer_logits(batch, vectors) if logits is None else logits,
                               batch.answer_ids)

    def hard_prompt(self, ids: Sequence[int]) -> HardPrompt:
        return HardPrompt(self.encoder, token_ids=list(ids))
