"""``softprompt zeroprompt ...``: ZeroPrompt's multitask prompted training with the LM frozen (train) and its
evaluation on seen and unseen tasks (eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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
from softprompt.cli.task import TASK_CONFIG, DataDir, EvalFile, EvalLimit, EvalSeed, Layout, Normalise
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL
from softprompt.optimizers import TrainConfig
from softprompt.runs import RunDir
from softprompt.tasks import load_task
from softprompt.tasks.run import load_split
from softprompt.tasks.task import Task
from softprompt.zeroprompt import MultitaskSettings, eval_multitask, load_multitask, read_multitask, train_multitask
from softprompt.zeroprompt.multitask import ARTEFACT
from softprompt.zeroprompt.train import multitask_identity

app = typer.Typer(help="ZeroPrompt: task prompts and a shared component trained on a task mixture (LM frozen), "
                       "evaluated on seen and unseen tasks.", no_args_is_help=True)
DEFAULTS = MultitaskSettings()


def _metrics(task: Task, metrics: dict[str, float | None]) -> str:
    return ", ".join(f"{m} {'–' if metrics[m] is None else f'{100 * metrics[m]:.1f}'}" for m in task.metrics)


@app.command("train")
def zeroprompt_train(
    out: Out,
    more: Annotated[list[str] | None, typer.Argument(
        metavar="TASKS", show_default=False,
        help="Training tasks (built-in names or YAML files); also read after --tasks, so --tasks sst2 rte works.")
                    ] = None,
    tasks: Annotated[list[str] | None, typer.Option(
        "--tasks", help="A training task (built-in name or YAML file); the tasks that follow it count too.",
        show_default=False)] = None,
    model: Model = DEFAULT_MODEL,
    shared: Annotated[Literal["deep", "lora"], typer.Option(
        help="What every task shares: deep (per-layer perturbations of the prompt positions) or lora (PEFT LoRA "
             "adapters, the stand-in for multitask fine-tuning).")] = "deep",
    layout: Layout = DEFAULTS.layout,
    length: Annotated[int, typer.Option(min=1, help="Vectors of each task's soft prompt (N of [P*N]).")
                      ] = DEFAULTS.length,
    init: Annotated[Literal["text", "vocab", "random"], typer.Option(
        help="Each task's prompt starts from its description's embeddings, sampled common tokens, or random draws "
             "shaped like the embeddings.")] = "text",
    cap: Annotated[int, typer.Option(min=1, help="At most this many examples of one task per epoch "
                                     "(examples-proportional mixing).")] = DEFAULTS.cap,
    dev_size: Annotated[int, typer.Option(min=1, help="Training examples held out per task for early stopping (at "
                                          "most a fifth of it).")] = DEFAULTS.dev_size,
    normalise: Normalise = False,
    lora_rank: Annotated[int, typer.Option(min=1, help="Rank of the LoRA adapters (--shared lora).")
                         ] = DEFAULTS.lora_rank,
    shared_lr: Annotated[float | None, typer.Option(
        help="Learning rate of the shared component (default: --lr for deep, 1e-3 for lora).", show_default=False)
                         ] = None,
    data_dir: DataDir = None,
    lr: Lr = TASK_CONFIG.lr,
    batch_size: BatchSize = TASK_CONFIG.batch_size,
    epochs: Epochs = TASK_CONFIG.max_epochs,
    patience: Patience = TASK_CONFIG.patience,
    seed: Annotated[int, typer.Option(help="Seed of the dev hold-out, inits, the mixture and shuffles.")] = 0,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
    precision: PrecisionOption = None,
) -> None:
    """Train a soft prompt per task and a shared component on the tasks' mixture; OUT/multitask.safetensors is
    the model that zeroprompt eval reads. Under accelerate launch, the processes train data-parallel."""
    check_resume_force(resume, force)
    names = [*(tasks or []), *(more or [])]
    if not names:
        raise SoftpromptError("name the training tasks: --tasks sst2 rte ...")
    settings = MultitaskSettings(layout=layout, length=length, shared=shared, init=init, cap=cap, dev_size=dev_size,
                                 normalise=normalise, lora_rank=lora_rank, lora_alpha=2.0 * lora_rank,
                                 shared_lr=shared_lr)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience, seed=seed)
    with training_process(out, quiet, precision) as launch:
        run = RunDir(launch.out, "softprompt zeroprompt train")
        run.prepare(force, resume)
        chosen = [load_task(name) for name in names]
        data_dir = staged_data(data_dir)
        splits = [load_split(task, "train", data_dir) for task in chosen]
        lm = load_lm(model, launch.device, quiet=launch.quiet)
        run.prepare(force, resume, multitask_identity(lm, chosen, settings, config))
        with tracked(tracker, tracking_dir, launch.out, resume, files=(ARTEFACT,)):
            doc = train_multitask(lm, chosen, [examples for examples, _ in splits], settings, config, launch.out,
                                  resume, progress=not launch.quiet,
                                  sources={t.name: source for t, (_, source) in zip(chosen, splits, strict=True)})
    table = Table(title=f"{len(chosen)} tasks, {shared} shared component: dev metrics (×100)")
    for col in ("task", "n", "metrics"):
        table.add_column(col)
    for task in chosen:
        metrics = doc["dev_metrics"][task.name]
        table.add_row(task.name, str(metrics["n"]), _metrics(task, metrics))
    console.print(table)
    console.print(f"run directory: {out}")


@app.command("eval")
def zeroprompt_eval(
    run: Annotated[Path, typer.Argument(metavar="RUN", show_default=False,
                                        help="A zeroprompt train run directory (or its multitask.safetensors).")],
    task_name: Annotated[str, typer.Option("--task", help="A built-in task name or a task YAML file.",
                                           show_default=False)],
    init: Annotated[Literal["none", "random", "top1", "weighted"] | None, typer.Option(
        help="The soft prompt of the task: none (the layout without it, where a deep shared component has nothing "
             "to act on), random, top1 (the training task whose inputs are most alike) or weighted (a "
             "similarity-weighted average of the training tasks' prompts). Default: a training task's own prompt, "
             "else random.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The model (default: the one the run was trained with).", show_default=False)] = None,
    eval_file: EvalFile = None,
    data_dir: DataDir = None,
    eval_limit: EvalLimit = None,
    eval_seed: EvalSeed = 0,
    seed: Annotated[int, typer.Option(help="Seed of the random init and of the inputs that top1/weighted compare.")
                    ] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Also write metrics.json and predictions.jsonl here.",
                                             show_default=False)] = None,
) -> None:
    """Evaluate a trained multitask model on a task's validation split, seen or unseen."""
    task = load_task(task_name)
    examples, source = load_split(task, "validation", staged_data(data_dir), eval_file)
    if out is not None:
        RunDir(out, "softprompt zeroprompt eval").prepare(force=True)  # evaluations are rewritten (refuses a file)
    lm = load_lm(model or read_multitask(run)[0]["model"])
    doc = eval_multitask(load_multitask(run, lm), task, examples, init, seed, eval_limit, eval_seed, out,
                         source=source, run=str(run))
    seen = "seen" if doc["seen"] else "unseen"
    console.print(f"{task.name} ({seen}, init {doc['init']}, {doc['sample']['size']} examples): "
                  f"{_metrics(task, doc['metrics'])} (×100)")
    if out is not None:
        console.print(f"written: {out}")
