"""What every command shares: the consoles, the options that several commands take, model loading, and
turning command-line strings into library objects (relations, split limits, data directories).

Commands parse their options and call the library; they do no pipeline work of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import transformers
import typer
from rich.console import Console
from rich.table import Table

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel, load_model
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.probing import GEO_RELATIONS, Relation, geo_relation, load_relation, read_templates
from softprompt.progress import show_messages
from softprompt.templates import Template

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
BatchSize = Annotated[int, typer.Option(min=1, help="Training batch size (facts).")]
Epochs = Annotated[int, typer.Option(min=1, help="Maximum number of epochs.")]
Patience = Annotated[int, typer.Option(min=1, help="Stop after this many epochs without a better dev loss.")]
Seed = Annotated[int, typer.Option(help="Seed of the shuffling and of random inits.")]
MaxTrain = Annotated[int | None, typer.Option(min=1, help="Use at most N training facts.")]
MaxDev = Annotated[int | None, typer.Option(min=1, help="Use at most N dev facts.")]
MaxTest = Annotated[int | None, typer.Option(min=1, help="Use at most N test facts.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the interrupted run in --out from its checkpoint (same settings required).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or per-epoch losses.")]


def check_resume_force(resume: bool, force: bool) -> None:
    if resume and force:
        raise SoftpromptError("give --resume to continue a run or --force to start over, not both")


def train_config(lr: float, batch_size: int, epochs: int, patience: int, seed: int) -> TrainConfig:
    return TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience, seed=seed)


def load_lm(spec: str, device: str | None = None, quiet: bool = False) -> LanguageModel:
    """Load the model, and show the library's progress messages unless ``quiet``."""
    show_messages(not quiet)
    # transformers' weight-loading bars and notes would bury the command's own output.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with console.status(f"loading model {spec} ..."):
        return load_model(spec, device=device)


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
