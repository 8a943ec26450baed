"""Multitask prompted training with the LM frozen (ZeroPrompt §3, T0/FLAN-style mixing).

Each epoch draws its mixture: every example of a task with at most ``cap`` training examples, else ``cap`` of
them drawn without replacement (examples-proportional mixing with a cap, Raffel et al.'s "limit K"), seeded by
(seed, epoch) so that a resumed run replays the same batches. ``GradientDescent`` then batches the mixture by
length, so one batch holds examples of several tasks under their own prompts: their rows run in one forward
pass over the stacked table (each task's rows point at its own E_t), and since tasks differ in their choices
(one row per example with shared one-token verbalizers, else one per choice) the scores are read and the
cross-entropy reduced per task slice, weighted by the slice's share of the batch. The batch loss is thus the
mean over its examples, as in single-task training. The dev loss is the mean over tasks of each task's dev
loss, so that model selection weighs every task alike whatever its size.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.engine import Engine
from softprompt.metrics import choice_predictions
from softprompt.models import LanguageModel
from softprompt.optimizers import GradientDescent, TrainConfig
from softprompt.optimizers.base import epoch_seed
from softprompt.runs import RunDir, warn
from softprompt.tasks.run import TaskSettings, predict, split_indices, task_metrics
from softprompt.tasks.sampling import sample_record
from softprompt.tasks.scoring import (
    Encoded,
    choice_loss,
    choice_scores,
    collate_rows,
    example_rows,
    example_sizes,
    query_logits,
)
from softprompt.tasks.task import Task, TaskExample
from softprompt.zeroprompt.multitask import ARTEFACT, MultitaskPrompt, MultitaskSettings, new_multitask
from softprompt.zeroprompt.unseen import feature_texts, task_feature

log = logging.getLogger(__name__)


def mixture_sample(sizes: Sequence[int], cap: int, seed: int) -> list[tuple[int, int]]:
    """One epoch's training items (task, example): all of a task's examples up to ``cap``, else ``cap`` drawn
    without replacement (one generator, seeded, drawing task after task)."""
    rng = random.Random(seed)
    items = []
    for task, size in enumerate(sizes):
        chosen = range(size) if size <= cap else sorted(rng.sample(range(size), cap))
        items += [(task, example) for example in chosen]
    return items


def mixed_scores(engine: Engine, parts: Sequence[tuple[Encoded, Sequence[int]]], vectors: torch.Tensor | None,
                 deltas: torch.Tensor | None) -> list[torch.Tensor]:
    """``row_scores`` of rows of several tasks in one forward pass: ``parts`` are (a task's encoded examples, row
    indices); each part gets its own scores ((rows, C) for shared verbalizers, else (rows,)). The batch is built
    row by row, so tasks may differ in choices; each part's queries and targets are read off its own slice."""
    rows = [encoded.rows[i] for encoded, indices in parts for i in indices]
    batch = collate_rows(rows, engine.lm.tokenizer.pad_token_id, engine.padding_side == "left", engine.lm.device)
    logp = query_logits(engine, batch, vectors, deltas).log_softmax(-1)
    out, first_row, first_query = [], 0, 0
    for encoded, indices in parts:
        own = [encoded.rows[i] for i in indices]
        queries = sum(len(r.query_positions) for r in own)
        part = logp[first_query : first_query + queries]
        if encoded.shared_ids is not None:
            out.append(part[:, list(encoded.shared_ids)])
        else:
            targets = torch.tensor([t for r in own for t in r.target_ids], device=part.device)
            token_logp = part.gather(1, targets[:, None])[:, 0]
            query_rows = batch.query_rows[first_query : first_query + queries] - first_row
            out.append(torch.zeros(len(own), device=part.device).index_add(0, query_rows, token_logp))
        first_row, first_query = first_row + len(own), first_query + queries
    return out


@dataclass
class MixtureObjective:
    """The choice cross-entropy on a seeded, capped task mixture (``GradientDescent``'s Objective). ``train`` and
    ``dev`` hold each task's encoded examples, task t's pointing at rows t·n … of the model's table."""

    engine: Engine
    prompt: MultitaskPrompt
    train: list[Encoded]
    dev: list[Encoded]
    normalise: bool
    cap: int
    seed: int
    eval_batch_size: int
    sample: list[tuple[int, int]] = field(default_factory=list)  # this epoch's (task, example) items

    def __post_init__(self) -> None:
        self.sizes = [example_sizes(encoded) for encoded in self.train]

    @property
    def items(self) -> list[range]:
        return [self.sizes[t][e] for t, e in self.sample]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.prompt.prompts], "lr": lr},
                {"params": self.prompt.shared_parameters(), "lr": self.prompt.shared_lr(lr)}]

    def start_epoch(self, epoch: int) -> None:
        self.sample = mixture_sample([e.num_examples for e in self.train], self.cap, epoch_seed(self.seed, epoch))

    def batch_loss(self, indices: Sequence[int]) -> torch.Tensor:
        """The mean loss over the items ``indices`` of this epoch's sample, from one forward pass (call it within
        ``prompt.applied()``)."""
        by_task: dict[int, list[int]] = {}
        for t, e in (self.sample[i] for i in indices):
            by_task.setdefault(t, []).append(e)
        parts = [(self.train[t], example_rows(self.train[t], examples)) for t, examples in by_task.items()]
        scores = mixed_scores(self.engine, parts, *self.prompt.table())
        loss = torch.zeros((), device=self.prompt.prompts.device)
        for (t, examples), part in zip(by_task.items(), scores, strict=True):
            encoded = self.train[t]
            lengths = encoded.choice_lengths[examples] if self.normalise else None
            task_loss = choice_loss(part.view(len(examples), -1), encoded.labels[examples], lengths)
            loss = loss + task_loss * (len(examples) / len(indices))
        return loss

    def backward(self, indices: list[int]) -> float:
        with self.prompt.applied():
            loss = self.batch_loss(indices)
            loss.backward()
        return loss.item()

    @torch.no_grad()
    def dev_loss(self) -> float:
        with self.prompt.applied():
            vectors, deltas = self.prompt.table()
            losses = [choice_loss(choice_scores(self.engine, d, vectors, deltas, self.eval_batch_size), d.labels,
                                  d.choice_lengths if self.normalise else None) for d in self.dev]
        return sum(loss.item() for loss in losses) / len(losses)


def multitask_objective(engine: Engine, model: MultitaskPrompt, tasks: Sequence[Task],
                        train: Sequence[Sequence[TaskExample]], dev: Sequence[Sequence[TaskExample]],
                        settings: MultitaskSettings, config: TrainConfig) -> MixtureObjective:
    """The objective of ``model`` on each task's ``train`` and ``dev`` examples (tasks in the model's order)."""
    encoders = [model.encoder(task) for task in tasks]
    offsets = [t * model.length for t in range(len(tasks))]
    return MixtureObjective(engine, model,
                            [enc.encode(examples, off) for enc, examples, off in zip(encoders, train, offsets,
                                                                                      strict=True)],
                            [enc.encode(examples, off) for enc, examples, off in zip(encoders, dev, offsets,
                                                                                      strict=True)],
                            settings.normalise, settings.cap, config.seed, config.eval_batch_size)


def multitask_identity(lm: LanguageModel, tasks: Sequence[Task], settings: MultitaskSettings,
                       config: TrainConfig) -> dict[str, Any]:
    """What a zeroprompt run's config.json must share for the run to be resumed."""
    return {"tasks": [t.name for t in tasks], "model": lm.name, "settings": asdict(settings), "config": asdict(config)}


def given_up(task: Task, metrics: Mapping[str, Any], labels: Sequence[int], predictions: Sequence[int]) -> str | None:
    """The warning for a training task the model does not tell apart on its dev set: one answer for every example
    (where the labels differ) or accuracy below uniform chance. The checkpoint is chosen on the mean dev loss
    over the tasks, which one task can lose while the others gain."""
    if len(set(predictions)) == 1 and len(set(labels)) > 1:
        answer = repr(task.verbalizers[predictions[0]]) if task.verbalizers else f"choice {predictions[0] + 1}"
        what = f"answers {answer} for all {len(predictions)} dev examples (dev accuracy {metrics['accuracy']:.3f})"
    elif metrics["accuracy"] < 1 / task.num_choices:
        what = (f"ends at dev accuracy {metrics['accuracy']:.3f}, below chance (1/{task.num_choices}) on its "
                f"{len(predictions)} dev examples")
    else:
        return None
    return (f"training task {task.name} {what}: the mixture gave it up; check it on more data with "
            f"`softprompt zeroprompt eval RUN --task {task.name}` before relying on it")


def train_multitask(lm: LanguageModel, tasks: Sequence[Task], data: Sequence[Sequence[TaskExample]],
                    settings: MultitaskSettings, config: TrainConfig, out: Path, resume: bool = False,
                    progress: bool = True, engine: Engine | None = None,
                    sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train E_t for every task in ``tasks`` (``data``: each one's training examples) and the shared component
    on their mixture; write the run directory ``out`` (config, checkpoint, ``multitask.safetensors``, each task's
    dev predictions and, last, metrics.json with each task's dev metrics) and return its metrics."""
    engine = engine or Engine(lm)
    splits = [split_indices(task, [e.label for e in examples], TaskSettings(dev_size=settings.dev_size), config.seed)
              for task, examples in zip(tasks, data, strict=True)]
    train = [[examples[i] for i in tr] for examples, (tr, _) in zip(data, splits, strict=True)]
    dev = [[examples[i] for i in dv] for examples, (_, dv) in zip(data, splits, strict=True)]
    model = new_multitask(lm, tasks, settings, config.seed)
    with torch.no_grad():
        for t, examples in enumerate(train):
            model.features[t] = task_feature(engine, feature_texts(examples, settings.feature_inputs, config.seed))
    objective = multitask_objective(engine, model, tasks, train, dev, settings, config)
    identity = multitask_identity(lm, tasks, settings, config)
    record = {"data": dict(sources or {}), "samples": {
        task.name: {"train": sample_record(tr, len(examples), config.seed, False),
                    "dev": sample_record(dv, len(examples), config.seed, True)}
        for task, examples, (tr, dv) in zip(tasks, data, splits, strict=True)}}
    run = RunDir(out, "softprompt zeroprompt train")
    with run.open(identity | record, resume):
        if not resume:
            (out / ARTEFACT).unlink(missing_ok=True)
        warnings: list[str] = []
        sizes = ", ".join(f"{t.name} {len(x)}" for t, x in zip(tasks, train, strict=True))
        log.info("training on %d tasks (training examples: %s; at most %d a task per epoch)", len(tasks), sizes,
                 settings.cap)
        start = time.perf_counter()
        result = GradientDescent(config, progress).fit(objective, run.checkpoint, resume,
                                                       settings={"tasks": identity["tasks"], **identity["settings"]})
        for message in result.warnings():
            warn(warnings, message)
        seconds = result.earlier_seconds + time.perf_counter() - start
        model.save(out / ARTEFACT)
        metrics, predictions = {}, []
        with model.applied():
            for t, (task, examples) in enumerate(zip(tasks, dev, strict=True)):
                scores = predict(engine, model.task_prompt(model.prompts[t], task.name), task, examples,
                                 TaskSettings(normalise=settings.normalise), config.eval_batch_size)
                labels = [e.label for e in examples]
                metrics[task.name] = task_metrics(task, scores, labels)
                predicted = choice_predictions(scores).tolist()
                if message := given_up(task, metrics[task.name], labels, predicted):
                    warn(warnings, message)
                predictions += [{"task": task.name, "index": i, "label": y, "prediction": p}
                                for i, y, p in zip(splits[t][1], labels, predicted, strict=True)]
        doc = identity | record | {"best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss,
                                   "history": result.history, "train_seconds": seconds, "dev_metrics": metrics,
                                   "warnings": warnings}
        return run.finish(doc, predictions)
