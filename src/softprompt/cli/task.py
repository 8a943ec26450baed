"""``softprompt task ...``: prompt tuning on NLU tasks (train, eval, predict, generate, PEFT export/import)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer
from rich.table import Table

from softprompt.cli.common import (
    BatchSize,
    Epochs,
    Force,
    Lr,
    Model,
    Out,
    Patience,
    PrecisionOption,
    Quiet,
    Resume,
    TrackerOption,
    TrackingDir,
    check_resume_force,
    console,
    load_lm,
    staged_data,
    tracked,
    training_process,
)
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_jsonl
from softprompt.models import DEFAULT_MODEL, LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.prompts import TaskPrompt, load_prompt
from softprompt.prompts.task import LAYOUTS
from softprompt.runs import RunDir
from softprompt.tasks import TaskSettings, builtin_tasks, load_task, run_task
from softprompt.tasks.inference import PromptedClassifier, generate, routed_prompts
from softprompt.tasks.run import eval_task, load_split, task_run_settings, write_summary
from softprompt.tasks.task import Task
from softprompt.transfer import export_peft, import_peft

# Prompt tuning of a prefix needs a larger step than LAMA's per-token soft prompts (see docs/design.md).
TASK_CONFIG = TrainConfig(lr=1e-2, batch_size=16, max_epochs=20, patience=5)

app = typer.Typer(help="Prompt tuning on NLU tasks defined in YAML (built-in: sst2, cb, rte, copa, ...).",
                       no_args_is_help=True)

TaskName = Annotated[str, typer.Argument(help="A built-in task name or a task YAML file.", show_default=False)]
DataDir = Annotated[Path | None, typer.Option(
    help="Directory the task's relative data paths are read from (default: $SOFTPROMPT_SHARED_DATA, else "
         "../shared/data).", show_default=False)]
TrainFile = Annotated[Path | None, typer.Option("--train", help="Training data file (overrides the task's).",
                                                show_default=False)]
EvalFile = Annotated[Path | None, typer.Option("--eval", help="Evaluation data file (default: the task's "
                                               "validation split).", show_default=False)]
Layout = Annotated[str, typer.Option(help=f"Where the prompt goes: {', '.join(LAYOUTS)}, or a pattern with "
                                     "{input}, {description}, {options} and [P]/[P*N] markers.")]
Normalise = Annotated[bool, typer.Option("--normalise", help="Divide each choice's log-likelihood by its tokens.")]
Calibrate = Annotated[bool, typer.Option("--calibrate", help="Contextual calibration on a content-free input.")]
EvalLimit = Annotated[int | None, typer.Option(
    min=1, help="Evaluate on a sample of N examples, drawn at random within each class (stratified) with "
                "--eval-seed and recorded in the run.", show_default=False)]
EvalSeed = Annotated[int, typer.Option(help="Seed of the --eval-limit sample (the same for every --seed).")]


def task_and_data(spec: str, data_dir: Path | None) -> tuple[Task, Path | None]:
    """The task, and the directory its relative data paths are read from."""
    task = load_task(spec)
    if data_dir is not None and not data_dir.is_dir():
        raise SoftpromptError(f"--data-dir {data_dir} is not a directory")
    return task, staged_data(data_dir)


def train_seeds(command: str, task: Task, settings: TaskSettings, config: TrainConfig, seeds: list[int] | None,
                out: Path, model: str, data_dir: Path | None, files: tuple[Path | None, Path | None], resume: bool,
                force: bool, quiet: bool, init_from: Callable[[TaskPrompt], Any] | None = None,
                identity: dict[str, Any] | None = None, device: torch.device | None = None,
                track: Callable[[Path], AbstractContextManager[None]] | None = None
                ) -> tuple[list[int], list[dict[str, Any]]]:
    """One task run per seed (OUT, or OUT/seed-N for several, with OUT/summary.json): every run directory is
    checked before the data and model load, and against the run's settings (and ``identity``) after; returns the
    seeds and their runs' metrics. What ``task train`` and ``transfer init`` share. The model runs on ``device``;
    ``track(run directory)`` is the context each run is tracked in."""
    seeds = seeds or [0]
    outs = [out] if len(seeds) == 1 else [out / f"seed-{s}" for s in seeds]
    for o in outs:
        RunDir(o, command).prepare(force, resume)
    train, train_source = load_split(task, "train", data_dir, files[0])
    evaluation, eval_source = load_split(task, "validation", data_dir, files[1])
    lm = load_lm(model, device, quiet=quiet)
    configs = [replace(config, seed=s) for s in seeds]
    for o, seed_config in zip(outs, configs, strict=True):
        RunDir(o, command).prepare(force, resume, task_run_settings(lm, task, settings, seed_config) | (identity or {}))
    engine = Engine(lm)
    docs = []
    for number, (seed, o, seed_config) in enumerate(zip(seeds, outs, configs, strict=True), start=1):
        if len(seeds) > 1 and not quiet:
            console.print(f"seed {seed} ({number} of {len(seeds)}): {o}")
        with track(o) if track is not None else nullcontext():
            docs.append(run_task(lm, task, settings, seed_config, o, train, evaluation, resume=resume,
                                 progress=not quiet, engine=engine,
                                 sources={"train": train_source, "validation": eval_source}, init_from=init_from))
    return seeds, docs


def _metrics_row(task: Task, metrics: dict[str, float | None]) -> list[str]:
    """The task's metrics ×100; "–" for one the data leave undefined."""
    return ["–" if metrics[m] is None else f"{100 * metrics[m]:.1f}" for m in task.metrics]


@app.command("list")
def task_list() -> None:
    """The built-in tasks."""
    table = Table()
    for col in ("task", "cluster", "choices", "metrics", "description"):
        table.add_column(col)
    for name in builtin_tasks():
        task = load_task(name)
        choices = ", ".join(task.verbalizers) if task.verbalizers else f"{task.num_choices} per example"
        table.add_row(name, task.cluster or "–", choices, ", ".join(task.metrics), task.description)
    console.print(table)


@app.command("train")
def task_train(
    task_name: TaskName,
    out: Out,
    model: Model = DEFAULT_MODEL,
    layout: Layout = "prefix",
    length: Annotated[int, typer.Option(min=0, help="N in the prefix/hybrid layouts' [P*N].")] = 20,
    kind: Annotated[Literal["soft", "deep"], typer.Option(
        help="soft: train the vectors; deep: train a perturbation of them at every layer.")] = "soft",
    init: Annotated[Literal["text", "vocab", "random"], typer.Option(
        help="Start from the embeddings of --init-text (the task description by default), of sampled common "
        "tokens, or from random draws shaped like the embeddings.")] = "text",
    init_text: Annotated[str | None, typer.Option(show_default=False)] = None,
    shots: Annotated[int | None, typer.Option(min=1, help="Few-shot: k training and k dev examples per class.",
                                              show_default=False)] = None,
    train_limit: Annotated[int | None, typer.Option(
        min=1, help="Train on a sample of N examples (after the dev hold-out), drawn at random within each class "
                    "(stratified) with the run's --seed and recorded in the run.", show_default=False)] = None,
    dev_size: Annotated[int, typer.Option(
        min=1, help="Training examples held out for early stopping (at most a fifth of the training split; "
                    "few-shot runs hold out k per class instead).")] = TaskSettings.dev_size,
    balance: Annotated[bool, typer.Option(
        "--balance", help="Train on equally many examples of each class (as many as the rarest class has), so the "
                          "prompt does not learn the training split's label prior.")] = False,
    eval_limit: EvalLimit = None,
    eval_seed: EvalSeed = 0,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="A seed; repeat for several runs (mean ± std).",
                                                    show_default=False)] = None,
    normalise: Normalise = False,
    calibrate: Calibrate = False,
    train_file: TrainFile = None,
    eval_file: EvalFile = None,
    data_dir: DataDir = None,
    lr: Lr = TASK_CONFIG.lr,
    batch_size: BatchSize = TASK_CONFIG.batch_size,
    epochs: Epochs = TASK_CONFIG.max_epochs,
    patience: Patience = TASK_CONFIG.patience,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
    precision: PrecisionOption = None,
) -> None:
    """Train a task prompt on the train split (early stopping on held-out train data) and evaluate it.

    With several --seed values each run goes to OUT/seed-N and OUT/summary.json holds mean ± std (and each is
    tracked as OUT/seed-N). A run warns (and records in metrics.json) when its best epoch is the last one, and
    when a class's share of the training labels differs from its share of the evaluation labels by more than 15
    points (tasks.sampling.PRIOR_GAP). Under accelerate launch, the processes train data-parallel.
    """
    check_resume_force(resume, force)
    task, data_dir = task_and_data(task_name, data_dir)
    settings = TaskSettings(layout=layout, length=length, kind=kind, init=init, init_text=init_text,
                            normalise=normalise, calibrate=calibrate, shots=shots, train_limit=train_limit,
                            dev_size=dev_size, eval_limit=eval_limit, balance=balance, eval_seed=eval_seed)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience)
    with training_process(out, quiet, precision) as launch:
        root = launch.out
        seeds, docs = train_seeds("softprompt task train", task, settings, config, seeds, root, model, data_dir,
                                  (train_file, eval_file), resume, force, launch.quiet, device=launch.device,
                                  track=lambda o: tracked(tracker, tracking_dir or root / "tracking", o, resume,
                                                          name=str(o.relative_to(root.parent))))
        summary = write_summary(root, task, seeds, docs) if len(docs) > 1 else None
    n_eval = docs[0]["metrics"]["n"]
    table = Table(title=f"{task.name}: {kind} {layout} prompt, {n_eval} evaluation examples (×100)")
    for col in ("seed", *task.metrics, "train s"):
        table.add_column(col, justify="right")
    for seed, doc in zip(seeds, docs, strict=True):
        table.add_row(str(seed), *_metrics_row(task, doc["metrics"]), f"{doc['train_seconds']:.0f}")
    if summary is not None:
        table.add_row("mean ± std", *("–" if summary[m]["mean"] is None else
                                      f"{100 * summary[m]['mean']:.1f} ± {100 * summary[m]['std']:.1f}"
                                      for m in task.metrics), "")
    console.print(table)
    console.print(f"run directory: {out}")


@app.command("eval")
def task_eval(
    task_name: TaskName,
    prompt: Annotated[Path | None, typer.Option(help="A trained task prompt (default: the manual template).",
                                                show_default=False)] = None,
    layout: Annotated[str, typer.Option(help="Without --prompt: manual, hybrid-hard, or a pattern without [P].")
                      ] = "manual",
    model: Model = DEFAULT_MODEL,
    normalise: Normalise = False,
    calibrate: Calibrate = False,
    eval_file: EvalFile = None,
    data_dir: DataDir = None,
    eval_limit: EvalLimit = None,
    eval_seed: EvalSeed = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Also write metrics.json and predictions.jsonl here.",
                                             show_default=False)] = None,
) -> None:
    """Score a task's validation split zero-shot (manual or hard hybrid prompt) or with a trained prompt.

    With --out, the run records the prompt file, layout, --normalise, --calibrate, the data file and the sample.
    """
    task, data_dir = task_and_data(task_name, data_dir)
    examples, source = load_split(task, "validation", data_dir, eval_file)
    settings = TaskSettings(normalise=normalise, calibrate=calibrate, eval_limit=eval_limit, eval_seed=eval_seed)
    lm = load_lm(model)
    task_prompt = _task_prompt(prompt, lm) if prompt else TaskPrompt(lm, layout, 0, tuning="hard")
    if out is not None:
        RunDir(out, "softprompt task eval").prepare(force=True)  # evaluations are rewritten (refuses a file)
    doc = eval_task(lm, task, task_prompt, examples, settings, out, prompt, source=source)
    table = Table(title=f"{task.name}: {doc['sample']['size']} of {len(examples)} examples (×100)")
    for m in task.metrics:
        table.add_column(m, justify="right")
    table.add_row(*_metrics_row(task, doc["metrics"]))
    console.print(table)
    if out is not None:
        console.print(f"written: {out}")


def _task_prompt(path: Path, lm: LanguageModel) -> TaskPrompt:
    prompt = load_prompt(path, lm)
    if not isinstance(prompt, TaskPrompt):
        raise SoftpromptError(f"{path} holds a {prompt.kind} prompt for fact probing, not a task prompt; train one "
                              "with softprompt task train")
    return prompt


@app.command("predict")
def task_predict(
    task_name: TaskName,
    inputs: Annotated[Path, typer.Option("--input", help="JSONL/TSV/CSV rows with the task's fields (labels "
                                         "optional).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="JSONL of predictions to write.", show_default=False)],
    prompt: Annotated[list[Path] | None, typer.Option(
        help="A trained task prompt; repeat for several and route rows with a 'prompt' field (its index).",
        show_default=False)] = None,
    model: Model = DEFAULT_MODEL,
    normalise: Normalise = False,
    calibrate: Calibrate = False,
) -> None:
    """Classify new inputs with trained prompts; one batch may route rows to different prompts."""
    task = load_task(task_name)
    examples = task.load("test", path=inputs, labelled=False)
    lm = load_lm(model)
    prompts = [_task_prompt(p, lm) for p in prompt] if prompt else [None]
    ids = routed_prompts(examples, len(prompts), str(inputs))
    classifier = PromptedClassifier(lm, task, prompts, normalise=normalise, calibrated=calibrate)
    rows = classifier.prediction_rows(examples, ids)
    write_jsonl(output, rows)
    console.print(f"{len(rows)} predictions written to {output}")


@app.command("generate")
def task_generate(
    text: Annotated[str, typer.Argument(help="The input text.", show_default=False)],
    prompt: Annotated[Path | None, typer.Option(help="A trained task prompt.", show_default=False)] = None,
    model: Model = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
) -> None:
    """Continue TEXT with a causal LM, a trained task prompt in front of it."""
    lm = load_lm(model)
    console.print(generate(lm, _task_prompt(prompt, lm) if prompt else None, text, max_new_tokens))


@app.command("export-peft")
def task_export_peft(
    prompt: Annotated[Path, typer.Argument(help="A trained soft prefix prompt.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The adapter directory to write.", show_default=False)],
    model: Model = DEFAULT_MODEL,
    task_spec: Annotated[str | None, typer.Option(
        "--task", help="The task the prompt was trained on (a built-in name or YAML file; default: the prompt's "
                       "own task if built in), recorded in OUT/softprompt.json.", show_default=False)] = None,
    save_base: Annotated[bool, typer.Option(
        "--save-base", help="Also save the base model into OUT/base and name that copy as the base.")] = False,
) -> None:
    """Write a soft prefix prompt as a PEFT prompt-tuning adapter: AutoPeftModelForCausalLM.from_pretrained(OUT)
    loads it with its base model, and OUT/README.md shows how to score the task's choices as softprompt does."""
    lm = load_lm(model)
    task_prompt = _task_prompt(prompt, lm)
    spec = task_spec or (task_prompt.task if task_prompt.task in builtin_tasks() else None)
    export_peft(task_prompt, lm, out, load_task(spec) if spec else None, save_base)
    console.print(f"written: {out}/adapter_config.json, {out}/adapter_model.safetensors, {out}/softprompt.json, "
                  f"{out}/README.md{' and the base model in ' + str(out / 'base') if save_base else ''}")


@app.command("import-peft")
def task_import_peft(
    adapter: Annotated[Path, typer.Argument(help="A PEFT prompt-tuning adapter directory.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The prompt file to write.", show_default=False)],
    model: Model = DEFAULT_MODEL,
) -> None:
    """Turn a PEFT prompt-tuning adapter into a softprompt prefix prompt file."""
    lm = load_lm(model)
    prompt = import_peft(adapter, lm)
    prompt.save(out)
    console.print(f"written: {out} ({prompt.length} vectors)")
