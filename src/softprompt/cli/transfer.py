"""``softprompt transfer ...``: prompts moved across tasks (as initialisation) and across models (projector, bridge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
import typer
from rich.table import Table

from softprompt.cli.common import (
    BatchSize,
    Epochs,
    Force,
    Lr,
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
from softprompt.cli.task import (
    TASK_CONFIG,
    Calibrate,
    DataDir,
    EvalFile,
    EvalLimit,
    EvalSeed,
    Normalise,
    TrainFile,
    task_and_data,
    train_seeds,
)
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.optimizers import TrainConfig
from softprompt.tasks import TaskSettings, load_task
from softprompt.tasks.run import write_summary
from softprompt.transfer import (
    Projector,
    PromptInit,
    bridge_prompt,
    fit_on_distances,
    fit_on_tasks,
    load_projector,
    project_prompt,
    read_source,
)
from softprompt.transfer.projector import DISTANCE_CONFIG, HIDDEN, pairs_by_task, source_tasks
from softprompt.transfer.projector import TASK_CONFIG as PROJECTOR_TASK_CONFIG
from softprompt.transfer.source import file_sha256

app = typer.Typer(help="Transfer prompts across tasks (as initialisation) and across models (projector, vocabulary "
                       "bridge).", no_args_is_help=True)

TargetModel = Annotated[str, typer.Option("--target-model", help="The model to move the prompt to (an alias, .gguf "
                                          "file, model directory or Hugging Face id).", show_default=False)]
PromptFile = Annotated[Path, typer.Argument(help="A trained soft task prompt, or a task run directory.",
                                            show_default=False)]
NewPrompt = Annotated[Path, typer.Option("--out", help="The prompt file to write (loads with task eval --prompt).",
                                         show_default=False)]


@app.command("init")
def transfer_init(
    sources: Annotated[list[Path], typer.Option(
        "--from", help="A trained task prompt or task run directory of the same model; repeat to start from the "
                       "mean of several.", show_default=False)],
    task_name: Annotated[str, typer.Option("--task", help="The task to train: a built-in name or a task YAML file.",
                                           show_default=False)],
    out: Out,
    model: Annotated[str | None, typer.Option(
        "--model", help="The model (default: the source prompts' model).", show_default=False)] = None,
    kind: Annotated[Literal["soft", "deep"], typer.Option(
        help="soft: train the vectors; deep: keep them and train a perturbation at every layer.")] = "soft",
    shots: Annotated[int | None, typer.Option(min=1, help="Few-shot: k training and k dev examples per class.",
                                              show_default=False)] = None,
    train_limit: Annotated[int | None, typer.Option(
        min=1, help="Train on a stratified sample of N examples (after the dev hold-out).", show_default=False)] = None,
    dev_size: Annotated[int, typer.Option(min=1, help="Training examples held out for early stopping.")
                        ] = TaskSettings.dev_size,
    balance: Annotated[bool, typer.Option("--balance", help="Train on equally many examples of each class.")] = False,
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
    """Train a task prompt that starts from other prompts' vectors (SPoT; Su et al.'s transfer as initialisation).

    The new prompt takes the first source's layout, so it has as many vectors as the sources; the run is a task
    run (as task train writes it) whose config.json also records the sources (init_from: paths and hashes).
    """
    check_resume_force(resume, force)
    init = PromptInit(sources)
    init.check_model(model or init.model)
    task, data_dir = task_and_data(task_name, data_dir)
    settings = TaskSettings(layout=init.layout, length=init.length, kind=kind, init="vocab", normalise=normalise,
                            calibrate=calibrate, shots=shots, train_limit=train_limit, dev_size=dev_size,
                            eval_limit=eval_limit, balance=balance, eval_seed=eval_seed)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience)
    with training_process(out, quiet, precision) as launch:
        root = launch.out
        seeds, docs = train_seeds("softprompt transfer init", task, settings, config, seeds, root,
                                  model or init.model, data_dir, (train_file, eval_file), resume, force, launch.quiet,
                                  init_from=init, identity={"init_from": init.record()}, device=launch.device,
                                  track=lambda o: tracked(tracker, tracking_dir or root / "tracking", o, resume,
                                                          name=str(o.relative_to(root.parent))))
        if len(docs) > 1:
            write_summary(root, task, seeds, docs)
    table = Table(title=f"{task.name}: {kind} prompt from {len(sources)} source prompt(s) (×100)")
    for col in ("seed", *task.metrics, "start dev loss", "best dev loss", "best epoch"):
        table.add_column(col, justify="right")
    for seed, doc in zip(seeds, docs, strict=True):
        table.add_row(str(seed), *("–" if doc["metrics"][m] is None else f"{100 * doc['metrics'][m]:.1f}"
                                   for m in task.metrics),
                      f"{doc['history'][0]['dev_loss']:.4f}", f"{doc['best_dev_loss']:.4f}", str(doc["best_epoch"]))
    console.print(table)
    console.print(f"run directory: {out}")


@app.command("fit-projector")
def fit_projector(
    runs: Annotated[list[Path], typer.Option(
        "--runs", help="A task run directory or prompt file of the source model; repeat for more prompts and tasks.",
        show_default=False)],
    target_model: TargetModel,
    out: Annotated[Path, typer.Option("--out", help="The projector file to write (.safetensors).",
                                      show_default=False)],
    source_model: Annotated[str | None, typer.Option(
        "--source-model", help="The model the --runs prompts were trained on (checked; default: theirs).",
        show_default=False)] = None,
    mode: Annotated[Literal["task", "distance"], typer.Option(
        help="task: train through the target model on the runs' tasks; distance: map the runs' prompts onto "
             "--target-runs prompts of the same tasks.")] = "task",
    target_runs: Annotated[list[Path] | None, typer.Option(
        "--target-runs", help="Distance mode: a task run or prompt of the target model; repeat.",
        show_default=False)] = None,
    tasks: Annotated[list[str] | None, typer.Option(
        "--task", help="A task of the runs (built-in name or YAML file), found by its name; repeat. Default: the "
                       "built-in task each prompt names.", show_default=False)] = None,
    hidden: Annotated[int, typer.Option(min=1, help="The projector's hidden layer (Su et al.: 768).")] = HIDDEN,
    train_limit: Annotated[int | None, typer.Option(
        min=1, help="Task mode: train on a stratified sample of N examples per task.", show_default=False)] = None,
    dev_size: Annotated[int, typer.Option(min=1, help="Task mode: examples per task held out for early stopping.")
                        ] = TaskSettings.dev_size,
    normalise: Normalise = False,
    data_dir: DataDir = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default: 1e-3).", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Batch size (default: 16 examples; distance mode 64 pairs).", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Maximum epochs (default: 20; distance mode 500).", show_default=False)] = None,
    patience: Annotated[int | None, typer.Option(
        min=1, help="Epochs without a better dev loss before stopping (default: 5; distance mode 50).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the projector's initial weights, the shuffle and the splits.")
                    ] = 0,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Fit a cross-model projector (Su et al.: Linear → hidden → LeakyReLU → Linear) from prompts of the source model
    to the target model's input space. Task mode checkpoints every epoch next to --out (continue with --resume)."""
    check_resume_force(resume, force)
    if mode == "distance" and not target_runs:
        raise SoftpromptError("--mode distance needs --target-runs: trained prompts of the target model for the same "
                              "tasks")
    if mode == "task" and target_runs:
        raise SoftpromptError("--target-runs are for --mode distance; task mode trains through --target-model")
    checkpoint = out.with_name(out.name + ".checkpoint")
    if out.exists() and not force:
        raise SoftpromptError(f"{out} already exists; pass --force to overwrite it, or choose another --out")
    if checkpoint.exists() and not (force or resume):
        raise SoftpromptError(f"{checkpoint} holds an interrupted fit; continue it with --resume, or pass --force")
    if force:
        checkpoint.unlink(missing_ok=True)
    sources = [read_source(r) for r in runs]
    models = sorted({s.model for s in sources})
    if len(models) > 1 or (source_model is not None and models != [source_model]):
        raise SoftpromptError(f"the --runs prompts were trained on {', '.join(models)}"
                              f"{'' if source_model is None else f', not only --source-model {source_model}'}; give "
                              "prompts of one source model")
    defaults = PROJECTOR_TASK_CONFIG if mode == "task" else DISTANCE_CONFIG
    config = TrainConfig(lr=lr or defaults.lr, batch_size=batch_size or defaults.batch_size,
                         max_epochs=epochs or defaults.max_epochs, patience=patience or defaults.patience, seed=seed)
    torch.manual_seed(seed)
    if mode == "distance":
        targets = [read_source(r) for r in target_runs or []]
        if wrong := [t for t in targets if t.model != target_model]:
            raise SoftpromptError(f"{wrong[0].path} was trained for model '{wrong[0].model}', not --target-model "
                                  f"{target_model}")
        pairs = pairs_by_task(sources, targets)
        projector = Projector(sources[0].length, sources[0].hidden_size, targets[0].hidden_size, hidden,
                              source_model=models[0], target_model=target_model)
        result = fit_on_distances(projector, pairs, config, progress=not quiet)
    else:
        if data_dir is not None and not data_dir.is_dir():
            raise SoftpromptError(f"--data-dir {data_dir} is not a directory")
        settings = TaskSettings(train_limit=train_limit, dev_size=dev_size)
        items = source_tasks(sources, [load_task(t) for t in tasks or []], settings, seed, staged_data(data_dir))
        lm = load_lm(target_model, quiet=quiet)
        projector = Projector(sources[0].length, sources[0].hidden_size, lm.hidden_size, hidden,
                              source_model=models[0], target_model=lm.name)
        result = fit_on_tasks(projector, Engine(lm), items, config, normalise, checkpoint, resume, not quiet)
    projector.save(out)
    checkpoint.unlink(missing_ok=True)
    console.print(f"{mode} fit: dev loss {result.history[0]['dev_loss']:.4f} at the start, "
                  f"{result.best_dev_loss:.4f} at epoch {result.best_epoch}")
    console.print(f"written: {out}")


@app.command("project")
def project(
    prompt: PromptFile,
    projector: Annotated[Path, typer.Option("--projector", help="A projector file (transfer fit-projector).",
                                            show_default=False)],
    target_model: TargetModel,
    out: NewPrompt,
) -> None:
    """Map a prompt into another model's input space with a fitted projector."""
    source = read_source(prompt)
    mapper = load_projector(projector)
    lm = load_lm(target_model)
    new = project_prompt(source, mapper, lm, projector)
    new.save(out, extra={"transfer": {"projector": str(projector), "projector_sha256": file_sha256(projector),
                                      "source": source.record()}})
    console.print(f"written: {out} ({new.length} vectors for model {lm.name})")


@app.command("bridge")
def bridge(
    prompt: PromptFile,
    target_model: TargetModel,
    out: NewPrompt,
    source_model: Annotated[str | None, typer.Option(
        "--source-model", help="The prompt's model, whose vocabulary reads it (default: the one its file names).",
        show_default=False)] = None,
    length: Annotated[int | None, typer.Option(
        min=1, help="Vectors of the new prompt (default: the source's); the bridged tokens are cycled or cut to it.",
        show_default=False)] = None,
) -> None:
    """Move a prompt through the two vocabularies: each vector's nearest source token (cosine), the text they
    spell, that text tokenised and embedded by the target model. No fitting, no data."""
    source = read_source(prompt)
    source_lm = load_lm(source_model or source.model)
    target_lm = load_lm(target_model)
    new, bridged = bridge_prompt(source, source_lm, target_lm, length)
    new.save(out, extra={"transfer": {"bridge": {"source_ids": bridged.source_ids, "target_ids": bridged.target_ids},
                                      "source": source.record()}})
    console.print(f"reads as: {bridged.text!r} ({len(bridged.source_ids)} source tokens, {len(bridged.target_ids)} "
                  f"target tokens)")
    console.print(f"written: {out} ({new.length} vectors for model {target_lm.name})")
