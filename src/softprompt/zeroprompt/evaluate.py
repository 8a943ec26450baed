"""Evaluating a multitask model on any task: a training task under its own E_t, any other under E_new (an
unseen-task init), always with the shared component, and the task's own metrics (tasks/run.py's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softprompt.engine import Engine
from softprompt.metrics import choice_predictions
from softprompt.prompts.task import TaskPrompt
from softprompt.runs import RunDir
from softprompt.tasks.run import TaskSettings, eval_sample, predict, task_metrics
from softprompt.tasks.task import Task, TaskExample
from softprompt.zeroprompt.multitask import MultitaskPrompt
from softprompt.zeroprompt.unseen import feature_texts, task_feature, unseen_prompt


def eval_multitask(model: MultitaskPrompt, task: Task, examples: Sequence[TaskExample], init: str | None = None,
                   seed: int = 0, eval_limit: int | None = None, eval_seed: int = 0, out: Path | None = None,
                   engine: Engine | None = None, source: str | None = None, run: str | None = None
                   ) -> dict[str, Any]:
    """Score ``task`` on ``examples`` (a seeded stratified sample of ``eval_limit`` of them) and return the record.

    ``init`` None: a training task's own E_t, else ``random``; an init given explicitly is used even for a
    training task (to compare inits where E_t is known). ``top1`` and ``weighted`` compare the training tasks'
    features with that of ``feature_inputs`` evaluation inputs (their texts only, drawn with ``seed``), as the
    paper's task classifier reads the test task's unlabeled inputs. With ``out``, also write a run directory
    (config, predictions and metrics; for a deep shared component also the task prompt used, a deep task prompt
    that ``softprompt task eval --prompt`` scores alike). ``run`` names the model's run, for the record.
    """
    engine = engine or Engine(model.lm)
    indices, sample, warnings = eval_sample(task, examples, TaskSettings(eval_limit=eval_limit, eval_seed=eval_seed))
    chosen = [examples[i] for i in indices]
    prompt, chosen_by = prompt_for_task(model, task, examples, init, seed, engine)
    doc: dict[str, Any] = {"run": run, "task": task.name, "model": model.lm.name,
                           "seen": task.name in model.task_names, "layout": model.layout,
                           "shared": model.settings.shared, "seed": seed, "eval_limit": eval_limit,
                           "data": {"validation": source}, "sample": sample} | chosen_by
    with model.applied():
        scores = predict(engine, prompt, task, chosen, TaskSettings(normalise=model.settings.normalise))
    labels = [e.label for e in chosen]
    result = doc | {"metrics": task_metrics(task, scores, labels), "warnings": warnings}
    if out is None:
        return result
    rundir = RunDir(out, "softprompt zeroprompt eval")
    predictions = [{"index": i, "label": y, "prediction": p, "scores": [round(v, 5) for v in s.tolist()]}
                   for i, y, p, s in zip(indices, labels, choice_predictions(scores).tolist(), scores, strict=True)]
    with rundir.open(doc):
        return rundir.finish(result, predictions, prompt if model.lora is None else None)


def prompt_for_task(model: MultitaskPrompt, task: Task, examples: Sequence[TaskExample], init: str | None = None,
                    seed: int = 0, engine: Engine | None = None) -> tuple[TaskPrompt, dict[str, Any]]:
    """The model's prompt for ``task`` (see ``eval_multitask`` for ``init``) and how it was chosen (the init, and
    for ``top1``/``weighted`` each training task's similarity and weight); ``examples``' inputs give the task's
    feature."""
    if init is None and task.name in model.task_names:
        return model.task_prompt(model.prompts[model.task_names.index(task.name)], task.name), {"init": "own"}
    feature = None
    if init in ("top1", "weighted"):
        feature = task_feature(engine or Engine(model.lm),
                               feature_texts(examples, model.settings.feature_inputs, seed))
    new = unseen_prompt(model, init or "random", feature, seed)
    return model.task_prompt(new.vectors, task.name), {"init": new.init, "similarities": new.similarities,
                                                      "weights": new.weights}
