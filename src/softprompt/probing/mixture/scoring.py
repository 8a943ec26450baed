"""Scoring facts under every prompt of a mixture in few engine calls: the (n, K) matrices of log p(y | t, x)
and log p(t | r, x), sparse posteriors for cheaper training steps, posteriors, dev-based prompt selection,
and ranking over the full vocabulary under the mixture.

A batch of queries is scored under all K prompts together: its rows are grouped by length, so that the
K prompts' different lengths cost little padding (``engine.length_groups``), and the vocabulary projection
is computed only at the answer positions. Work is split into chunks of at most ``max_rows`` rows to bound
memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from softprompt.engine import MAX_ROWS, Engine, length_batches, length_groups
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.optimizers.selection import select
from softprompt.probing.mixture.data import MixtureData, MixtureItem
from softprompt.probing.probe import no_usable_facts
from softprompt.progress import progress_bar
from softprompt.prompts import MixturePrompt
from softprompt.templates import Example

# How sparse_score picks each prompt's m items: its m most probable, or m drawn by posterior (unbiased).
SparseDraw = Literal["top", "sample"]
SPARSE_DRAWS: tuple[SparseDraw, ...] = ("top", "sample")


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
    max_rows: int = MAX_ROWS, draw: SparseDraw = "top", generator: torch.Generator | None = None,
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


def chunks(indices: Sequence[int], k: int, max_rows: int) -> list[list[int]]:
    size = max(1, max_rows // k)
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def _joint(engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int) -> torch.Tensor:
    """log p(t | r, x) + log p(y | t, x) for the gold answers, (n, K), without gradients."""
    out = []
    with torch.inference_mode():
        for chunk in chunks(range(len(items)), len(mixture), max_rows):
            scores = score(engine, mixture, [items[i] for i in chunk])
            out.append((scores.log_weights + scores.logprobs).cpu())
    return torch.cat(out)


def log_likelihoods(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = MAX_ROWS
) -> torch.Tensor:
    """log p(y | x, r) of each item's gold answer under the mixture, (n,)."""
    return _joint(engine, mixture, items, max_rows).logsumexp(-1)


def posteriors(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = MAX_ROWS
) -> torch.Tensor:
    """p(t | x, y, r) for each item, (n, K): which prompts explain each gold answer."""
    return _joint(engine, mixture, items, max_rows).softmax(-1)


def select_prompts(
    engine: Engine, mixture: MixturePrompt, dev: Sequence[MixtureItem], k: int, max_rows: int = MAX_ROWS,
    selection: str = "weight",
) -> tuple[list[int], list[float]]:
    """The ``k`` prompts worth training, judged on the initial prompts' dev likelihoods: by ``weight``, the
    highest mixture weights when weights are fitted (by EM) to those likelihoods, ties broken by each
    prompt's own mean dev likelihood; by ``greedy``, forward selection (``optimizers.selection``).

    This one inference pass over dev replaces K-way training by k-way training, so the cost of a run
    grows with k, not K. Returns the chosen indices (in mixture order) and the weights fitted to all K.
    """
    if k >= len(mixture):
        return list(range(len(mixture))), [1.0 / len(mixture)] * len(mixture)
    with torch.inference_mode():
        gold = torch.cat([score(engine, mixture, [dev[i] for i in chunk]).logprobs.cpu()
                          for chunk in chunks(range(len(dev)), len(mixture), max_rows)])
    return select(gold, k, selection)


@dataclass
class MixturePredictions:
    ranks: torch.Tensor  # (n,)
    gold: torch.Tensor  # (n,) log p(y | x, r)
    top_ids: torch.Tensor  # (n, top_k)
    top_logprobs: torch.Tensor  # (n, top_k)
    posteriors: torch.Tensor  # (n, K) p(t | x, y, r)
    log_weights: torch.Tensor  # (n, K) log p(t | r, x)


def predict_mixture(
    engine: Engine, mixture: MixturePrompt, items: Sequence[MixtureItem], max_rows: int = MAX_ROWS, top_k: int = 10
) -> MixturePredictions:
    """Rank the full vocabulary under the mixture distribution Σ_t p(t | r, x) p(y | t, x)."""
    n, k = len(items), len(mixture)
    out = MixturePredictions(torch.empty(n, dtype=torch.long), torch.empty(n), torch.empty(n, top_k, dtype=torch.long),
                             torch.empty(n, top_k), torch.empty(n, k), torch.empty(n, k))
    order = [i for batch in length_batches(items, len(items)) for i in batch]  # shortest first: less padding
    with torch.inference_mode():
        for chunk in progress_bar(chunks(order, k, max_rows), "scoring"):
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
    engine: Engine, mixture: MixturePrompt, data: MixtureData, split: str = "test", max_rows: int = MAX_ROWS
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
