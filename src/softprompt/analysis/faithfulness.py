"""Faithfulness and scrutability of a soft prompt (Patel et al. §3).

A soft prompt P̄ is *faithful* to its unembedded hard prompt f_U(P̄) when the two are close:
- distance differential Δ_D = mean over vectors of the squared distance to the nearest token;
- output differential Δ_Output = mean over the scored positions of the mean squared difference of the
  vocabulary logits under P̄ and under f_U(P̄), with the rate at which their top-1 tokens agree;
- performance differential Δ_L = |metric(P̄) − metric(f_U(P̄))| on the task.
It is *scrutable* when f_U(P̄) reads as language: low perplexity under a reference LM.

The unembedded prompt is fed as token ids (their input embeddings at the same positions), exactly as
f_U defines it; decoding to text and re-tokenising could merge or split tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from softprompt.analysis.readings import prompt_vectors, unembed, vocabulary
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.fluency import Fluency
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks.run import TaskSettings, predict, task_metrics
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, TaskEncoder, collate_rows, query_logits, scores_from_logits
from softprompt.tasks.task import Task, TaskExample


def distance_differential(lm: LanguageModel, vectors: torch.Tensor, metric: str = "euclidean") -> float:
    """Δ_D: mean squared distance (Euclidean, or cosine distance 1 − cos) from each vector to its nearest token."""
    emb = vocabulary(lm)
    vectors = vectors.detach().float().to(emb.device)
    ids = torch.tensor(unembed(lm, vectors, metric), device=emb.device)
    if metric == "euclidean":
        d = (emb[ids] - vectors).norm(dim=-1)
    elif metric == "cosine":
        d = 1 - F.cosine_similarity(emb[ids], vectors, dim=-1)
    else:
        raise SoftpromptError(f"the distance differential needs a distance: euclidean or cosine, not {metric!r}")
    return float((d**2).mean())


def projected_prompt(prompt: TaskPrompt, lm: LanguageModel, ids: Sequence[int]) -> TaskPrompt:
    """A soft prompt with the same layout whose vectors are the embeddings of ``ids`` (no deep deltas)."""
    searched = ("token_ids", "tokens", "text")  # a searched hard prompt's: the projection has its own tokens
    meta = {k: v for k, v in prompt.metadata().items() if k not in searched} | {"tuning": "soft"}
    weight = vocabulary(lm)[torch.tensor(list(ids), device=lm.device)].clone()
    projected = TaskPrompt.from_file(meta, {"weight": weight}, lm, Path("<projected prompt>"))
    projected.requires_grad_(False)
    return projected


@dataclass
class OutputComparison:
    squared: float  # Δ_Output: mean squared logit difference over the answer-reading positions
    top1_agreement: float
    scores: tuple[torch.Tensor, torch.Tensor]  # each prompt's choice scores (N, C), as choice_scores gives them


@torch.inference_mode()
def compare_outputs(engine: Engine, prompt: TaskPrompt, other: TaskPrompt, task: Task,
                    examples: Sequence[TaskExample], batch_size: int = CHOICE_BATCH_SIZE) -> OutputComparison:
    """Both prompts on the same rows, one forward pass each: the output differential and, from the same
    logits, every choice's score under each prompt."""
    if prompt.layout != other.layout or prompt.length != other.length:
        raise SoftpromptError("the output differential compares two prompts of the same layout")
    encoded = TaskEncoder(engine.lm, task, prompt).encode(examples)
    shape = (len(encoded.rows), *(() if encoded.shared_ids is None else (encoded.num_choices,)))
    scores = (torch.empty(shape), torch.empty(shape))
    squared, agree, count = 0.0, 0, 0
    for idx in engine.eval_batches(encoded.rows, batch_size):
        batch = collate_rows([encoded.rows[i] for i in idx], engine.lm.tokenizer.pad_token_id,
                             engine.padding_side == "left", engine.lm.device)
        a = query_logits(engine, batch, prompt.vectors(), prompt.deltas())
        b = query_logits(engine, batch, other.vectors(), other.deltas())
        squared += float(((a - b) ** 2).mean(-1).sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        count += len(a)
        for out, logits in zip(scores, (a, b), strict=True):
            out[idx] = scores_from_logits(encoded, batch, logits).float().cpu()
    views = tuple(x.view(encoded.num_examples, encoded.num_choices) for x in scores)
    return OutputComparison(squared / count, agree / count, views)


def output_differential(engine: Engine, prompt: TaskPrompt, other: TaskPrompt, task: Task,
                        examples: Sequence[TaskExample], batch_size: int = CHOICE_BATCH_SIZE) -> tuple[float, float]:
    """(mean squared logit difference, top-1 agreement rate) over every position where the task reads an
    answer token, under ``prompt`` and ``other`` (same layout)."""
    c = compare_outputs(engine, prompt, other, task, examples, batch_size)
    return c.squared, c.top1_agreement


@dataclass
class Faithfulness:
    tokens: list[int]  # f_U(P̄) (nearest by Euclidean distance)
    text: str
    distance: float  # Δ_D, squared Euclidean
    cosine_distance: float  # Δ_D with the cosine distance (nearest by cosine)
    output: float  # Δ_Output
    top1_agreement: float
    metric: str  # the task metric Δ_L is measured with
    soft_score: float | None  # None where the metric is undefined on the examples (ROC-AUC on one class)
    hard_score: float | None
    performance: float | None  # Δ_L = |soft_score − hard_score|
    prediction_agreement: float  # how often the two prompts pick the same choice
    perplexity: float | None = None  # scrutability of f_U(P̄), when a reference LM was given

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def faithfulness(engine: Engine, prompt: TaskPrompt, task: Task, examples: Sequence[TaskExample],
                 settings: TaskSettings | None = None, reference: LanguageModel | None = None,
                 batch_size: int = CHOICE_BATCH_SIZE) -> Faithfulness:
    """All three faithfulness differentials of ``prompt`` on ``examples``, and the perplexity of its
    unembedding under ``reference`` (if given)."""
    lm = engine.lm
    settings = settings or TaskSettings()
    vectors = prompt_vectors(prompt)
    ids = unembed(lm, vectors, "euclidean")
    hard = projected_prompt(prompt, lm, ids)
    compared = compare_outputs(engine, prompt, hard, task, examples, batch_size)
    output, top1 = compared.squared, compared.top1_agreement
    labels = [e.label for e in examples]
    if settings.calibrate:  # needs the content-free input's scores too
        soft_scores = predict(engine, prompt, task, examples, settings, batch_size)
        hard_scores = predict(engine, hard, task, examples, settings, batch_size)
    else:
        soft_scores, hard_scores = compared.scores
        if settings.normalise:
            lengths = TaskEncoder(engine.lm, task, prompt).encode(examples).choice_lengths
            soft_scores, hard_scores = soft_scores / lengths, hard_scores / lengths
    metric = task.metrics[0]
    soft = task_metrics(task, soft_scores, labels)[metric]
    hard_score = task_metrics(task, hard_scores, labels)[metric]
    agreement = float((soft_scores.argmax(-1) == hard_scores.argmax(-1)).float().mean())
    return Faithfulness(
        tokens=ids, text=lm.tokenizer.decode(ids), distance=distance_differential(lm, vectors, "euclidean"),
        cosine_distance=distance_differential(lm, vectors, "cosine"), output=output, top1_agreement=top1,
        metric=metric, soft_score=soft, hard_score=hard_score,
        performance=None if soft is None or hard_score is None else abs(soft - hard_score),
        prediction_agreement=agreement,
        perplexity=None if reference is None else token_perplexity(reference, ids, lm),
    )


@torch.inference_mode()
def token_perplexity(reference: LanguageModel, ids: Sequence[int], source: LanguageModel | None = None) -> float:
    """Perplexity exp(−(1/L) Σ log p(P_i | P_<i)) of a token sequence under a causal ``reference`` LM.

    ``ids`` are tokens of ``source`` (default: the reference itself); another model's tokens are decoded
    to text and re-tokenised. Every token is predicted: the sequence starts after the reference's BOS (or
    EOS) token; a tokenizer with neither leaves the first token unscored.
    """
    return float(Fluency(reference, source).perplexity(torch.tensor([list(ids)]))[0])
