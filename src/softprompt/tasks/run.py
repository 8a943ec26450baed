"""Training and evaluating task prompts: data selection (full or k-shot), the choice objective, metrics,
and run directories that can be resumed."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_json
from softprompt.metrics import accuracy, choice_predictions, macro_f1, roc_auc
from softprompt.models import LanguageModel
from softprompt.optimizers import FitResult, GradientDescent, TrainConfig
from softprompt.prompts.task import INITS, LAYOUTS, TaskPrompt, count_markers
from softprompt.runs import RunDir
from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, TaskEncoder, calibrate, choice_scores
from softprompt.tasks.task import Task, TaskExample

KINDS = ("hard", "soft", "deep")


@dataclass(frozen=True)
class TaskSettings:
    """How a task prompt is built and scored (the run's hyperparameters besides the optimiser's)."""

    layout: str = "prefix"
    length: int = 20
    kind: str = "soft"  # hard: no trainable vectors (a layout without [P] markers)
    init: str = "text"
    init_text: str | None = None  # default: the task's description
    normalise: bool = False  # length-normalise multi-token choice scores
    calibrate: bool = False
    shots: int | None = None  # k training (and k dev) examples per class; None: the full train split
    train_limit: int | None = None  # subsample the train split (full-data setting) to this many
    dev_size: int = 200  # held out from train for early stopping (full-data setting)
    eval_limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SoftpromptError(f"unknown prompt kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.init not in INITS:
            raise SoftpromptError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if self.length < 0:
            raise SoftpromptError(f"prompt length must be at least 0, got {self.length}")
        for name in ("shots", "train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {value}")


def build_prompt(lm: LanguageModel, task: Task, settings: TaskSettings, seed: int) -> TaskPrompt:
    layout = settings.layout
    if settings.kind == "hard":
        layout = {"prefix": "manual", "hybrid": "hybrid-hard"}.get(layout, layout)
        if count_markers(LAYOUTS.get(layout, layout)) or count_markers(task.template):
            raise SoftpromptError(f"a hard prompt has no vectors, but layout {layout!r} or the task template has "
                                  "[P] markers; use --kind soft or deep")
    prompt = TaskPrompt(lm, layout, settings.length, count_markers(task.template), settings.kind, settings.init,
                        task.description if settings.init_text is None else settings.init_text, seed, task.name)
    if settings.kind != "hard" and prompt.length == 0:
        raise SoftpromptError(f"layout {LAYOUTS.get(layout, layout)!r} has no [P] positions to train; use "
                              "--kind hard, a prefix/hybrid layout, or [P] markers in the task template")
    return prompt


def split_data(task: Task, train: Sequence[TaskExample], settings: TaskSettings, seed: int
               ) -> tuple[list[TaskExample], list[TaskExample]]:
    """(train, dev): k per class each for few-shot runs; else a seeded held-out slice of ``train``."""
    rng = random.Random(seed)
    if settings.shots is not None:
        by_label: dict[int, list[TaskExample]] = {}
        for e in train:
            by_label.setdefault(e.label, []).append(e)
        picked_train, picked_dev = [], []
        for label in sorted(by_label):
            pool = by_label[label][:]
            rng.shuffle(pool)
            picked_train += pool[: settings.shots]
            picked_dev += pool[settings.shots : 2 * settings.shots]
        if not picked_dev:
            raise SoftpromptError(f"task {task.name!r}: too few examples for {settings.shots}-shot train and dev sets")
        return picked_train, picked_dev
    pool = list(train)
    rng.shuffle(pool)
    dev_size = min(settings.dev_size, len(pool) // 5)
    if dev_size < 1:
        raise SoftpromptError(f"task {task.name!r}: {len(pool)} training examples are too few to hold out a dev set")
    dev, rest = pool[:dev_size], pool[dev_size:]
    return (rest[: settings.train_limit] if settings.train_limit else rest), dev


def fit(engine: Engine, prompt: TaskPrompt, task: Task, train: Sequence[TaskExample], dev: Sequence[TaskExample],
        settings: TaskSettings, config: TrainConfig, checkpoint: Path | None = None, resume: bool = False,
        progress: bool = True) -> FitResult:
    """Train ``prompt`` in place on ``train`` with early stopping on ``dev``."""
    encoder = TaskEncoder(engine.lm, task, prompt)
    objective = ChoiceObjective(engine, prompt, encoder.encode(train), encoder.encode(dev), settings.normalise,
                                config.eval_batch_size)
    return GradientDescent(config, progress).fit(objective, checkpoint, resume,
                                                 settings={"task": task.name, **asdict(settings)})


def predict(engine: Engine, prompt: TaskPrompt | None, task: Task, examples: Sequence[TaskExample],
            settings: TaskSettings, batch_size: int = CHOICE_BATCH_SIZE) -> torch.Tensor:
    """Per-choice scores (N, C) used for prediction: log-likelihoods, length-normalised and/or
    calibrated as ``settings`` say."""
    encoder = TaskEncoder(engine.lm, task, prompt)
    vectors, deltas = (prompt.vectors(), prompt.deltas()) if prompt is not None else (None, None)
    encoded = encoder.encode(examples)
    scores = choice_scores(engine, encoded, vectors, deltas, batch_size)
    if settings.normalise:
        scores = scores / encoded.choice_lengths
    if settings.calibrate:
        content_free = encoder.encode([task.content_free()])
        free = choice_scores(engine, content_free, vectors, deltas, batch_size)
        if settings.normalise:
            free = free / content_free.choice_lengths
        scores = calibrate(scores, free[0])
    return scores


def task_metrics(task: Task, scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    predictions = choice_predictions(scores).tolist()
    out: dict[str, float] = {"n": len(labels)}
    for name in task.metrics:
        if name == "accuracy":
            out[name] = accuracy(predictions, labels)
        elif name == "macro_f1":
            out[name] = macro_f1(predictions, labels, task.num_choices)
        else:
            margin = scores.log_softmax(-1)
            margin = margin[:, 1] - margin[:, 0]
            # A row without a finite margin gets the worst one for its label.
            worst = torch.tensor([-math.inf if y == 1 else math.inf for y in labels], dtype=margin.dtype)
            out[name] = roc_auc(torch.where(margin.isfinite(), margin, worst).tolist(), labels)
    return out


def task_run_settings(lm: LanguageModel, task: Task, settings: TaskSettings, config: TrainConfig) -> dict[str, Any]:
    """The entries of a task run's config.json that must be equal for the run to be resumed."""
    return {"task": task.name, "model": lm.name, "settings": asdict(settings), "config": asdict(config)}


def run_task(lm: LanguageModel, task: Task, settings: TaskSettings, config: TrainConfig, out: Path,
             train: Sequence[TaskExample] | None, evaluation: Sequence[TaskExample], resume: bool = False,
             progress: bool = True, engine: Engine | None = None) -> dict[str, Any]:
    """Train (unless the prompt is hard), evaluate, and write the run directory ``out``."""
    engine = engine or Engine(lm)
    seed = config.seed
    torch.manual_seed(seed)
    prompt = build_prompt(lm, task, settings, seed)
    if settings.kind != "hard" and train is None:
        raise SoftpromptError(f"task {task.name!r}: training a {settings.kind} prompt needs a train split")
    identity = task_run_settings(lm, task, settings, config)
    run = RunDir(out, "softprompt task train")
    with run.open(identity, resume):
        doc: dict[str, Any] = dict(identity)
        start = time.perf_counter()
        earlier = 0.0
        if settings.kind != "hard":
            train_part, dev_part = split_data(task, train, settings, seed)
            result = fit(engine, prompt, task, train_part, dev_part, settings, config, run.checkpoint, resume, progress)
            earlier = result.earlier_seconds
            doc |= {"train_examples": len(train_part), "dev_examples": len(dev_part), "best_epoch": result.best_epoch,
                    "best_dev_loss": result.best_dev_loss, "history": result.history}
        # A resumed run's training time includes what its interrupted calls had checkpointed.
        doc["train_seconds"] = earlier + time.perf_counter() - start
        evaluation = list(evaluation)[: settings.eval_limit] if settings.eval_limit else list(evaluation)
        start = time.perf_counter()
        scores = predict(engine, prompt, task, evaluation, settings, config.eval_batch_size)
        doc["eval_seconds"] = time.perf_counter() - start
        labels = [e.label for e in evaluation]
        doc["metrics"] = task_metrics(task, scores, labels)
        doc["num_vectors"] = prompt.length
        chosen = choice_predictions(scores).tolist()
        predictions = [{"index": i, "label": y, "prediction": p, "scores": [round(v, 5) for v in s.tolist()]}
                       for i, (s, y, p) in enumerate(zip(scores, labels, chosen, strict=True))]
        return run.finish(doc, predictions, prompt)


def eval_task(lm: LanguageModel, task: Task, prompt: TaskPrompt, examples: Sequence[TaskExample],
              settings: TaskSettings, out: Path | None = None, prompt_path: Path | None = None,
              engine: Engine | None = None) -> dict[str, float]:
    """Metrics of ``prompt`` on ``examples``; with ``out``, also a run directory (predictions, then metrics)."""
    scores = predict(engine or Engine(lm), prompt, task, examples, settings)
    labels = [e.label for e in examples]
    metrics = task_metrics(task, scores, labels)
    if out is not None:
        run = RunDir(out, "softprompt task eval")
        doc = {"task": task.name, "model": lm.name, "prompt": str(prompt_path)}
        chosen = choice_predictions(scores).tolist()
        with run.open(doc | {"settings": asdict(settings), "examples": len(examples)}):
            run.finish(doc | {"metrics": metrics}, [{"index": i, "label": y, "prediction": p}
                                                     for i, (y, p) in enumerate(zip(labels, chosen, strict=True))])
    return metrics


def write_summary(out: Path, task: Task, seeds: Sequence[int], docs: Sequence[dict[str, Any]]
                  ) -> dict[str, dict[str, float]]:
    """Write ``out``/summary.json (mean and std of every metric over the seeds' runs) and return it."""
    summary = summarise(docs)
    write_json(out / "summary.json", {"task": task.name, "seeds": list(seeds), "metrics": summary})
    return summary


def summarise(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of every metric over seeds."""
    out = {}
    for name in docs[0]["metrics"]:
        if name == "n":
            continue
        values = torch.tensor([d["metrics"][name] for d in docs], dtype=torch.float64)
        out[name] = {"mean": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0,
                     "seeds": len(values)}
    return out

