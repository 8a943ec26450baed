"""Genetic Prompt Search on a task (Xu et al. 2022, §3.3 and §4.3.2): "zero-shot adaptation with few-shot
validation". The prompts searched are layouts around the task's input (``softprompt.optimizers.gps``); the
LM is not trained. The dev set is drawn from the task's training split as §4.3.2 draws it: 32 examples, or
8 of each label for a task with more than 5 labels. The prompt found is evaluated on the evaluation split.

G⁰ defaults to three handcrafted prompts built from the task's description D (the paper starts from three):
ZeroPrompt's hybrid form without the soft prompt (D, the options V, the input), D alone before the input,
and an instruction that names the options. Each task's own template (its ``{input}``) stays as it is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.metrics import choice_predictions
from softprompt.models import LanguageModel
from softprompt.optimizers.gps import GeneticPromptSearch, check_prompt
from softprompt.optimizers.search import CandidateScores, Evaluation
from softprompt.prompts.task import TaskPrompt
from softprompt.runs import LINEAGE, RunDir
from softprompt.tasks.run import TaskSettings, eval_sample, predict, settings_identity, task_metrics
from softprompt.tasks.sampling import by_class, sample_record, stratified_sample
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, TaskEncoder, choice_scores
from softprompt.tasks.task import Task, TaskExample

DEV_SIZE = 32
DEV_PER_LABEL = 8
MANY_LABELS = 5  # more labels than this: DEV_PER_LABEL of each instead of DEV_SIZE in all


def gps_dev_indices(labels: Sequence[int], num_classes: int, seed: int) -> list[int]:
    """§4.3.2's few-shot dev set: a stratified sample of 32 examples, or 8 of each label (all of a rarer one)
    for tasks with more than 5 labels; sorted, seeded."""
    if num_classes <= MANY_LABELS:
        return stratified_sample(labels, DEV_SIZE, seed)
    rng = random.Random(seed)
    return sorted(i for group in by_class(labels).values() for i in rng.sample(group, min(DEV_PER_LABEL, len(group))))


def initial_layouts(task: Task) -> tuple[str, ...]:
    """Three handcrafted prompts (G⁰) from the task's description."""
    description = " ".join(task.description.split())
    if not description:
        raise SoftpromptError(f"task {task.name!r} has no description to build GPS's initial prompts from; add "
                              "one to the task file, or give the initial prompts (--prompt)")
    if "{" in description or "}" in description:
        raise SoftpromptError(f"task {task.name!r}: its description has braces, which would read as slots; give "
                              "the initial prompts (--prompt)")
    return (f"{description}\nOptions: {{options}}\n{{input}}", f"{description}\n{{input}}",
            f"Instruction: {description} Answer with one of: {{options}}.\n\n{{input}}")


@dataclass
class LayoutObjective:
    """GPS's f_GPS on a task: each prompt's accuracy and loss on the few-shot dev examples.

    With ``base`` (a ZeroPrompt model's task prompt: its soft E and, for a deep shared component, its per-layer
    perturbation), every text follows E, as in the hybrid prompt E + D + V; ``context`` is where scores are
    computed (a LoRA model's adapters switched on)."""

    engine: Engine
    task: Task
    dev: Sequence[TaskExample]
    initial: tuple[str, ...]
    normalise: bool = False
    batch_size: int = CHOICE_BATCH_SIZE
    base: TaskPrompt | None = None
    context: Callable[[], AbstractContextManager[None]] = nullcontext

    def prompt_of(self, text: str) -> TaskPrompt:
        """The text as a task prompt: a hard prompt, or ``base``'s vectors before it."""
        lm, base = self.engine.lm, self.base
        if base is None or not base.length:
            return TaskPrompt(lm, check_prompt(text), 0, tuning="hard", task=self.task.name)
        prompt = TaskPrompt(lm, f"[P*{base.length}]" + check_prompt(text), 0, tuning=base.tuning, init="vocab",
                            task=self.task.name)
        prompt.init = base.init
        with torch.no_grad():
            prompt.weight.copy_(base.weight)
            if base.tuning == "deep":
                prompt.delta.copy_(base.delta)
        return prompt

    def scores(self, text: str) -> torch.Tensor:
        """(n, C) choice scores of the dev examples under the prompt ``text``."""
        prompt = self.prompt_of(text)
        encoded = TaskEncoder(self.engine.lm, self.task, prompt).encode(self.dev)
        with self.context():
            scores = choice_scores(self.engine, encoded, prompt.vectors(), prompt.deltas(), self.batch_size)
        return scores / encoded.choice_lengths if self.normalise else scores

    def evaluate(self, texts: Sequence[str]) -> list[Evaluation]:
        labels = torch.tensor([e.label for e in self.dev])
        out = []
        for text in texts:
            scores = CandidateScores.from_logprobs(self.scores(text).log_softmax(-1)[None], labels)
            loss = float(scores.loss()[0])
            out.append(Evaluation(float(scores.accuracy()[0]), loss if loss == loss else float("inf")))
        return out


def run_gps(lm: LanguageModel, task: Task, search: GeneticPromptSearch, out: Path, train: Sequence[TaskExample],
            evaluation: Sequence[TaskExample], settings: TaskSettings, seed: int = 0,
            initial: Sequence[str] | None = None, resume: bool = False, engine: Engine | None = None,
            sources: Mapping[str, str] | None = None, base: TaskPrompt | None = None,
            context: Callable[[], AbstractContextManager[None]] = nullcontext,
            origin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Search prompts for ``task`` on a few-shot dev sample of ``train``, evaluate the best on ``evaluation``
    (``settings``: its eval_limit, eval_seed, normalise and calibrate), and write the run directory ``out`` with the
    lineage of every prompt scored. ``base`` and ``context``: a ZeroPrompt model's E and shared component (see
    ``LayoutObjective``); ``origin`` says where they came from, in the run's identity."""
    engine = engine or Engine(lm)
    initial = tuple(initial) if initial else initial_layouts(task)
    for text in initial:
        check_prompt(text, "initial prompt")
    dev_idx = gps_dev_indices([e.label for e in train], task.num_choices, seed)
    objective = LayoutObjective(engine, task, [train[i] for i in dev_idx], initial, settings.normalise, base=base,
                                context=context)
    eval_idx, eval_record, warnings = eval_sample(task, evaluation, settings)
    evaluation = [evaluation[i] for i in eval_idx]
    labels = [e.label for e in evaluation]
    identity = {"task": task.name, "model": lm.name, "settings": settings_identity(settings), "seed": seed,
                "search": search.identity(None) | {"initial": list(initial)}, **(origin or {})}
    record = {"data": dict(sources or {}),
              "samples": {"dev": sample_record(dev_idx, len(train), seed, True), "evaluation": eval_record}}
    run = RunDir(out, "softprompt search gps")
    with run.open(identity | record, resume):
        doc: dict[str, Any] = identity | record
        result = search.fit(objective, run.checkpoint, resume, settings={"task": task.name, "seed": seed})
        best = search.final[0]
        doc |= {"prompt_text": best.text, "dev_examples": len(dev_idx), "dev_accuracy": best.dev_accuracy,
                "dev_loss": best.dev_loss, "best_iteration": best.iteration, "history": result.history,
                "final": [{"text": c.text, "dev_accuracy": c.dev_accuracy, "dev_loss": c.dev_loss,
                           "iteration": c.iteration, "mutator": c.mutator} for c in search.final],
                "prompts_scored": len(search.candidates),
                "search_seconds": result.history[-1]["seconds"]}
        run.write_rows(LINEAGE, search.lineage())
        start = time.perf_counter()
        with context():
            scores = predict(engine, result.prompt, task, evaluation, settings)
        doc["eval_seconds"] = time.perf_counter() - start
        doc["metrics"] = task_metrics(task, scores, labels)
        doc["warnings"] = warnings
        chosen = choice_predictions(scores).tolist()
        predictions = [{"index": i, "label": y, "prediction": p, "scores": [round(v, 5) for v in s.tolist()]}
                       for i, s, y, p in zip(eval_idx, scores, labels, chosen, strict=True)]
        return run.finish(doc, predictions, result.prompt)
