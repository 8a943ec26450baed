"""Using trained task prompts: classify new inputs (each example may use a different prompt) and
generate text from a causal LM with a soft prompt in front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.metrics import choice_predictions
from softprompt.models import LanguageModel
from softprompt.prompts import TaskPrompt, stack_prompts
from softprompt.tasks.scoring import (
    CHOICE_BATCH_SIZE,
    Encoded,
    Row,
    TaskEncoder,
    calibrate,
    choice_scores,
    collate_rows,
    layout_tokens,
)
from softprompt.tasks.task import Task, TaskExample


class PromptedClassifier:
    """Scores a task's choices under one or several task prompts (None: the task's manual template).

    ``scores(rows, prompt_ids)`` routes example i through ``prompts[prompt_ids[i]]``; all examples run in
    the same length-bucketed batches whatever their prompt (their vectors share one stacked table).
    """

    def __init__(self, lm: LanguageModel, task: Task, prompts: TaskPrompt | Sequence[TaskPrompt | None] | None = None,
                 normalise: bool = False, calibrated: bool = False,
                 batch_size: int = CHOICE_BATCH_SIZE) -> None:
        self.lm, self.task, self.engine = lm, task, Engine(lm)
        listed = list(prompts) if isinstance(prompts, Sequence) else [prompts]
        self.prompts = [p if p is not None else TaskPrompt(lm, "manual", 0, tuning="hard") for p in listed]
        self.encoders = [TaskEncoder(lm, task, p) for p in self.prompts]
        self.vectors, self.deltas, self.offsets = stack_prompts(self.prompts)
        self.normalise, self.calibrated, self.batch_size = normalise, calibrated, batch_size

    def examples(self, rows: Sequence[TaskExample | Mapping[str, Any]]) -> list[TaskExample]:
        return [r if isinstance(r, TaskExample) else self.task.render(r, f"input {i + 1}", labelled=False)
                for i, r in enumerate(rows)]

    def scores(self, rows: Sequence[TaskExample | Mapping[str, Any]], prompt_ids: Sequence[int] | None = None
               ) -> torch.Tensor:
        """(N, C) choice scores: log-likelihoods, length-normalised and/or calibrated if asked."""
        examples = self.examples(rows)
        ids = [0] * len(examples) if prompt_ids is None else list(prompt_ids)
        if len(ids) != len(examples) or any(not 0 <= i < len(self.prompts) for i in ids):
            raise SoftpromptError(f"prompt_ids must give each of the {len(examples)} inputs a prompt index in "
                                  f"0..{len(self.prompts) - 1}")
        encoded = Encoded.concat([self.encoders[i].encode([e], self.offsets[i]) for e, i in zip(examples, ids,
                                                                                                strict=True)])
        scores = self._score(encoded)
        if self.calibrated:
            free = self._score(Encoded.concat([enc.encode([self.task.content_free()], off)
                                               for enc, off in zip(self.encoders, self.offsets, strict=True)]))
            scores = torch.stack([calibrate(s[None], free[i])[0] for s, i in zip(scores, ids, strict=True)])
        return scores

    def _score(self, encoded: Encoded) -> torch.Tensor:
        scores = choice_scores(self.engine, encoded, self.vectors, self.deltas, self.batch_size)
        return scores / encoded.choice_lengths if self.normalise else scores

    def prediction_rows(self, rows: Sequence[TaskExample | Mapping[str, Any]],
                        prompt_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One record per input: the predicted label (or choice text), its index, the prompt used, and the
        score of every choice."""
        examples = self.examples(rows)
        ids = [0] * len(examples) if prompt_ids is None else list(prompt_ids)
        labels = list(self.task.labels) if self.task.labels is not None else None
        out = []
        scores = self.scores(examples, ids)
        for e, s, i, best in zip(examples, scores, ids, choice_predictions(scores).tolist(), strict=True):
            name = None if best < 0 else labels[best] if labels else e.choices[best]
            out.append({"prediction": name, "choice": best, "prompt": i, "scores": [round(v, 5) for v in s.tolist()]})
        return out

    def predict(self, rows: Sequence[TaskExample | Mapping[str, Any]], prompt_ids: Sequence[int] | None = None
                ) -> list[str | None]:
        """The predicted label (classification) or choice text (multiple choice) of each input (None where the
        prompt gives no finite scores)."""
        return [r["prediction"] for r in self.prediction_rows(rows, prompt_ids)]


def routed_prompts(examples: Sequence[TaskExample], count: int, source: str) -> list[int]:
    """Each input's prompt index, from its "prompt" field (0 without one); ``source`` names the inputs' file."""
    ids = []
    for number, example in enumerate(examples, start=1):
        value = example.fields.get("prompt", 0)
        if isinstance(value, str) and value.strip().isdigit():  # CSV and TSV fields are text
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise SoftpromptError(f"{source}, input {number}: field 'prompt' must be the index of one of the "
                                  f"{count} prompts given (0 to {count - 1}), got {str(value)[:20]!r}")
        ids.append(value)
    return ids


def generate(lm: LanguageModel, prompt: TaskPrompt | None, text: str, max_new_tokens: int = 32,
             description: str = "", **generate_kwargs: Any) -> str:
    """Continue ``text`` with a causal LM under ``prompt`` (its layout filled with the text); the prompt's
    vectors enter as input embeddings, and decoding reuses the KV cache as ``model.generate`` does."""
    if lm.kind != "causal":
        raise SoftpromptError(f"generation needs a causal LM; model {lm.name!r} is {lm.kind}")
    prompt = prompt or TaskPrompt(lm, "manual", 0, tuning="hard")
    engine = Engine(lm)
    ids, slots = layout_tokens(lm, prompt.layout, {"input": text, "description": description, "options": ""},
                               prompt.length, lm.special_affixes[0])
    batch = collate_rows([Row(tuple(ids), tuple(slots), (), ())], lm.tokenizer.pad_token_id, True, lm.device)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", lm.tokenizer.pad_token_id)
    with torch.inference_mode(), engine.perturb_layers(prompt.deltas(), batch.prompt_slots):
        out = lm.model.generate(inputs_embeds=engine.embed(batch, prompt.vectors(), prompt.deltas()),
                                attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens, **generate_kwargs)
    return lm.tokenizer.decode(out[0], skip_special_tokens=True)

