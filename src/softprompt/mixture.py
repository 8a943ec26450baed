"""Knowledge probing with mixtures of prompts (Qin & Eisner §3.3–3.5): encode a relation under a prompt
set, train by gradient descent or EM, evaluate, prune to the prompts that matter, write a run.

A batch of queries is scored under all K prompts together: its rows are grouped by length, so that the
K prompts' different lengths cost little padding (``engine.length_groups``), and the vocabulary projection
is computed only at the answer positions. Training splits a batch into chunks
of at most ``max_rows`` rows to bound memory; gradients add up over the chunks.

Causal LMs predict [Y] as the next token, so answer-first templates (most LPAQA mined prompts, e.g.
``"[Y] native [X] ."``) are reordered to put [Y] last (``"native [X] . [Y]"``, see
``Template.answer_last``): the prompt keeps its tokens, its length and their order around [X], which
for soft prompts (tuned anyway) keeps what matters. Hard prompts reordered this way are often
ungrammatical, which the prompt-set report counts. All prompts of a mixture score the same answer
token: answers are tokenised as a word preceded by a space, whatever the template.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from softprompt.data import Relation
from softprompt.engine import Engine, length_batches, length_groups
from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.models import LanguageModel
from softprompt.probe import SPLITS, no_usable_facts
from softprompt.prompts.mixture import MixturePrompt, effective_prompts
from softprompt.templates import Example, Template, TemplateEncoder
from softprompt.train import TrainConfig, TrainResult, optimise

METHODS = ("gradient", "em")
# How sparse_score picks each prompt's m items: its m most probable, or m drawn by posterior (unbiased).
SparseDraw = Literal["top", "sample"]
SPARSE_DRAWS: tuple[SparseDraw, ...] = ("top", "sample")
# Adam's learning rate for the mixture logits (and log T); see MixtureObjective.param_groups.
WEIGHTS_LR = 0.05
AnswerFirst = Literal["reorder", "skip", "error"]


@dataclass
class PromptSetReport:
    """What became of a prompt set's templates for one model."""

    total: int
    reordered: int  # answer-first templates moved to answer-last (causal LMs)
    skipped: int  # answer-first templates left out (answer_first="skip")
    duplicates: int  # templates that encode every fact exactly as an earlier one does
    kept: int


def encode_prompt_set(
    templates: Sequence[str], lm: LanguageModel, answer_first: AnswerFirst = "reorder"
) -> tuple[list[TemplateEncoder], list[str], PromptSetReport]:
    """Encoders for the usable templates, their original wordings, and what was changed or dropped."""
    encoders: list[TemplateEncoder] = []
    sources: list[str] = []
    seen: set[tuple] = set()
    reordered = skipped = duplicates = 0
    for text in templates:
        template = Template(text)
        if template.answer_first and lm.kind == "causal":
            if answer_first == "skip":
                skipped += 1
                continue
            if answer_first == "reorder":
                template = template.answer_last()
                reordered += 1
            # "error": TemplateEncoder explains why the template cannot be used
        encoder = TemplateEncoder(template, lm, answer_space=True)
        if encoder.signature in seen:
            duplicates += 1
            continue
        seen.add(encoder.signature)
        encoders.append(encoder)
        sources.append(text)
    if not encoders:
        raise SoftpromptError(f"none of the {len(templates)} templates is usable for model '{lm.name}' "
                              f"({skipped} answer-first templates skipped); use answer_first='reorder'")
    return encoders, sources, PromptSetReport(len(templates), reordered, skipped, duplicates, len(encoders))


@dataclass(frozen=True)
class MixtureItem:
    """One fact encoded under each prompt of a mixture; prompt slots index the stacked vector table."""

    rows: tuple[Example, ...]

    def __len__(self) -> int:
        return max(len(row) for row in self.rows)

    @property
    def answer_id(self) -> int:
        return self.rows[0].answer_id


@dataclass
class MixtureData:
    name: str
    splits: dict[str, list[MixtureItem]]
    facts: dict[str, list[tuple[str, str]]]
    dropped: dict[str, int]  # facts whose answer is not a single token


def encode_mixture_data(
    relation: Relation, mixture: MixturePrompt, limits: Mapping[str, int] | None = None
) -> MixtureData:
    """Every split under every prompt of ``mixture``; ``limits`` caps each split after filtering."""
    encoders = mixture.encoders
    splits: dict[str, list[MixtureItem]] = {}
    kept: dict[str, list[tuple[str, str]]] = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        items, facts = [], []
        for fact in relation.splits.get(split, []):
            rows = [e.encode(fact.subject, fact.answer) for e in encoders]
            if rows[0] is None:  # every prompt tokenises the answer alike (see encode_prompt_set)
                continue
            rows = [_offset(row, off) for row, off in zip(rows, mixture.offsets, strict=True)]
            items.append(MixtureItem(tuple(rows)))
            facts.append((fact.subject, fact.answer))
        dropped[split] = len(relation.splits.get(split, [])) - len(items)
        cap = (limits or {}).get(split)
        splits[split], kept[split] = items[:cap], facts[:cap]
    return MixtureData(relation.name, splits, kept, dropped)


def _offset(example: Example, offset: int) -> Example:
    return replace(example, prompt_slots=tuple(s + offset if s >= 0 else -1 for s in example.prompt_slots))


@dataclass
class MixtureScores:
    log_weights: torch.Tensor  # (n, K): log p(t | r[, x])
    logprobs: torch.Tensor  # (n, K, V) log p(y | t, x) over the vocabulary, or (n, K) for the gold answer only


def _score_rows(
    engine: Engine, mixture: MixturePrompt, rows: Sequence[Example], full_vocab: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(y | t, x) for each row (over the vocabulary, or of its gold answer) and, for a data-dependent
    mixture, log p(x | t) from the same forward pass. Rows run in groups of similar length (a fact's prompts
    differ in length), and the results come back in the rows' order."""
    vectors, deltas = mixture.vectors(), mixture.deltas()
    groups = length_groups([len(row) for row in rows])
    logprobs, subject = [], []
    for group in groups:
        batch = engine.collate([rows[i] for i in group])
        hidden = engine.final_hidden(batch, vectors, deltas)
        scores = engine.project(engine.at_answers(hidden, batch)).log_softmax(-1)
        logprobs.append(scores if full_vocab else scores.gather(1, batch.answer_ids[:, None])[:, 0])
        if mixture.data_dependent:
            subject.append(engine.subject_logprob(batch, vectors, deltas, hidden=hidden))
    place = torch.empty(len(rows), dtype=torch.long)
    place[[i for group in groups for i in group]] = torch.arange(len(rows))
    place = place.to(logprobs[0].device)
    return torch.cat(logprobs)[place], torch.cat(subject)[place] if subject else None


def score(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], full_vocab: bool = False
) -> MixtureScores:
    """One engine call for ``items`` under all prompts of ``mixture``."""
    n, k = len(items), len(mixture)
    logprobs, subject = _score_rows(engine, mixture, [row for item in items for row in item.rows], full_vocab)
    subject = None if subject is None else subject.view(n, k)
    return MixtureScores(mixture.log_weights(subject).expand(n, k), logprobs.view(n, k, *logprobs.shape[1:]))


def sparse_score(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], k: int | None, m: int | None = None,
    max_rows: int = 512, draw: SparseDraw = "top", generator: torch.Generator | None = None,
) -> MixtureScores:
    """Gold-answer scores of ``items`` under all K prompts whose gradient flows only through each item's
    ``k`` prompts of highest posterior p(t | x, y, r) and each prompt's ``m`` items of highest posterior
    ("sparse posteriors"; None: no pick of that kind).

    A pass without gradients scores all K prompts; the chosen (item, prompt) pairs are scored again with
    gradients and take their places in the (n, K) matrices, the other entries stay constants. The values, and
    so the objective and the gradient of the mixture weights and log T, are those of ``score``. Eq. 2 gives
    prompt t the gradient Σ_i q_it ∇ log p(y_i | t, x_i): per item the posterior mostly sits on a few prompts
    (``k`` keeps those terms), and per prompt a few items carry most of its sum (``m`` keeps those, so that no
    prompt goes untrained while others lead every item). Only the chosen pairs pay for a backward pass: a
    step costs about K forward passes plus n·k + K·m forward-backward passes instead of n·K. Each forward
    pass has at most ``max_rows`` sequences; the chosen pairs' graphs are kept until the caller's backward.

    ``draw="sample"`` draws each prompt's ``m`` items instead (with replacement, from ``generator``), with
    probability proportional to its posterior among the items that ``k`` did not already choose for it, and
    scales each drawn pair's gradient by (that remaining posterior mass) / (m · the pair's posterior). Prompt
    t's vector gradient is then exact on its top-k pairs and, on the rest of its sum, an unbiased estimate:
    in expectation every prompt learns from every item as in the full mixture (for the gradient method's
    objective, whose weight on a pair is its current posterior).
    """
    n, total = len(items), len(mixture)
    if (k is not None and k >= total) or (m is not None and m >= n):
        return score(engine, mixture, items)  # every pair is chosen
    rows = [row for item in items for row in item.rows]
    with torch.no_grad():
        parts = [_score_rows(engine, mixture, rows[i : i + max_rows]) for i in range(0, len(rows), max_rows)]
        logprobs = torch.cat([lp for lp, _ in parts]).view(n, total)
        subject = torch.cat([s for _, s in parts]).view(n, total) if mixture.data_dependent else None
        joint = mixture.log_weights(subject) + logprobs
        chosen = torch.zeros(n, total, dtype=torch.bool, device=joint.device)
        if k is not None:
            chosen.scatter_(1, joint.topk(k, dim=1).indices, True)
        scale = None
        if m is not None and draw == "top":  # each prompt ranks items by posterior (normalised per item)
            chosen.scatter_(0, joint.log_softmax(1).topk(m, dim=0).indices, True)
        elif m is not None:
            scale = _drawn_pairs(joint.softmax(1), chosen, m, generator)
            chosen |= scale > 0
        pairs = chosen.nonzero(as_tuple=True)
    live_rows = [items[i].rows[t] for i, t in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True)]
    live = [_score_rows(engine, mixture, live_rows[i : i + max_rows]) for i in range(0, len(live_rows), max_rows)]
    live_logprobs = torch.cat([lp for lp, _ in live])
    if scale is not None:  # same values, gradient times the drawn pairs' importance weights (1 for top-k)
        factor = torch.where(scale[pairs] > 0, scale[pairs], 1.0)
        live_logprobs = live_logprobs.detach() + factor * (live_logprobs - live_logprobs.detach())
    logprobs = logprobs.index_put(pairs, live_logprobs)
    if subject is not None:
        subject = subject.index_put(pairs, torch.cat([s for _, s in live]))
    return MixtureScores(mixture.log_weights(subject).expand(n, total), logprobs)


def _drawn_pairs(posterior: torch.Tensor, taken: torch.Tensor, m: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Importance weights (n, K) of m draws per prompt from its posterior over the items not ``taken``:
    (times drawn) · (the prompt's untaken posterior mass) / (m · the pair's posterior); 0 where not drawn."""
    rest = posterior.masked_fill(taken, 0).T  # (K, n)
    mass = rest.sum(1)
    scale = torch.zeros_like(rest)
    drawable = (mass > 0).nonzero().flatten()
    if len(drawable):
        drawn = torch.multinomial(rest[drawable].cpu(), m, replacement=True, generator=generator)
        counts = torch.zeros(len(drawable), rest.shape[1]).scatter_add_(1, drawn, torch.ones(drawn.shape))
        tiny = torch.finfo(rest.dtype).tiny  # a drawn pair's posterior is positive; the clamp only guards 0 / 0
        scale[drawable] = counts.to(rest.device) * mass[drawable, None] / (m * rest[drawable].clamp(min=tiny))
    return scale.T


def _chunks(indices: Sequence[int], k: int, max_rows: int) -> list[list[int]]:
    size = max(1, max_rows // k)
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class MixtureObjective:
    """The log-loss of the mixture (eq. 2), minimised by gradient descent or by EM.

    EM: at the start of each epoch the E step computes every training fact's posterior over prompts,
    q(t) ∝ p(t | r, x) p(y | t, x), with the current parameters; the epoch's gradient steps (the M step)
    then minimise the expected complete-data loss -Σ_t q(t) [log p(t | r, x) + log p(y | t, x)].
    """

    def __init__(
        self, engine: Engine, mixture: MixturePrompt, train: Sequence[MixtureItem], dev: Sequence[MixtureItem],
        method: str = "gradient", max_rows: int = 512, weights_lr: float = WEIGHTS_LR, sparse_k: int | None = None,
        sparse_m: int | None = None, sparse_draw: SparseDraw = "top", seed: int = 0,
    ) -> None:
        if method not in METHODS:
            raise SoftpromptError(f"unknown training method {method!r}; choose one of: {', '.join(METHODS)}")
        self.engine, self.module, self.items, self.dev = engine, mixture, train, dev
        self.method, self.max_rows, self.weights_lr = method, max_rows, weights_lr
        # With k >= K every pair is live: the plain pass computes the same without the extra inference pass.
        every = sparse_k is not None and sparse_k >= len(mixture)
        self.sparse = not every and (sparse_k, sparse_m) != (None, None)
        self.sparse_k, self.sparse_m, self.sparse_draw, self.seed = sparse_k, sparse_m, sparse_draw, seed
        self.draws = torch.Generator()
        self.posteriors: torch.Tensor | None = None

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Prompt vectors at ``lr``; the mixture logits and log-temperature at ``weights_lr``.

        The logits are O(1) numbers that must move by several nats to select prompts, while prompt vectors
        move on the scale of word embeddings (about 0.1 per coordinate); Adam's steps are about lr in size,
        so one learning rate cannot suit both in a few hundred steps.
        """
        mixture = self.module
        weights = [p for p in (mixture.weight_logits, mixture.log_temperature) if p is not None and p.requires_grad]
        prompts = [p for p in mixture.components.parameters() if p.requires_grad]
        return [{"params": prompts, "lr": lr}, {"params": weights, "lr": self.weights_lr}]

    def backward(self, indices: list[int]) -> float:
        total = 0.0
        # sparse_score bounds its own passes, and ranks each prompt's items across the whole batch.
        chunks = [indices] if self.sparse else _chunks(indices, len(self.module), self.max_rows)
        for chunk in chunks:
            items = [self.items[i] for i in chunk]
            scores = (sparse_score(self.engine, self.module, items, self.sparse_k, self.sparse_m, self.max_rows,
                                   self.sparse_draw, self.draws)
                      if self.sparse else score(self.engine, self.module, items))
            joint = scores.log_weights + scores.logprobs
            if self.method == "em":
                q = self.posteriors[chunk].to(joint.device)
                loss = -(q * joint).sum()
            else:
                loss = -joint.logsumexp(-1).sum()
            (loss / len(indices)).backward()
            total += loss.item()
        return total / len(indices)

    def dev_loss(self) -> float:
        return -float(log_likelihoods(self.engine, self.module, self.dev, self.max_rows).mean())

    def start_epoch(self, epoch: int) -> None:
        # Seeded per epoch, like the shuffle, so a run resumed from an epoch's checkpoint draws the same pairs.
        self.draws.manual_seed(self.seed * 1_000_003 + epoch)
        if self.method == "em":
            self.posteriors = posteriors(self.engine, self.module, self.items, self.max_rows)


def _joint(engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int) -> torch.Tensor:
    """log p(t | r, x) + log p(y | t, x) for the gold answers, (n, K), without gradients."""
    out = []
    with torch.inference_mode():
        for chunk in _chunks(range(len(items)), len(mixture), max_rows):
            scores = score(engine, mixture, [items[i] for i in chunk])
            out.append((scores.log_weights + scores.logprobs).cpu())
    return torch.cat(out)


def log_likelihoods(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = 512
) -> torch.Tensor:
    """log p(y | x, r) of each item's gold answer under the mixture, (n,)."""
    return _joint(engine, mixture, items, max_rows).logsumexp(-1)


def posteriors(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = 512
) -> torch.Tensor:
    """p(t | x, y, r) for each item, (n, K): which prompts explain each gold answer."""
    return _joint(engine, mixture, items, max_rows).softmax(-1)


def fit_weights(gold_logprobs: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Maximum-likelihood mixture weights for fixed prompts, by EM on an (n, K) matrix of log p(y | t, x)."""
    k = gold_logprobs.shape[1]
    log_w = torch.full((k,), -torch.log(torch.tensor(float(k))), dtype=torch.float64)
    lp = gold_logprobs.double()
    for _ in range(iterations):
        log_w = (log_w + lp).log_softmax(-1).exp().mean(0).clamp_min(1e-300).log()
    return log_w.exp()


SELECTIONS = ("weight", "greedy")


def greedy_selection(gold_logprobs: torch.Tensor, k: int) -> list[int]:
    """Forward selection: repeatedly add the prompt whose addition (weights refitted by EM) most raises the
    mixture's mean log-likelihood of the gold answers, from an (n, K) matrix of log p(y | t, x). Prompts that
    explain the same facts add little after the first, so the picks complement each other."""
    lp = gold_logprobs.double()
    chosen: list[int] = []
    for _ in range(min(k, lp.shape[1])):
        def gain(t: int) -> float:
            subset = lp[:, [*chosen, t]]
            return float((fit_weights(subset).log()[None, :] + subset).logsumexp(-1).mean())

        chosen.append(max((t for t in range(lp.shape[1]) if t not in chosen), key=gain))
    return sorted(chosen)


def select_prompts(
    engine: Engine, mixture: MixturePrompt, dev: Sequence[MixtureItem], k: int, max_rows: int = 512,
    selection: str = "weight",
) -> tuple[list[int], list[float]]:
    """The ``k`` prompts worth training, judged on the initial prompts' dev likelihoods: by ``weight``, the
    highest mixture weights when weights are fitted (by EM) to those likelihoods, ties broken by each
    prompt's own mean dev likelihood; by ``greedy``, forward selection (``greedy_selection``).

    This one inference pass over dev replaces K-way training by k-way training, so the cost of a run
    grows with k, not K. Returns the chosen indices (in mixture order) and the weights fitted to all K.
    """
    if selection not in SELECTIONS:
        raise SoftpromptError(f"unknown prompt selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    if k >= len(mixture):
        return list(range(len(mixture))), [1.0 / len(mixture)] * len(mixture)
    with torch.inference_mode():
        gold = torch.cat([score(engine, mixture, [dev[i] for i in chunk]).logprobs.cpu()
                          for chunk in _chunks(range(len(dev)), len(mixture), max_rows)])
    weights = fit_weights(gold)
    if selection == "greedy":
        return greedy_selection(gold, k), weights.tolist()
    mean = gold.mean(0)
    order = sorted(range(len(mixture)), key=lambda t: (-float(weights[t]), -float(mean[t])))
    return sorted(order[:k]), weights.tolist()


@dataclass
class MixturePredictions:
    ranks: torch.Tensor  # (n,)
    gold: torch.Tensor  # (n,) log p(y | x, r)
    top_ids: torch.Tensor  # (n, top_k)
    top_logprobs: torch.Tensor  # (n, top_k)
    posteriors: torch.Tensor  # (n, K) p(t | x, y, r)
    log_weights: torch.Tensor  # (n, K) log p(t | r, x)


def predict_mixture(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = 512, top_k: int = 10
) -> MixturePredictions:
    """Rank the full vocabulary under the mixture distribution Σ_t p(t | r, x) p(y | t, x)."""
    n, k = len(items), len(mixture)
    out = MixturePredictions(torch.empty(n, dtype=torch.long), torch.empty(n), torch.empty(n, top_k, dtype=torch.long),
                             torch.empty(n, top_k), torch.empty(n, k), torch.empty(n, k))
    order = [i for batch in length_batches(items, len(items)) for i in batch]  # shortest first: less padding
    with torch.inference_mode():
        for chunk in _chunks(order, k, max_rows):
            scores = score(engine, mixture, [items[i] for i in chunk], full_vocab=True)
            mixed = (scores.log_weights[:, :, None] + scores.logprobs).logsumexp(1)
            answers = torch.tensor([items[i].answer_id for i in chunk], device=mixed.device)
            where = torch.tensor(chunk)
            out.ranks[where] = answer_ranks(mixed, answers).cpu()
            out.gold[where] = mixed.gather(1, answers[:, None])[:, 0].cpu()
            best = mixed.topk(top_k, dim=-1)
            out.top_ids[where], out.top_logprobs[where] = best.indices.cpu(), best.values.cpu()
            index = answers[:, None, None].expand(len(chunk), k, 1)
            joint = scores.log_weights + scores.logprobs.gather(2, index)[:, :, 0]
            out.posteriors[where] = joint.softmax(-1).cpu()
            out.log_weights[where] = scores.log_weights.cpu()
    return out


def evaluate_mixture(
    engine: Engine, mixture: MixturePrompt, data: MixtureData, split: str = "test", max_rows: int = 512
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics on one split and per-example rows (top-10 answers, the three prompts that explain it best)."""
    items = data.splits.get(split) or []
    if not items:
        raise no_usable_facts(data.name, split, data.dropped.get(split, 0))
    pred = predict_mixture(engine, mixture, items, max_rows)
    tok = engine.lm.tokenizer
    rows = []
    for i, (subject, answer) in enumerate(data.facts[split]):
        top_prompts = pred.posteriors[i].topk(min(3, len(mixture)))
        rows.append({
            "relation": data.name,
            "subject": subject,
            "answer": answer,
            "rank": int(pred.ranks[i]),
            "answer_logprob": round(float(pred.gold[i]), 5),
            "top10": [[tok.decode([t]).strip(), round(float(lp), 5)]
                      for t, lp in zip(pred.top_ids[i].tolist(), pred.top_logprobs[i].tolist(), strict=True)],
            "prompt_posterior": [[int(t), round(float(p), 5)]
                                 for t, p in zip(top_prompts.indices.tolist(), top_prompts.values.tolist(),
                                                 strict=True)],
        })
    return ranking_metrics(pred.ranks.tolist()), rows


@dataclass
class MixtureSettings:
    """What defines a mixture run (besides the model, data and TrainConfig)."""

    prompts: str  # the prompt set's name, e.g. "min:P19" or a file path
    templates: tuple[str, ...]
    init: str = "template"
    mode: str = "soft"  # component prompts: hard, soft or deep
    method: str = "gradient"
    tune: str = "both"
    data_dependent: bool = False
    top_k: int | None = None  # train only the k most useful prompts (see select_prompts)
    answer_first: AnswerFirst = "reorder"
    max_rows: int = 512
    weights_lr: float = WEIGHTS_LR
    selection: str = "weight"  # how select_prompts judges which top_k prompts are most useful
    prune_after: int = 0  # epochs of training the whole mixture before top_k prunes it (0: prune untrained)
    sparse_k: int | None = None  # backpropagate through each fact's k most probable prompts (see sparse_score)
    sparse_m: int | None = None  # ... and through each prompt's m most probable facts of the batch
    sparse_draw: SparseDraw = "top"  # or "sample": draw each prompt's m facts by posterior (see sparse_score)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SoftpromptError(f"unknown --method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.top_k is not None and self.top_k < 1:
            raise SoftpromptError(f"--top-k must be at least 1, got {self.top_k}")
        if self.prune_after < 0:
            raise SoftpromptError(f"--prune-after must be 0 or more epochs, got {self.prune_after}")
        if self.prune_after and self.top_k is None:
            raise SoftpromptError("--prune-after says when --top-k prunes the mixture; give --top-k as well")
        if self.selection not in SELECTIONS:
            raise SoftpromptError(f"unknown --select {self.selection!r}; choose one of: {', '.join(SELECTIONS)}")
        if self.mode == "hard" and self.tune == "prompts":
            raise SoftpromptError("hard prompts have no vectors to tune; use --mode soft or deep, or --tune weights")
        for flag, value in (("--sparse-k", self.sparse_k), ("--sparse-m", self.sparse_m)):
            if value is not None and value < 1:
                raise SoftpromptError(f"{flag} must be at least 1, got {value}")
            if value is not None and (self.mode == "hard" or self.tune in ("weights", "none")):
                raise SoftpromptError(f"{flag} chooses which prompts' vectors get gradients; it needs tuned vectors "
                                      "(--mode soft or deep with --tune both or prompts)")
        if self.sparse_draw not in SPARSE_DRAWS:
            raise SoftpromptError(f"unknown --sparse-draw {self.sparse_draw!r}; choose one of: "
                                  f"{', '.join(SPARSE_DRAWS)}")
        if self.sparse_draw == "sample" and self.sparse_m is None:
            raise SoftpromptError("--sparse-draw sample draws each prompt's --sparse-m facts; give --sparse-m as well")
        if self.sparse_draw == "sample" and self.method != "gradient":
            raise SoftpromptError("--sparse-draw sample weighs the drawn facts by the current posterior, which only "
                                  "the gradient method's objective uses; use --method gradient or --sparse-draw top")
        if self.mode == "hard" and self.tune == "both":
            self.tune = "weights"  # all a mixture of hard prompts can learn
        if self.max_rows < 1:
            raise SoftpromptError(f"max_rows must be at least 1, got {self.max_rows}")
        if not (self.weights_lr > 0 and math.isfinite(self.weights_lr)):
            raise SoftpromptError(f"--weights-lr must be a positive number, got {self.weights_lr}")


def run_mixture(
    lm: LanguageModel,
    relation: Relation,
    settings: MixtureSettings,
    out: Path,
    config: TrainConfig | None = None,
    limits: Mapping[str, int] | None = None,
    resume: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Build, prune, train (unless ``tune='none'``) and test a mixture for one relation; write the run."""
    config = config or TrainConfig()
    engine = engine or Engine(lm)
    started = time.perf_counter()
    encoders, sources, report = encode_prompt_set(settings.templates, lm, settings.answer_first)
    mixture = MixturePrompt(encoders, settings.mode, settings.init, config.seed, settings.data_dependent, sources)
    mixture.set_tune(settings.tune)
    data = encode_mixture_data(relation, mixture, limits)
    training = settings.tune != "none"
    for split in ("train", "dev", "test") if training else ("test",):
        if not data.splits[split]:
            raise no_usable_facts(relation.name, split, data.dropped[split])
    fitted: list[float] | None = None
    pruning = settings.top_k is not None and settings.top_k < len(mixture)
    if pruning and not data.splits["dev"]:
        raise SoftpromptError(f"relation {relation.name}: --top-k chooses prompts on dev data, which is empty")
    warmup = settings.prune_after if pruning and training else 0
    if warmup >= config.max_epochs:
        raise SoftpromptError(f"--prune-after {warmup} leaves no epoch to train the pruned mixture; give fewer "
                              f"epochs than --epochs {config.max_epochs}")
    out.mkdir(parents=True, exist_ok=True)
    identity = mixture_settings(lm, relation, settings, config, limits)
    checkpoint_settings = {k: v for k, v in identity.items() if k != "train"}
    def objective(mixture: MixturePrompt, data: MixtureData) -> MixtureObjective:
        return MixtureObjective(engine, mixture, data.splits["train"], data.splits["dev"], settings.method,
                                settings.max_rows, settings.weights_lr, settings.sparse_k, settings.sparse_m,
                                settings.sparse_draw, config.seed)

    warmed: TrainResult | None = None
    if warmup:
        warmed = optimise(objective(mixture, data), replace(config, max_epochs=warmup), out / "warmup.safetensors",
                          resume, progress, settings=checkpoint_settings)
    if pruning:
        chosen, fitted = select_prompts(engine, mixture, data.splits["dev"], settings.top_k, settings.max_rows,
                                        settings.selection)
        mixture = mixture.subset(chosen)
        data = encode_mixture_data(relation, mixture, limits)
    write_json(out / "config.json", identity | {
        "examples": {s: len(e) for s, e in data.splits.items()}, "dropped_multi_token": data.dropped,
        "prompt_set": asdict(report)})
    result: TrainResult | None = None
    if training:
        result = optimise(objective(mixture, data), replace(config, max_epochs=config.max_epochs - warmup),
                          out / "checkpoint.safetensors", resume, progress, settings=checkpoint_settings)
        if warmed is not None:
            result = _after_warmup(warmed, result, warmup)
    # A resumed run costs what its interrupted calls had checkpointed as well as this call's time.
    earlier = result.earlier_seconds if result is not None else 0.0
    fit_seconds = earlier + time.perf_counter() - started
    metrics, rows = evaluate_mixture(engine, mixture, data, "test", settings.max_rows)
    doc: dict[str, Any] = {
        "relation": relation.name, "prompts": settings.prompts, "mode": settings.mode, "method": settings.method,
        "tune": settings.tune, "data_dependent": settings.data_dependent, "test": metrics,
        "dropped_multi_token": data.dropped, "prompt_set": asdict(report), "num_prompts": len(mixture),
        "weights": mixture.weights(), "effective_prompts": effective_prompts(mixture.weights()),
        "temperature": mixture.temperature, "templates": [e.template.text for e in mixture.encoders],
        "sources": mixture.sources, "seconds": {"fit": fit_seconds,
                                                "total": earlier + time.perf_counter() - started},
        "threads": torch.get_num_threads(),
    }
    if fitted is not None:
        doc["selection_weights"] = fitted
    if result is not None:
        doc |= {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history}
    mixture.save(out / "prompt.safetensors", extra={"relation": relation.name})
    write_jsonl(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", doc)
    return doc


def _after_warmup(warmed: TrainResult, pruned: TrainResult, warmup: int) -> TrainResult:
    """One history for a run that trained the whole mixture for ``warmup`` epochs, then its pruned subset:
    the pruned phase's epochs continue the count, and its epoch 0 (the just-pruned mixture on dev) is kept
    as "pruned_dev_loss"."""
    first, *rest = pruned.history
    history = [*warmed.history, {"epoch": warmup, "pruned_dev_loss": first["dev_loss"]}]
    history += [h | {"epoch": h["epoch"] + warmup} for h in rest]
    return TrainResult(pruned.best_epoch + warmup, pruned.best_dev_loss, history,
                       warmed.earlier_seconds + pruned.earlier_seconds)


def mixture_settings(
    lm: LanguageModel, relation: Relation, settings: MixtureSettings, config: TrainConfig,
    limits: Mapping[str, int] | None,
) -> dict[str, Any]:
    """The entries of a mixture run's config.json that must be equal for it to be resumed or reused."""
    mixture = asdict(settings) | {"templates": list(settings.templates)}
    # Runs from before these options existed used their defaults: they stay resumable.
    if settings.selection == "weight":
        del mixture["selection"]
    if not settings.prune_after:
        del mixture["prune_after"]
    for key in ("sparse_k", "sparse_m"):
        if mixture[key] is None:
            del mixture[key]
    if settings.sparse_draw == "top":
        del mixture["sparse_draw"]
    return {"model": lm.name, "relation": relation.name, "mixture": mixture, "train": asdict(config),
            "limits": dict(limits or {})}

