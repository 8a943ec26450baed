"""A soft prompt E_new for a task not seen in training (ZeroPrompt Appendix A.3, Table 5).

- ``none``: no E at all, the layout without its [P] positions (the hybrid-hard prompt: description, options,
  input). With a deep shared component nothing of the training is then left: it lives at the prompt positions;
- ``random``: draws from a Gaussian fitted to the word embeddings (as TaskPrompt's init "random"), the paper's
  best init;
- ``top1``: E_k of the training task k whose inputs are most like the new task's;
- ``weighted``: Σ_t w_t E_t with w = softmax(similarity / TEMPERATURE).

The paper trains a classifier of which training task an input comes from; here a task's *feature* is the mean
final hidden state of the frozen LM over a few of its unlabeled inputs (mean over tokens, then over inputs),
and similarity is the cosine between features, at task level (the paper's "weighted avg all samples"). The
features of the training tasks are computed before training and saved in the multitask model.

Cosines of mean hidden states are all close to 1 (hidden states share a large common direction), so a softmax
at temperature 1 would weigh every task almost alike; at 0.1 a cosine gap of 0.1 is a factor e. With one
training task the weight is exactly 1 and ``weighted`` equals ``top1``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.prompts.task import initial_task_vectors
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, Row, collate_rows
from softprompt.tasks.task import TaskExample
from softprompt.zeroprompt.multitask import MultitaskPrompt

UNSEEN_INITS = ("none", "random", "top1", "weighted")
TEMPERATURE = 0.1


@dataclass
class UnseenPrompt:
    """E_new ((n, d), None for ``none``) and, for the similarity inits, why: each training task's cosine
    similarity and weight."""

    init: str
    vectors: torch.Tensor | None
    similarities: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def task_feature(engine: Engine, texts: Sequence[str]) -> torch.Tensor:
    """The mean final hidden state of the frozen LM over ``texts`` (mean over each text's tokens, then over the
    texts), (d,). Inputs beyond the model's length are cut: a feature needs no whole input."""
    lm = engine.lm
    rows = []
    for text in texts:
        ids = lm.tokenizer(text, truncation=lm.max_length is not None, max_length=lm.max_length)["input_ids"]
        rows.append(Row(tuple(ids), (-1,) * len(ids), (), ()))
    means = []
    for start in range(0, len(rows), CHOICE_BATCH_SIZE):
        batch = collate_rows(rows[start : start + CHOICE_BATCH_SIZE], lm.tokenizer.pad_token_id,
                             engine.padding_side == "left", lm.device)
        mask = batch.attention_mask[..., None].float()
        means.append((engine.final_hidden(batch).float() * mask).sum(1) / mask.sum(1))
    return torch.cat(means).mean(0)


def feature_texts(examples: Sequence[TaskExample], count: int, seed: int) -> list[str]:
    """The inputs (never labels) of ``count`` examples drawn with ``seed``, in their order."""
    chosen = sorted(random.Random(seed).sample(range(len(examples)), min(count, len(examples))))
    return [examples[i].text for i in chosen]


def unseen_prompt(model: MultitaskPrompt, init: str, feature: torch.Tensor | None = None, seed: int = 0
                  ) -> UnseenPrompt:
    """E_new by ``init`` (one of UNSEEN_INITS); ``top1`` and ``weighted`` need the new task's ``feature``
    (``task_feature`` of a few of its inputs)."""
    if init == "none":
        return UnseenPrompt(init, None)
    if init == "random":
        return UnseenPrompt(init, initial_task_vectors(model.lm, model.length, "random", "", seed))
    if init not in UNSEEN_INITS:
        raise SoftpromptError(f"unknown unseen-task init {init!r}; choose one of: {', '.join(UNSEEN_INITS)}")
    if feature is None:
        raise SoftpromptError(f"init {init!r} needs the new task's feature (a few of its inputs)")
    similarity = F.cosine_similarity(model.features, feature.to(model.features)[None], dim=-1)
    if init == "top1":
        weights = torch.zeros_like(similarity)
        weights[similarity.argmax()] = 1.0
        vectors = model.prompts[similarity.argmax()]
    else:
        weights = (similarity / TEMPERATURE).softmax(-1)
        vectors = torch.einsum("t,tnd->nd", weights, model.prompts)
    names = model.task_names
    return UnseenPrompt(init, vectors.detach().clone(), dict(zip(names, similarity.tolist(), strict=True)),
                        dict(zip(names, weights.tolist(), strict=True)))
