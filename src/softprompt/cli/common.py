"""What every command shares: the consoles, the options that several commands take, model loading, and
turning command-line strings into library objects (relations, split limits, data directories); and what every
training command runs within: its place among a launcher's processes (``training_process``) and its experiment
tracker (``tracked``).

Commands parse their options and call the library; they do no pipeline work of their own.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import transformers
import typer
from rich.console import Console
from rich.table import Table

from softprompt import distributed
from softprompt.distributed import Precision, Processes
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel, load_model
from softprompt.optimizers import TrainConfig
from softprompt.optimizers.gradient import observe_epochs
from softprompt.paths import shared_data_dir
from softprompt.probing import GEO_RELATIONS, Relation, geo_relation, load_relation, read_templates
from softprompt.progress import show_messages
from softprompt.runs import CONFIG, METRICS, PROMPT
from softprompt.templates import Template
from softprompt.tracking import (
    EpochLog,
    Tracker,
    TrackerKind,
    flat_params,
    history_steps,
    numbers,
    open_tracker,
    require,
)

GEO_PREFIX = "geo:"
# The command line's documented default for the staged datasets, relative to the current directory.
DEFAULT_SHARED_DATA = Path("..", "shared", "data")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DATA_HELP = (
    "The facts: a directory with train/dev/test.jsonl, one JSONL file (used as the test split), or "
    f"geo:NAME for a built-in geography relation ({', '.join(GEO_RELATIONS)}). Rows are "
    '{"sub": ..., "obj": ...} or LAMA\'s {"sub_label": ..., "obj_label": ...}.'
)
Data = Annotated[str, typer.Option("--data", help=DATA_HELP, show_default=False)]
TemplateText = Annotated[str | None, typer.Option(
    "--template", show_default=False,
    help="The template, with [X] for the subject and [Y] for the answer, e.g. '[X] was born in [Y] .'")]
TemplatesFile = Annotated[Path | None, typer.Option(
    "--templates", help="A templates file such as LAMA's relations.jsonl; the entry of --relation is used.",
    show_default=False)]
RelationName = Annotated[str | None, typer.Option(
    "--relation", help="The relation's name (default: the data's file or directory name, or the geo name).",
    show_default=False)]
Model = Annotated[str, typer.Option(
    "--model", help="A bundled model alias, a .gguf file, a local model directory or a Hugging Face id.")]
Out = Annotated[Path, typer.Option("--out", help="The run directory to write.", show_default=False)]
Force = Annotated[bool, typer.Option("--force", help="Overwrite a run already in the run directory.")]
# Training options shared by every command that trains.
Lr = Annotated[float, typer.Option(help="Adam learning rate.")]
BatchSize = Annotated[int, typer.Option(
    min=1, help="Training batch size (facts): the items of one step, of all processes together under accelerate "
                "launch (each takes its share).")]
Epochs = Annotated[int, typer.Option(min=1, help="Maximum number of epochs.")]
Patience = Annotated[int, typer.Option(min=1, help="Stop after this many epochs without a better dev loss.")]
Seed = Annotated[int, typer.Option(help="Seed of the shuffling and of random inits.")]
MaxTrain = Annotated[int | None, typer.Option(min=1, help="Use at most N training facts.")]
MaxDev = Annotated[int | None, typer.Option(min=1, help="Use at most N dev facts.")]
MaxTest = Annotated[int | None, typer.Option(min=1, help="Use at most N test facts.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the interrupted run in --out from its checkpoint (same settings required).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or per-epoch losses.")]


def _installed(kind: TrackerKind | None) -> TrackerKind | None:
    """Refuse a tracker whose library is missing while the options are read, before any work."""
    if kind is not None:
        require(kind)
    return kind


TrackerOption = Annotated[TrackerKind | None, typer.Option(
    "--tracker", callback=_installed, show_default=False,
    help="Also log the run's settings, per-epoch metrics, final metrics and prompt file to TensorBoard or MLflow "
         "(local files, no server; pip install 'softprompt[track]').")]
TrackingDir = Annotated[Path | None, typer.Option(
    "--tracking-dir", help="Where --tracker writes: tensorboard/RUN/ or mlflow.db (default: OUT/tracking).",
    show_default=False)]
PrecisionOption = Annotated[Precision | None, typer.Option(
    "--precision", help="fp32; on a GPU also tf32 (TF32 matrix products) or bf16 (bfloat16 autocast, TF32). Default: "
                        "what accelerate launch --mixed_precision says (bf16 or no), else fp32.", show_default=False)]


def check_resume_force(resume: bool, force: bool) -> None:
    if resume and force:
        raise SoftpromptError("give --resume to continue a run or --force to start over, not both")


def train_config(lr: float, batch_size: int, epochs: int, patience: int, seed: int) -> TrainConfig:
    return TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience, seed=seed)


def load_lm(spec: str, device: str | torch.device | None = None, quiet: bool = False) -> LanguageModel:
    """Load the model, and show the library's progress messages unless ``quiet``."""
    show_messages(not quiet)
    # transformers' weight-loading bars and notes would bury the command's own output.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with console.status(f"loading model {spec} ..."):
        return load_model(spec, device=device)


@dataclass(frozen=True)
class Launch:
    """A training command's process. ``out`` is where it writes its run: --out on the main process, a scratch
    directory on the others (removed when the command ends), so that only one process writes the run directory
    while every process runs the same pipeline; ``device`` is where its model runs (None: the CPU)."""

    processes: Processes
    out: Path
    quiet: bool
    device: torch.device | None


@contextmanager
def training_process(out: Path, quiet: bool, precision: Precision | None,
                     device: str | None = None) -> Iterator[Launch]:
    """Run a training command's body as this process's part: alone, as always; under ``accelerate launch`` (or
    torchrun), as one of several data-parallel processes, on the device Accelerate gives it (unless ``device``
    says otherwise), of which only the main one writes the run directory and prints. ``precision`` (default:
    accelerate launch's) holds for the whole body: training and the final evaluation."""
    processes = distributed.current()
    where = torch.device(device) if device is not None else processes.device
    with ExitStack() as stack:
        target = out
        if not processes.is_main:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"softprompt-process-{processes.rank}-"))
            target = Path(scratch) / out.name
            console.quiet = True  # the command's tables, also after the body
            stack.enter_context(redirect_stdout(stack.enter_context(open(os.devnull, "w"))))  # the library's messages
        stack.enter_context(distributed.precision(precision or distributed.default_precision(), where))
        yield Launch(processes, target, quiet or not processes.is_main, where)
    processes.end()


@contextmanager
def tracked(kind: TrackerKind | None, directory: Path | None, run: Path, resume: bool, name: str | None = None,
            live: bool = True, offset: int = 0, files: Sequence[str] = (PROMPT,)) -> Iterator[None]:
    """Track the run that the block writes to ``run`` (nothing without ``kind``, and nothing on a data-parallel
    run's other processes). The tracker opens at the run's first epoch (with ``live`` off, a search's: at its end),
    so a run that fails before it leaves no tracked run; it logs config.json's settings, each epoch's metrics
    (``live``: as training reports them; else the finished run's history), metrics.json's numbers, and the run's
    ``files`` (its prompt), config.json and metrics.json. ``offset``: see ``tracking.EpochLog``."""
    if kind is None or not distributed.current().is_main:
        yield
        return
    opened: list[Tracker] = []

    def tracker() -> Tracker:
        if not opened:
            opened.append(open_tracker(kind, directory or run / "tracking", name or run.name, run, resume))
            if not opened[0].resumed:
                config = json.loads((run / CONFIG).read_text(encoding="utf-8"))
                opened[0].log_params(flat_params(config | {"processes": distributed.current().world_size}))
        return opened[0]

    try:
        with observe_epochs(EpochLog(tracker, offset)) if live else nullcontext():
            yield
    except BaseException as err:
        if opened:
            opened[0].close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    metrics = json.loads((run / METRICS).read_text(encoding="utf-8"))
    steps = list(history_steps(metrics.get("history", [])))
    if not live:
        for step, line in steps:
            tracker().log_metrics(line, step)
    tracker().log_metrics(numbers({k: v for k, v in metrics.items() if k != "history"}),
                          steps[-1][0] if steps else 0)
    for file in (*files, CONFIG, METRICS):
        if (run / file).is_file():
            tracker().log_file(run / file)
    tracker().close()


def limits(**caps: int | None) -> dict[str, int]:
    """Per-split caps on the number of facts, for the splits that have one."""
    return {split: cap for split, cap in caps.items() if cap is not None}


def staged_data(given: Path | None) -> Path | None:
    """The staged datasets: ``given``, else $SOFTPROMPT_SHARED_DATA, else ../shared/data if it exists."""
    return shared_data_dir(given, DEFAULT_SHARED_DATA)


def relation_from_options(data: str, template: str | None, templates: Path | None, name: str | None) -> Relation:
    """The relation DATA names, with its template checked for well-formedness (not yet for a model)."""
    if data.startswith(GEO_PREFIX):
        geo = geo_relation(data.removeprefix(GEO_PREFIX))
        name = name or geo.name
        if template is None and templates is not None:
            table = read_templates(templates)
            if name not in table:
                raise SoftpromptError(
                    f"{templates} has no template for relation {name!r}; pass --relation with one of its "
                    "relation names, or --template"
                )
            template = table[name]
        relation = Relation(name=name, template=template or geo.template, splits=geo.splits)
    else:
        relation = load_relation(data, template, templates, name)
    Template(relation.template)  # exactly one [X] and one [Y]
    return relation


def relation_name(data: str, relation: str | None) -> str:
    if relation:
        return relation
    if data.startswith(GEO_PREFIX):
        return data.removeprefix(GEO_PREFIX)
    return Path(data).name.removesuffix(".gz").removesuffix(".jsonl")


def metrics_table(relation: str, mode: str, split: str, metrics: Mapping[str, float],
                  candidates: int | None = None) -> Table:
    """One row of P@1, P@10 and MRR; ``candidates``: the answers were ranked among that many candidates."""
    among = f", among {candidates} candidates" if candidates is not None else ""
    table = Table(title=f"{split} metrics (×100{among})")
    for name in ("relation", "prompt", "n", "P@1", "P@10", "MRR"):
        table.add_column(name, justify="left" if name in ("relation", "prompt") else "right")
    table.add_row(relation, mode, str(metrics["n"]),
                  *(f"{100 * metrics[key]:.1f}" for key in ("p@1", "p@10", "mrr")))
    return table
