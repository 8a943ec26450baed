"""Discrete prompt search: what PEZ, AutoPrompt and RLPrompt share.

A ``SearchObjective`` lays a prompt of ``length`` token positions over its data (the trigger positions of a
LAMA template, the [P] positions of a task layout) and scores any number of candidate token sequences on
the same items at once (``softprompt.prompt_scorer`` shares the computation candidates have in common).
Searches work on token ids and return a hard prompt: its vectors are exact vocabulary embeddings, so it is
faithful by construction (Patel et al.'s Δ_D = 0).

Model selection: the candidate with the best dev accuracy wins, ties broken by the lower dev loss (a dev set
of 32 examples has only 33 accuracy values). Searches checkpoint their state with ``write_state`` after
each evaluation and a resumed search replays exactly what an uninterrupted one would have done: every
step's randomness is seeded by (seed, step).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write
from softprompt.models import LanguageModel
from softprompt.optimizers.base import FitResult, epoch_seed, read_checkpoint
from softprompt.optimizers.fluency import Fluency
from softprompt.prompts import Prompt


@dataclass
class CandidateScores:
    """How K candidate prompts do on n items."""

    gold: torch.Tensor  # (K, n) log-probability of each item's gold answer, normalised over its answer space
    best_other: torch.Tensor  # (K, n) that of the most probable wrong answer

    @classmethod
    def from_logprobs(cls, logp: torch.Tensor, gold: torch.Tensor) -> CandidateScores:
        """From (K, n, A) log-probabilities over each item's answer space and the (n,) gold answers."""
        index = gold.to(logp.device)[None, :, None].expand(len(logp), -1, 1)
        return cls(logp.gather(-1, index)[..., 0], logp.scatter(-1, index, float("-inf")).amax(-1))

    def loss(self) -> torch.Tensor:
        """(K,) mean negative log-likelihood of the gold answers."""
        return -self.gold.mean(1)

    def accuracy(self) -> torch.Tensor:
        """(K,) fraction of items whose gold answer is strictly the most probable (a tie counts as wrong, and
        a non-finite score never counts as right)."""
        right = (self.gold > self.best_other) & self.gold.isfinite()
        return right.float().mean(1)


class SearchObjective(Protocol):
    """A layout of prompt token positions over training and dev items."""

    lm: LanguageModel
    initial_ids: tuple[int, ...]  # the starting prompt, one token per position
    free: tuple[int, ...]  # the positions a search may change; the others keep their words
    items: Sequence[Sized]  # the training items
    dev: Sequence[Sized]
    # True when the answer space is a task's few choices (rewards can use their probabilities' gap), False for
    # probing over the vocabulary or candidate answers (rewards use the gold answer's log-probability).
    classification: bool

    def scores(self, candidates: torch.Tensor, indices: Sequence[int] | None = None, dev: bool = False
               ) -> CandidateScores:
        """Scores of the candidates ``(K, length)`` token ids on training items ``indices`` (all if None), or on
        the dev items, without gradients."""
        ...

    def loss(self, vectors: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """The mean loss on training items ``indices`` with ``vectors`` ``(length, d)`` at the prompt
        positions, differentiable with respect to them."""
        ...

    def hard_prompt(self, ids: Sequence[int]) -> Prompt:
        """The prompt of these token ids, as the prompt kind the objective's runs load."""
        ...


@dataclass
class Evaluation:
    """One candidate on the dev items: what model selection compares."""

    accuracy: float
    loss: float

    def beats(self, other: Evaluation | None) -> bool:
        return other is None or (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


def evaluate(objective: SearchObjective, ids: Sequence[int]) -> Evaluation:
    scores = objective.scores(torch.tensor([list(ids)]), dev=True)
    loss = float(scores.loss()[0])
    return Evaluation(float(scores.accuracy()[0]), loss if loss == loss else float("inf"))


class SearchLog:
    """A search's bookkeeping between steps: the best prompt on dev so far, the history, the (prompt, item)
    pairs scored, the time spent, and the checkpoint that holds them with the method's own ``tensors``.

    ``start`` evaluates the initial prompt (step 0) or restores a checkpoint of the same ``identity``; the
    method then calls ``count`` as it scores items and ``evaluate`` every so many steps; ``result`` is the
    best prompt found. Each history line: the step, the training loss (None at step 0), the dev accuracy and
    loss, the prompt's perplexity under the fluency reference, the pairs scored so far and the seconds."""

    def __init__(self, objective: SearchObjective, fluency: Fluency | None, checkpoint: Path | None,
                 identity: dict[str, Any], line_fields: tuple[str, ...] = ()) -> None:
        self.objective, self.fluency, self.checkpoint, self.identity = objective, fluency, checkpoint, identity
        self.line_fields = line_fields  # the method's own fields of each history line (None at step 0)
        self.started = time.perf_counter()
        self.state: dict[str, Any] = {}
        self.earlier = 0.0  # seconds spent by the calls that wrote the checkpoint this call resumed

    def start(self, resume: bool) -> dict[str, torch.Tensor] | None:
        """Restore the checkpoint (returning the method's tensors) if resuming from one, else begin at step 0."""
        stored = read_state(self.checkpoint, self.identity) if resume and self.checkpoint else None
        if stored is not None:
            self.state, tensors = stored
            self.earlier = self.state["seconds"]
            return tensors
        self.earlier = 0.0
        ids = list(self.objective.initial_ids)
        self.state = {"step": 0, "best_step": 0, "best_ids": ids, "evaluations": 0, "seconds": 0.0, "history": []}
        self._record(0, None, ids, dict.fromkeys(self.line_fields))
        return None

    @property
    def step(self) -> int:
        """The last step evaluated (and checkpointed)."""
        return self.state["step"]

    def count(self, pairs: int) -> None:
        self.state["evaluations"] += pairs

    def evaluate(self, step: int, loss: float, prompt: Sequence[int], tensors: dict[str, torch.Tensor] | None = None,
                 line: dict[str, Any] | None = None, **extra: Any) -> Evaluation:
        """Evaluate the token ids ``prompt`` on dev at ``step``, keep them if best, record the line (with the
        method's ``line`` fields) and write the checkpoint with the method's ``tensors`` and ``extra`` state."""
        current = self._record(step, loss, list(prompt), line or {})
        self.state |= extra
        if self.checkpoint:
            write_state(self.checkpoint, tensors or {}, {"identity": self.identity, "state": self.state})
        return current

    def result(self) -> FitResult:
        state = self.state
        return FitResult(self.objective.hard_prompt(state["best_ids"]), state["best_step"], state["best"]["loss"],
                         state["history"], self.earlier)

    def _record(self, step: int, loss: float | None, ids: list[int], line: dict[str, Any]) -> Evaluation:
        state = self.state
        current = evaluate(self.objective, ids)
        self.count(len(self.objective.dev))
        if step == 0 or current.beats(Evaluation(**state["best"])):
            state |= {"best_step": step, "best_ids": ids, "best": asdict(current)}
        if step:  # a resumed call's time adds to what the checkpoint had spent
            state["seconds"] = self.earlier + time.perf_counter() - self.started
        state["step"] = step
        state["history"].append({"step": step, "loss": loss, "dev_accuracy": current.accuracy,
                                 "dev_loss": current.loss, "perplexity": perplexity(self.fluency, ids),
                                 "evaluations": state["evaluations"], "seconds": state["seconds"], **line})
        return current


def step_items(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The training items of one step: a seeded sample, so a resumed search sees the same ones. Sorted: a step
    that takes every item then scores the same batch as the step before, whose inputs the scorer has cached."""
    return sorted(random.Random(epoch_seed(seed, step)).sample(range(n), min(batch_size, n)))


def allowed_tokens(lm: LanguageModel) -> torch.Tensor:
    """(V,) booleans: the tokens a search may place in a prompt (not special tokens, not ids past the
    tokenizer's vocabulary, which some models pad their embedding matrices with)."""
    allowed = torch.zeros(lm.vocab_size, dtype=torch.bool)
    allowed[: min(len(lm.tokenizer), lm.vocab_size)] = True
    allowed[[i for i in lm.tokenizer.all_special_ids if i < lm.vocab_size]] = False
    return allowed


def check_objective(objective: SearchObjective) -> None:
    if not objective.items:
        raise SoftpromptError("the training split is empty: nothing to search with")
    if not objective.dev:
        raise SoftpromptError("the dev split is empty: a search keeps the prompt that does best on dev data")
    if not objective.free:
        raise SoftpromptError("the prompt has no positions to search: give a template with [T] triggers or a "
                              "layout with [P] positions")


def write_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a search's checkpoint atomically: its tensors, and ``meta`` (JSON) in the header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()} or {"empty": torch.zeros(0)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"softprompt.search": json.dumps(meta)}))


def read_state(path: Path, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """A checkpoint written by ``write_state``, or None if there is none. It must have been written with the
    same ``identity`` (method, settings); a damaged one is moved aside, with one line saying so."""
    if not path.is_file():
        return None
    meta, tensors = read_checkpoint(path, "softprompt.search", {"identity", "state"})
    if meta["identity"] != identity:
        raise SoftpromptError(f"{path} was written with search settings {meta['identity']}, not {identity}; resume "
                              "with the same settings, or start a new run directory")
    return meta["state"], tensors


# Random initial tokens come from the most common ones: BPE ids roughly follow frequency (merge order), as for
# task prompts' vocabulary init.
COMMON_TOKENS = 5000


def starting_ids(lm: LanguageModel, base: Sequence[int], free: Sequence[int], init: str, seed: int = 0
                 ) -> tuple[int, ...]:
    """A search's starting prompt: ``base`` with its free positions filled by ``init``: "random" (common
    tokens, seeded), "keep" (the base's own words, where it has them), or a text whose tokens are cycled
    over the free positions (AutoPrompt starts from "the")."""
    ids = list(base)
    if init == "keep":
        return tuple(ids)
    if init == "random":
        pool = allowed_tokens(lm).nonzero()[:, 0][:COMMON_TOKENS]
        gen = torch.Generator().manual_seed(seed)
        fill = pool[torch.randint(len(pool), (len(free),), generator=gen)].tolist()
    else:
        tokens = lm.tokenizer(init if init[:1].isspace() else " " + init, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise SoftpromptError(f"the initial text {init!r} has no tokens; give a text, 'random' or 'keep'")
        fill = (tokens * (len(free) // len(tokens) + 1))[: len(free)]
    for position, token in zip(free, fill, strict=True):
        ids[position] = token
    return tuple(ids)


def fluency_of(optimizer: Any, lm: LanguageModel) -> Fluency | None:
    """The search's fluency reference: its own, else the model itself when it is causal (a masked or
    encoder-decoder model has no perplexity of its own; give a causal reference to measure one)."""
    if getattr(optimizer, "fluency", None) is not None:
        return optimizer.fluency
    return Fluency(lm) if lm.kind == "causal" else None


def perplexity(fluency: Fluency | None, ids: Sequence[int]) -> float | None:
    return float(fluency.perplexity(torch.tensor([list(ids)]))[0]) if fluency is not None else None


def search_settings(optimizer: Any) -> dict[str, Any]:
    """What identifies a search in a run's config.json: the method, its settings and the fluency reference."""
    fluency = getattr(optimizer, "fluency", None)
    return {"method": optimizer.name, **asdict(optimizer.config),
            "fluency_model": fluency.reference.name if fluency is not None else None}


def found_prompt(prompt: Prompt, fluency: Fluency | None) -> dict[str, Any]:
    """What a run's metrics say of the hard prompt a search found: its text, tokens, ids and perplexity."""
    ids = list(prompt.token_ids)  # a searched HardPrompt's or TaskPrompt's
    tokenizer = prompt.lm.tokenizer
    return {"prompt_text": tokenizer.decode(ids), "prompt_tokens": tokenizer.convert_ids_to_tokens(ids),
            "token_ids": ids, "perplexity": perplexity(fluency, ids),
            "fluency_model": fluency.reference.name if fluency is not None else None}
