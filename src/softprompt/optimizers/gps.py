"""Genetic Prompt Search (Xu et al. 2022, ZeroPrompt §3.3, Algorithm 1).

A prompt here is a *text* around the task's input: a layout such as ``"Classify the sentiment.\\nOptions:
{options}\\n{input}"``, whose ``{input}`` (and ``{options}``) slots the task fills. The search starts from a
few handcrafted prompts G⁰ and, for T iterations, scores the population on a few-shot dev set (f_GPS: dev
accuracy, ties broken by the lower dev loss, as every search here), keeps the top K as the reproductive group
and lets mutators (g_GPS: ``softprompt.optimizers.mutators``) write the next generation from it. The result is
the best of everything scored (Algorithm 1's line 6 keeps the top K of all generations; ``final`` lists them).

Mutators rewrite one literal piece of a parent (the text between slots, chosen at random weighted by its
length), so no child can lose its input slot; generated text is then cleaned by rules (``clean_piece``):
whitespace collapsed, no braces or [P] markers (they would become slots), printable, within ``max_words``,
and not a prompt seen before. Every prompt's lineage (parent, mutator, iteration, dev score) is kept.

Every iteration's randomness is seeded by (seed, iteration, parent, mutator) and the state is checkpointed
after each iteration (JSON in a safetensors header), so a resumed search replays an uninterrupted one.
Algorithm 1 as printed also generates G^{T+1} after scoring G^T and never scores it; we stop after scoring G^T.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from softprompt.errors import SoftpromptError
from softprompt.optimizers.base import FitResult, Optimizer, epoch_seed
from softprompt.optimizers.search import Evaluation, read_state, write_state
from softprompt.prompts import Prompt
from softprompt.prompts.task import MARKER

logger = logging.getLogger(__name__)

SLOT = re.compile(r"\{(\w+)\}")
SLOTS = ("input", "options", "description")
INPUT = "{input}"


class TextObjective(Protocol):
    """What GPS searches: prompt texts scored on a dev set."""

    initial: tuple[str, ...]  # G⁰, the handcrafted prompts

    def evaluate(self, texts: Sequence[str]) -> list[Evaluation]:
        """Each text's dev score (f_GPS)."""
        ...

    def prompt_of(self, text: str) -> Prompt:
        """The prompt of this text, as the runs save it."""
        ...


class Mutator(Protocol):
    """A genetic function g_GPS: rewrites of a piece of prompt text."""

    name: str

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        """Up to ``count`` rewrites of ``text`` (raw: GPS cleans them), deterministic given ``seed``."""
        ...


@dataclass
class GPSConfig:
    iterations: int = 4  # T: generations after G⁰
    top_k: int = 4  # K: the reproductive group, and the final group
    children: int = 4  # rewrites each parent asks of each mutator
    max_words: int = 80  # a cleaned prompt's limit, slots excluded
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "children", "max_words"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"GPS's {name} must be at least 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise SoftpromptError(f"GPS's iterations must be at least 0, got {self.iterations}")


@dataclass
class Candidate:
    """One prompt in the search, with its lineage."""

    text: str
    iteration: int
    parent: str | None = None
    mutator: str | None = None
    dev_accuracy: float = math.nan
    dev_loss: float = math.nan

    @property
    def evaluation(self) -> Evaluation:
        return Evaluation(self.dev_accuracy, self.dev_loss)


def check_prompt(text: str, where: str = "a GPS prompt") -> str:
    """Refuse a prompt without exactly one {input} slot, with unknown slots, or with [P] markers."""
    if not isinstance(text, str) or text.count(INPUT) != 1:
        raise SoftpromptError(f"{where} {text!r} must contain the input slot {INPUT} exactly once, e.g. "
                              "'Is this review positive or negative?\\n{input}'")
    unknown = sorted(set(SLOT.findall(text)) - set(SLOTS))
    if unknown:
        raise SoftpromptError(f"{where} {text!r} has unknown slot(s) {', '.join(unknown)}; the slots are "
                              f"{', '.join('{' + s + '}' for s in SLOTS)}")
    if MARKER.search(text):
        raise SoftpromptError(f"{where} {text!r} has a [P] marker; GPS searches words, so write the words")
    return text


def pieces(text: str) -> list[str]:
    """Literal pieces and slots alternately: ``"a {input} b"`` -> ``["a ", "input", " b"]``."""
    return SLOT.split(text)


def word_count(text: str) -> int:
    return sum(len(p.split()) for p in pieces(text)[::2])


def choose_piece(text: str, rng: random.Random) -> int | None:
    """The index (in ``pieces``) of the literal piece to mutate, drawn in proportion to its words; None if the
    prompt has no words outside its slots."""
    parts = pieces(text)
    literal = [(i, len(parts[i].split())) for i in range(0, len(parts), 2) if parts[i].split()]
    if not literal:
        return None
    return rng.choices([i for i, _ in literal], [w for _, w in literal])[0]


def clean_piece(new: str, old: str) -> str | None:
    """A generated piece made fit to replace ``old``, or None: one line's whitespace collapsed (``old``'s own
    line breaks and surrounding whitespace are kept around it), no braces or [P] markers, printable, and not
    empty."""
    text = " ".join(new.split())
    if not text or "{" in text or "}" in text or MARKER.search(text) or not text.isprintable():
        return None
    lead = old[: len(old) - len(old.lstrip())]
    trail = old[len(old.rstrip()):]
    return lead + text + trail


def normal_form(text: str) -> str:
    """What two prompts must differ in to count as different: case and whitespace aside."""
    return " ".join(text.lower().split())


class GeneticPromptSearch(Optimizer):
    name = "gps"

    def __init__(self, mutators: Sequence[Mutator], config: GPSConfig | None = None, progress: bool = True) -> None:
        if not mutators:
            raise SoftpromptError("GPS needs at least one mutator (paraphrase, infill or backtranslate)")
        names = [m.name for m in mutators]
        if len(set(names)) < len(names):
            raise SoftpromptError(f"GPS got the mutator list {names} with repeats; name each once")
        self.mutators = list(mutators)
        self.config = config or GPSConfig()
        self.progress = progress
        self.candidates: list[Candidate] = []  # every prompt scored, in order: the lineage
        self.final: list[Candidate] = []  # G^{T+1}: the top K of all generations

    def identity(self, settings: dict[str, Any] | None) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.config), "mutators": [m.name for m in self.mutators],
                **(settings or {})}

    def fit(self, objective: TextObjective, checkpoint: Path | None = None, resume: bool = False,  # type: ignore[override]
            settings: dict[str, Any] | None = None) -> FitResult:
        config = self.config
        initial = [check_prompt(t, "initial prompt") for t in objective.initial]
        if not initial:
            raise SoftpromptError("GPS needs at least one initial prompt (G⁰)")
        identity = self.identity(settings) | {"initial": initial}
        started = time.perf_counter()
        stored = read_state(checkpoint, identity) if resume and checkpoint else None
        if stored is not None:
            state = stored[0]
            self.candidates = [Candidate(**c) for c in state["candidates"]]
            population = state["population"]
            history, earlier, done = state["history"], state["seconds"], state["iteration"]
        else:
            self.candidates, history, earlier, done = [], [], 0.0, -1
            population = self._admit(list(dict.fromkeys(initial)), 0, [None] * len(initial), [None] * len(initial),
                                     objective)
        seen = {normal_form(c.text) for c in self.candidates}
        by_text = {c.text: c for c in self.candidates}
        for iteration in range(done + 1, config.iterations + 1):
            if iteration > 0:
                parents = self.survivors([by_text[t] for t in population])
                texts, parent_of, mutator_of = self._offspring(parents, iteration, seen)
                population = self._admit(texts, iteration, parent_of, mutator_of, objective)
                by_text |= {c.text: c for c in self.candidates[-len(population):]} if population else {}
            best = self.best()
            history.append({"step": iteration, "dev_accuracy": best.dev_accuracy, "dev_loss": best.dev_loss,
                            "best": best.text, "population": len(population), "scored": len(self.candidates),
                            "seconds": earlier + time.perf_counter() - started})
            if self.progress:
                logger.info("GPS iteration %d: %d new prompts, best dev accuracy %.3f: %r", iteration,
                            len(population), best.dev_accuracy, best.text)
            if checkpoint:
                state = {"iteration": iteration, "population": population, "history": history,
                         "candidates": [asdict(c) for c in self.candidates], "seconds": history[-1]["seconds"]}
                write_state(checkpoint, {}, {"identity": identity, "state": state})
            if not population:
                break  # nothing new to breed from: every rewrite was a prompt seen before
        self.final = self.survivors(self.candidates)
        best = self.final[0]
        return FitResult(objective.prompt_of(best.text), best.iteration, best.dev_loss, history, earlier)

    def lineage(self) -> list[dict[str, Any]]:
        """Every prompt scored, in order, with its origin, dev score and whether it is in the final group."""
        kept = {c.text for c in self.final}
        return [asdict(c) | {"final": c.text in kept} for c in self.candidates]

    def survivors(self, group: Sequence[Candidate]) -> list[Candidate]:
        """The top K of ``group`` by dev accuracy, then dev loss; earlier prompts win exact ties (the order
        ``group`` lists them in), so the handcrafted prompts are kept over equal rewrites."""
        order = sorted(range(len(group)), key=lambda i: (-group[i].dev_accuracy, group[i].dev_loss, i))
        return [group[i] for i in order[: self.config.top_k]]

    def best(self) -> Candidate:
        return self.survivors(self.candidates)[0]

    def _admit(self, texts: list[str], iteration: int, parent_of: list[str | None], mutator_of: list[str | None],
               objective: TextObjective) -> list[str]:
        """Score new prompts and add them to the lineage; returns their texts (the generation)."""
        if not texts:
            return []
        for text, evaluation, parent, mutator in zip(texts, objective.evaluate(texts), parent_of, mutator_of,
                                                     strict=True):
            loss = evaluation.loss if math.isfinite(evaluation.loss) else math.inf
            self.candidates.append(Candidate(text, iteration, parent, mutator, evaluation.accuracy, loss))
        return texts

    def _offspring(self, parents: list[Candidate], iteration: int, seen: set[str]
                   ) -> tuple[list[str], list[str | None], list[str | None]]:
        """G^{t+1} from the reproductive group: each mutator rewrites one piece of each parent ``children``
        times; cleaned, new prompts only."""
        texts: list[str] = []
        parent_of: list[str | None] = []
        mutator_of: list[str | None] = []
        for p, parent in enumerate(parents):
            for m, mutator in enumerate(self.mutators):
                seed = epoch_seed(epoch_seed(epoch_seed(self.config.seed, iteration), p), m)
                rng = random.Random(seed)
                index = choose_piece(parent.text, rng)
                if index is None:
                    continue
                parts = pieces(parent.text)
                for rewrite in mutator.rewrite(parts[index].strip(), self.config.children, seed):
                    piece = clean_piece(rewrite, parts[index])
                    if piece is None:
                        continue
                    child = "".join(f"{{{x}}}" if i % 2 else (piece if i == index else x) for i, x in enumerate(parts))
                    if normal_form(child) in seen or word_count(child) > self.config.max_words:
                        continue
                    check_prompt(child)  # by construction; a failure here is a bug, not a user error
                    seen.add(normal_form(child))
                    texts.append(child)
                    parent_of.append(parent.text)
                    mutator_of.append(mutator.name)
        return texts, parent_of, mutator_of

