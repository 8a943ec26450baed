"""Candidate-answer mode: every fact is ranked among a set of candidate answers, which may be several tokens
long, instead of over the vocabulary at one answer position (where multi-token answers must be dropped).

The score of candidate c is log p(c | prompt), the sum of its tokens' log-probabilities (optionally divided
by its token count). Causal LMs read token j of c after the prompt and c's first j - 1 tokens: the
candidates' proper prefixes form one token tree (a trie) appended to each fact's row and run in the same
forward pass (``Engine.tree_hidden``), so a fact costs its prompt plus the distinct prefixes, not the
candidates times the prompt; single-token candidates are read off the answer position's distribution.
Masked LMs get one [MASK] per candidate token, each scored independently (as task choices are, see
``tasks.scoring``): one row per fact and distinct candidate length serves every candidate of that length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from softprompt.engine import Engine, TokenTree, length_batches
from softprompt.errors import SoftpromptError
from softprompt.io import read_utf8
from softprompt.probing.relations import Relation
from softprompt.templates import Example, TemplateEncoder

# Answer-reading positions projected to the vocabulary in one forward pass: a memory bound on the
# (facts, positions, vocabulary) logits (results do not depend on it).
MAX_QUERIES = 2048


@dataclass(frozen=True)
class CandidateOptions:
    """Candidate-answer mode as asked for: where the candidates come from and how they are scored."""

    file: Path | None = None  # one answer per line; None: every distinct answer in the relation's splits
    normalise: bool = False  # rank by the mean rather than the sum of the tokens' log-probabilities
    negatives: int | None = None  # training: each step's loss over its golds and this many sampled others

    def __post_init__(self) -> None:
        if self.negatives is not None and self.negatives < 1:
            raise SoftpromptError(f"the sampled negatives must be at least 1, got {self.negatives}")


@dataclass(frozen=True)
class Candidates:
    """The candidate answers of a relation for one model: distinct token sequences, with the text each
    was first given as."""

    texts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    source: str  # the candidates file, or "relation" for every distinct answer of the relation
    normalise: bool
    negatives: int | None = None  # training samples this many other candidates per step (None: all of them)

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def _indices(self) -> dict[tuple[int, ...], int]:
        return {tokens: index for index, tokens in enumerate(self.tokens)}

    def index(self, tokens: tuple[int, ...]) -> int | None:
        """The candidate with these tokens (how a fact's answer is found among the candidates), or None."""
        return self._indices.get(tokens)

    @property
    def longest(self) -> int:
        return max(map(len, self.tokens))

    def settings(self) -> dict[str, Any]:
        """What config.json and metrics.json record of the candidates (a changed file cannot be resumed)."""
        digest = hashlib.sha256("\n".join(self.texts).encode()).hexdigest()[:16]
        return {"ranking": "candidates", "candidates": len(self), "candidates_source": self.source,
                "candidates_sha256": digest, "normalise": self.normalise,
                **({"negatives": self.negatives} if self.negatives is not None else {})}

    def subset(self, indices: Sequence[int]) -> Candidates:
        """These candidates only, in this order (a training step's golds and sampled negatives)."""
        return replace(self, texts=tuple(self.texts[i] for i in indices),
                       tokens=tuple(self.tokens[i] for i in indices))


def relation_answers(relation: Relation) -> list[str]:
    """Every distinct answer of the relation's splits (all of them, before any limit), first seen first."""
    return list(dict.fromkeys(fact.answer for facts in relation.splits.values() for fact in facts))


def read_candidates(path: Path) -> list[str]:
    """The candidate answers of a text file, one per non-blank line (UTF-8, surrounding spaces ignored)."""
    answers = [line.strip() for line in read_utf8(path).split("\n") if line.strip()]
    if not answers:
        raise SoftpromptError(f"{path}: the candidates file is empty; write one candidate answer per line")
    return answers


def make_candidates(encoder: TemplateEncoder, answers: Sequence[str], source: str, normalise: bool,
                    negatives: int | None = None) -> Candidates:
    """Tokenise ``answers`` in the template's answer context. Answers that tokenise alike are one candidate
    (the first text is kept); an answer with the unknown token is left out, since it would tie with every
    other unknown word."""
    unk = encoder.lm.tokenizer.unk_token_id
    seen: dict[tuple[int, ...], str] = {}
    for answer in answers:
        tokens = encoder.answer_tokens(answer)
        if tokens and unk not in tokens:
            seen.setdefault(tokens, answer)
    if not seen:
        raise SoftpromptError(f"{source}: no candidate answer is a known token sequence for model "
                              f"'{encoder.lm.name}'; give candidates in words the model knows")
    return Candidates(tuple(seen.values()), tuple(seen), source, normalise, negatives)


def build_candidates(options: CandidateOptions, relation: Relation, encoder: TemplateEncoder) -> Candidates:
    """The candidate set ``options`` ask for, for the relation and model of ``encoder``."""
    answers = relation_answers(relation) if options.file is None else read_candidates(options.file)
    source = "relation" if options.file is None else str(options.file)
    return make_candidates(encoder, answers, source, options.normalise, options.negatives)


def prefix_tree(sequences: Sequence[tuple[int, ...]]) -> tuple[TokenTree, list[list[int]]]:
    """The tree of the sequences' proper prefixes, and for each token of each sequence the slot it is
    predicted at: 0 for the answer position, 1 + i for tree node i (the prefix before that token)."""
    node_of: dict[tuple[int, ...], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    slots = []
    for sequence in sequences:
        for j in range(1, len(sequence)):
            if sequence[:j] not in node_of:
                node_of[sequence[:j]] = len(tokens)
                tokens.append(sequence[j - 1])
                parents.append(node_of.get(sequence[: j - 1], -1))
        slots.append([0] + [1 + node_of[sequence[:j]] for j in range(1, len(sequence))])
    return TokenTree(tuple(tokens), tuple(parents)), slots


def with_masks(example: Example, count: int, mask_id: int) -> Example:
    """A masked LM's query with ``count`` [MASK] tokens at its answer position instead of one."""
    at, extra = example.answer_position, count - 1
    start, end = example.subject_span
    if start > at:  # the subject follows the answer: it moves with the inserted masks
        start, end = start + extra, end + extra
    return Example(
        (*example.input_ids[:at], *[mask_id] * count, *example.input_ids[at + 1 :]),
        (*example.prompt_slots[:at], *[-1] * count, *example.prompt_slots[at + 1 :]),
        at, example.answer_id, (start, end),
    )


class CandidateScorer:
    """Scores facts against one candidate set under a prompt: every candidate's summed (or mean) token
    log-probability.

    Each fact is read at S *slots* (causal: its answer position and every tree node; masked: each mask of
    its rows with 1, 2, ... masks), and each candidate token is a (slot, token) pair whose log-probability
    is added to its candidate's score.
    """

    def __init__(self, engine: Engine, candidates: Candidates) -> None:
        self.engine, self.candidates = engine, candidates
        sequences = candidates.tokens
        if engine.lm.kind == "causal":
            if not engine.honours_tree_masks():
                implementation = getattr(engine.lm.model.config, "_attn_implementation", None)
                raise SoftpromptError(
                    f"model {engine.lm.name!r} ignores custom 4-D attention masks (attention implementation "
                    f"{implementation!r}), which scoring candidate answers as a token tree needs; load it with "
                    "attn_implementation='sdpa' or 'eager', or rank answers over the vocabulary (--answers vocabulary)")
            self.tree, slots = prefix_tree(sequences)
            self.num_slots = 1 + len(self.tree)
        else:
            # One row per distinct length; the slots are the masks of those rows, in order.
            self.mask_counts = sorted({len(s) for s in sequences})
            first = {count: sum(self.mask_counts[:i]) for i, count in enumerate(self.mask_counts)}
            slots = [[first[len(s)] + j for j in range(len(s))] for s in sequences]
            self.num_slots = sum(self.mask_counts)
            self.slot_row = torch.tensor([i for i, count in enumerate(self.mask_counts) for _ in range(count)])
            self.slot_offset = torch.tensor([j for count in self.mask_counts for j in range(count)])
        device = engine.lm.device
        self.slot = torch.tensor([s for row in slots for s in row], device=device)
        self.target = torch.tensor([t for s in sequences for t in s], device=device)
        self.owner = torch.tensor([c for c, s in enumerate(sequences) for _ in s], device=device)
        self.lengths = torch.tensor([len(s) for s in sequences], dtype=torch.float32, device=device)
        # Facts per forward pass, so that their logits (facts x slots x vocabulary) stay bounded.
        self.facts_per_pass = max(1, MAX_QUERIES // self.num_slots)

    def scores(self, examples: Sequence[Example], vectors: torch.Tensor | None, deltas: torch.Tensor | None
               ) -> torch.Tensor:
        """The candidates' scores for each example, (B, C), differentiable with respect to the prompt."""
        logits = self.engine.project(self._slot_hidden(examples, vectors, deltas))  # (B, S, V)
        token_logp = logits[:, self.slot, self.target] - logits.logsumexp(-1)[:, self.slot]
        total = torch.zeros(len(examples), len(self.candidates), device=logits.device)
        total = total.index_add(1, self.owner, token_logp)
        return total / self.lengths if self.candidates.normalise else total

    def all_scores(self, examples: Sequence[Example], vectors: torch.Tensor | None, deltas: torch.Tensor | None
                   ) -> torch.Tensor:
        """The candidates' scores for every example, (N, C) on the CPU, without gradients."""
        out = torch.empty(len(examples), len(self.candidates))
        with torch.inference_mode():
            for idx in length_batches(examples, self.facts_per_pass):
                out[idx] = self.scores([examples[i] for i in idx], vectors, deltas).float().cpu()
        return out

    def _slot_hidden(self, examples: Sequence[Example], vectors: torch.Tensor | None, deltas: torch.Tensor | None
                     ) -> torch.Tensor:
        """The final hidden states at every slot of each example, (B, S, d)."""
        if self.engine.lm.kind == "causal":
            return self.engine.tree_hidden(self.engine.collate(examples), self.tree, vectors, deltas)
        mask_id = self.engine.lm.tokenizer.mask_token_id
        batch = self.engine.collate([with_masks(e, count, mask_id) for e in examples for count in self.mask_counts])
        hidden = self.engine.final_hidden(batch, vectors, deltas)
        device = hidden.device
        rows = torch.arange(len(examples), device=device)[:, None] * len(self.mask_counts) + self.slot_row.to(device)
        return hidden[rows, batch.answer_positions[rows] + self.slot_offset.to(device)]

