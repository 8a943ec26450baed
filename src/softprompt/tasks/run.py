"""Training and evaluating task prompts: data selection (full or k-shot, limits as seeded stratified samples,
class-balanced training), the choice objective, metrics, and run directories that can be resumed and audited."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt import distributed
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_json
from softprompt.metrics import accuracy, choice_predictions, macro_f1, roc_auc
from softprompt.models import LanguageModel
from softprompt.optimizers import FitResult, GradientDescent, Optimizer, TrainConfig
from softprompt.optimizers.search import fluency_of, found_prompt, search_settings
from softprompt.prompts.task import INITS, LAYOUTS, TaskPrompt, count_markers
from softprompt.runs import RunDir, warn
from softprompt.tasks.files import HF_PREFIX
from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.sampling import (
    PRIOR_GAP,
    balanced,
    by_class,
    label_prior,
    prior_gap,
    sample_record,
    stratified_sample,
)
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, TaskEncoder, calibrate, choice_scores
from softprompt.tasks.search import LayoutSearch
from softprompt.tasks.task import Task, TaskExample

log = logging.getLogger(__name__)

KINDS = ("hard", "soft", "deep")
# Settings added after runs had been stored, with the value those runs used: a run's identity leaves them out
# when they have it, so the older runs stay resumable (as mixture_settings does for its later options).
LATER_DEFAULTS: dict[str, Any] = {"balance": False, "eval_seed": 0}


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
    train_limit: int | None = None  # a stratified sample of this many training examples (full-data setting)
    dev_size: int = 200  # held out from train for early stopping (full-data setting; at most a fifth of it)
    eval_limit: int | None = None  # a stratified sample of this many evaluation examples, drawn with eval_seed
    balance: bool = False  # train on equally many examples of each class (the rarest class's count)
    eval_seed: int = 0  # the same for every training seed, so that seeds are compared on the same examples

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SoftpromptError(f"unknown prompt kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.init not in INITS:
            raise SoftpromptError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if self.length < 0:
            raise SoftpromptError(f"prompt length must be at least 0, got {self.length}")
        for name in ("shots", "train_limit", "eval_limit", "dev_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {value}")


def settings_identity(settings: TaskSettings) -> dict[str, Any]:
    """The settings as a run's config.json and checkpoint identify them (later options left out at their default)."""
    return {k: v for k, v in asdict(settings).items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


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


def split_indices(task: Task, labels: Sequence[int], settings: TaskSettings, seed: int
                  ) -> tuple[list[int], list[int]]:
    """(train, dev) positions in the training split whose ``labels`` are given: k per class each for few-shot
    runs; else a seeded held-out dev set of ``dev_size`` (at most a fifth) and the rest, class-balanced with
    ``balance`` and cut to a stratified sample of ``train_limit``."""
    rng = random.Random(seed)
    if settings.shots is not None:
        picked_train, picked_dev = [], []
        groups = by_class(labels)
        for label in sorted(groups):
            pool = groups[label][:]
            rng.shuffle(pool)
            picked_train += pool[: settings.shots]
            picked_dev += pool[settings.shots : 2 * settings.shots]
        if not picked_dev:
            raise SoftpromptError(f"task {task.name!r}: too few examples for {settings.shots}-shot train and dev sets")
        return picked_train, picked_dev
    pool = list(range(len(labels)))
    rng.shuffle(pool)
    dev_size = min(settings.dev_size, len(pool) // 5)
    if dev_size < 1:
        raise SoftpromptError(f"task {task.name!r}: {len(pool)} training examples are too few to hold out a dev set")
    dev, rest = pool[:dev_size], pool[dev_size:]
    if settings.balance:
        rest = balanced(labels, rest)
    if settings.train_limit is not None:
        # Kept in the shuffled order, like every training subset: the order is part of what the seed fixes.
        kept = {rest[i] for i in stratified_sample([labels[j] for j in rest], settings.train_limit, seed)}
        rest = [i for i in rest if i in kept]
    return rest, dev


def split_data(task: Task, train: Sequence[TaskExample], settings: TaskSettings, seed: int
               ) -> tuple[list[TaskExample], list[TaskExample]]:
    """(train, dev) examples (see ``split_indices``)."""
    train_idx, dev_idx = split_indices(task, [e.label for e in train], settings, seed)
    return [train[i] for i in train_idx], [train[i] for i in dev_idx]


def load_split(task: Task, split: str, data_dir: Path | None = None, path: Path | None = None
               ) -> tuple[list[TaskExample], str]:
    """A split's examples and where they were read from (a file, or the task's ``hf:`` source), for the run's
    record."""
    examples = task.load(split, data_dir, path)
    if path is None and str(task.data.get(split, "")).startswith(HF_PREFIX):
        return examples, task.data[split]
    return examples, str(path if path is not None else task.path(split, data_dir))


def class_names(task: Task) -> list[str]:
    """The names of a task's classes, as messages show them: its labels, or choice numbers."""
    return list(task.labels) if task.labels is not None else [f"choice {c}" for c in range(task.num_choices)]


def class_counts(task: Task, labels: Sequence[int]) -> str:
    """How many of ``labels`` each class has, as messages show it ("positive 60, negative 20")."""
    return ", ".join(f"{name} {sum(y == c for y in labels)}" for c, name in enumerate(class_names(task)))


def prior_warning(task: Task, train_labels: Sequence[int], eval_labels: Sequence[int]) -> str | None:
    """A warning when some class's share of the training labels differs from its share of the evaluation
    labels by more than ``PRIOR_GAP``, else None."""
    train_prior = label_prior(train_labels, task.num_choices)
    eval_prior = label_prior(eval_labels, task.num_choices)
    gap = prior_gap(train_prior, eval_prior)
    if gap <= PRIOR_GAP:
        return None

    def shares(prior: list[float]) -> str:
        return ", ".join(f"{name} {p:.0%}" for name, p in zip(class_names(task), prior, strict=True))

    return (f"the training labels ({shares(train_prior)}) differ from the evaluation's ({shares(eval_prior)}) by "
            f"{100 * gap:.0f} points for a class (more than {100 * PRIOR_GAP:.0f}): a tuned prompt learns the "
            "training prior; consider --balance (equally many training examples per class)")


def undefined_metrics(task: Task, labels: Sequence[int]) -> dict[str, str]:
    """The task's metrics that examples with ``labels`` leave undefined, each with the reason."""
    present = set(labels)
    if "roc_auc" in task.metrics and not {0, 1} <= present:
        only = " and ".join(class_names(task)[c] for c in sorted(present)) or "none"
        return {"roc_auc": f"ROC-AUC needs examples of both classes, and the {len(labels)} evaluation examples are "
                           f"of class {only} only"}
    return {}


def fit(engine: Engine, prompt: TaskPrompt, task: Task, train: Sequence[TaskExample], dev: Sequence[TaskExample],
        settings: TaskSettings, config: TrainConfig, checkpoint: Path | None = None, resume: bool = False,
        progress: bool = True) -> FitResult:
    """Train ``prompt`` in place on ``train`` with early stopping on ``dev``."""
    encoder = TaskEncoder(engine.lm, task, prompt)
    objective = ChoiceObjective(engine, prompt, encoder.encode(train), encoder.encode(dev), settings.normalise,
                                config.eval_batch_size)
    return GradientDescent(config, progress).fit(objective, checkpoint, resume,
                                                 settings={"task": task.name, **settings_identity(settings)})


def search_prompt(engine: Engine, prompt: TaskPrompt, task: Task, train: Sequence[TaskExample],
                  dev: Sequence[TaskExample], settings: TaskSettings, search: Optimizer, checkpoint: Path | None = None,
                  resume: bool = False) -> FitResult:
    """Search token ids for ``prompt``'s [P] positions (its layout; its vectors are not used); the result's
    prompt is the hard prompt found. ``--init text`` starts from the init text's (or description's) tokens, the
    other inits from sampled common tokens."""
    encoder = TaskEncoder(engine.lm, task, prompt)
    init = "random" if settings.init != "text" else (settings.init_text or task.description)
    objective = LayoutSearch(engine, prompt, encoder.encode(train), encoder.encode(dev), settings.normalise, init=init,
                             seed=prompt.seed)
    return search.fit(objective, checkpoint, resume, settings={"task": task.name, **settings_identity(settings)})


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


def task_metrics(task: Task, scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float | None]:
    """The task's metrics (and ``n``); None for a metric the labels leave undefined (see ``undefined_metrics``)."""
    predictions = choice_predictions(scores).tolist()
    undefined = undefined_metrics(task, labels)
    out: dict[str, float | None] = {"n": len(labels)}
    for name in task.metrics:
        if name in undefined:
            out[name] = None
        elif name == "accuracy":
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


def task_run_settings(lm: LanguageModel, task: Task, settings: TaskSettings, config: TrainConfig,
                      search: Optimizer | None = None) -> dict[str, Any]:
    """The entries of a task run's config.json that must be equal for the run to be resumed (a discrete search's
    settings too, when the prompt is searched rather than trained)."""
    return {"task": task.name, "model": lm.name, "settings": settings_identity(settings), "config": asdict(config),
            **({"search": search_settings(search)} if search is not None else {})}


def eval_sample(task: Task, examples: Sequence[TaskExample], settings: TaskSettings
                ) -> tuple[list[int], dict[str, Any], list[str]]:
    """The positions of the evaluation sample (``eval_limit``, seeded by ``eval_seed``), its record, and the
    warnings about the metrics it leaves undefined (shown now, before any work)."""
    indices = stratified_sample([e.label for e in examples], settings.eval_limit, settings.eval_seed)
    record = sample_record(indices, len(examples), settings.eval_seed, settings.eval_limit is not None)
    warnings: list[str] = []
    for name, reason in undefined_metrics(task, [examples[i].label for i in indices]).items():
        warn(warnings, f"{name} is undefined (null in metrics.json): {reason}")
    return indices, record, warnings


def run_task(lm: LanguageModel, task: Task, settings: TaskSettings, config: TrainConfig, out: Path,
             train: Sequence[TaskExample] | None, evaluation: Sequence[TaskExample], resume: bool = False,
             progress: bool = True, engine: Engine | None = None, sources: Mapping[str, str] | None = None,
             search: Optimizer | None = None, init_from: Callable[[TaskPrompt], Any] | None = None
             ) -> dict[str, Any]:
    """Train (unless the prompt is hard), evaluate, and write the run directory ``out``. ``sources`` (split ->
    file) go into the run's record; the samples drawn from ``train`` and ``evaluation`` are recorded too.
    With ``search`` (PEZ, AutoPrompt, RLPrompt), the prompt's [P] positions are searched for tokens instead:
    the run's prompt is the hard prompt found. ``init_from`` sets the new prompt's vectors before training
    (transfer as initialisation, ``softprompt.transfer.PromptInit``) and returns where they came from, which the
    run's config.json keeps as ``init_from`` (so a resume must start from the same sources)."""
    engine = engine or Engine(lm)
    seed = config.seed
    torch.manual_seed(seed)
    prompt = build_prompt(lm, task, settings, seed)
    if settings.kind != "hard" and train is None:
        raise SoftpromptError(f"task {task.name!r}: training a {settings.kind} prompt needs a train split")
    identity = task_run_settings(lm, task, settings, config, search)
    if init_from is not None:
        identity["init_from"] = init_from(prompt)
    samples: dict[str, Any] = {}
    if settings.kind != "hard":
        train = list(train)
        train_idx, dev_idx = split_indices(task, [e.label for e in train], settings, seed)
        train_part, dev_part = [train[i] for i in train_idx], [train[i] for i in dev_idx]
        limited = settings.train_limit is not None or settings.shots is not None
        samples |= {"train": sample_record(train_idx, len(train), seed, limited),
                    "dev": sample_record(dev_idx, len(train), seed, True)}
    eval_idx, samples["evaluation"], warnings = eval_sample(task, evaluation, settings)
    evaluation = [evaluation[i] for i in eval_idx]
    labels = [e.label for e in evaluation]
    record = {"data": dict(sources or {}), "samples": samples}
    run = RunDir(out, "softprompt task train")
    with run.open(identity | record, resume):
        doc: dict[str, Any] = identity | record
        start = time.perf_counter()
        earlier = 0.0
        if settings.kind != "hard":
            log.info("training on %d examples (%s), %d held out for early stopping%s", len(train_part),
                     class_counts(task, [e.label for e in train_part]), len(dev_part),
                     "" if settings.shots is not None else f" (--dev-size {settings.dev_size}, at most a fifth)")
            if message := prior_warning(task, [e.label for e in train_part], labels):
                warn(warnings, message)
            if search is None:
                result = fit(engine, prompt, task, train_part, dev_part, settings, config, run.checkpoint, resume,
                             progress)
            else:
                result = search_prompt(engine, prompt, task, train_part, dev_part, settings, search, run.checkpoint,
                                       resume)
                prompt = result.prompt
                doc |= found_prompt(prompt, fluency_of(search, lm))
            for message in result.warnings():
                warn(warnings, message)
            earlier = result.earlier_seconds
            doc |= {"train_examples": len(train_part), "dev_examples": len(dev_part), "best_epoch": result.best_epoch,
                    "best_dev_loss": result.best_dev_loss, "history": result.history}
        # A resumed run's training time includes what its interrupted calls had checkpointed.
        doc["train_seconds"] = earlier + time.perf_counter() - start
        start = time.perf_counter()
        # Under data parallelism each process scores its share of the evaluation examples.
        scores = distributed.current().gather_rows(
            lambda idx: predict(engine, prompt, task, [evaluation[i] for i in idx], settings, config.eval_batch_size),
            len(evaluation))
        doc["eval_seconds"] = time.perf_counter() - start
        doc["metrics"] = task_metrics(task, scores, labels)
        doc["num_vectors"] = prompt.length
        doc["warnings"] = warnings
        chosen = choice_predictions(scores).tolist()
        predictions = [{"index": i, "label": y, "prediction": p, "scores": [round(v, 5) for v in s.tolist()]}
                       for i, s, y, p in zip(eval_idx, scores, labels, chosen, strict=True)]
        return run.finish(doc, predictions, prompt)


def eval_task(lm: LanguageModel, task: Task, prompt: TaskPrompt, examples: Sequence[TaskExample],
              settings: TaskSettings, out: Path | None = None, prompt_path: Path | None = None,
              engine: Engine | None = None, source: str | None = None) -> dict[str, Any]:
    """Score ``prompt`` on ``examples`` (a seeded stratified sample of them with ``settings.eval_limit``) and
    return the record: every setting that changes a number (the prompt file, layout, normalise, calibrate, the
    data file ``source``, the sample), the metrics and the warnings. With ``out``, also write it as a run
    directory (config, predictions, then metrics)."""
    indices, sample, warnings = eval_sample(task, examples, settings)
    chosen_examples = [examples[i] for i in indices]
    scores = predict(engine or Engine(lm), prompt, task, chosen_examples, settings)
    labels = [e.label for e in chosen_examples]
    doc = {"task": task.name, "model": lm.name, "prompt": None if prompt_path is None else str(prompt_path),
           "layout": prompt.layout, "kind": prompt.tuning, "num_vectors": prompt.length,
           "normalise": settings.normalise, "calibrate": settings.calibrate, "eval_limit": settings.eval_limit,
           "data": {"validation": source}, "sample": sample}
    result = doc | {"metrics": task_metrics(task, scores, labels), "warnings": warnings}
    if out is None:
        return result
    run = RunDir(out, "softprompt task eval")
    chosen = choice_predictions(scores).tolist()
    with run.open(doc):
        return run.finish(result, [{"index": i, "label": y, "prediction": p}
                                   for i, y, p in zip(indices, labels, chosen, strict=True)])


def write_summary(out: Path, task: Task, seeds: Sequence[int], docs: Sequence[dict[str, Any]]
                  ) -> dict[str, dict[str, float | None]]:
    """Write ``out``/summary.json (mean and std of every metric over the seeds' runs) and return it."""
    summary = summarise(docs)
    write_json(out / "summary.json", {"task": task.name, "seeds": list(seeds), "metrics": summary})
    return summary


def summarise(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and (sample) standard deviation of every metric over the seeds where it is defined (None where it is
    defined for none)."""
    out: dict[str, dict[str, float | None]] = {}
    for name in docs[0]["metrics"]:
        if name == "n":
            continue
        defined = [d["metrics"][name] for d in docs if d["metrics"][name] is not None]
        if not defined:
            out[name] = {"mean": None, "std": None, "seeds": 0}
            continue
        values = torch.tensor(defined, dtype=torch.float64)
        out[name] = {"mean": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0,
                     "seeds": len(values)}
    return out
