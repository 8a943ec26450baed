"""The ``softprompt`` command line: ``probe train``, ``probe eval``, ``mixture train``, ``mixture show``,
``demo``, ``compare`` and the ``task`` commands (in cli_tasks).

User errors (a SoftpromptError, or a missing or unreadable path) end any command with one red line on
stderr and exit code 2, like a usage error; no traceback.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import transformers
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from softprompt.data import GEO_RELATIONS, Relation, geo_relation, load_relation, read_templates, shared_data_dir
from softprompt.data.prompt_sets import prompt_set, prompt_set_from_file
from softprompt.demo import (
    DEMO_CONFIG,
    DEMO_LIMITS,
    QUICK_CONFIG,
    QUICK_LIMITS,
    run_demo,
    summary_table,
)
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.mixture import WEIGHTS_LR, MixtureSettings, mixture_settings, run_mixture
from softprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from softprompt.probe import (
    EncodedRelation,
    changed_settings,
    encode_relation,
    evaluate,
    make_prompt,
    run_probe,
    run_settings,
)
from softprompt.prompts import load_prompt, read_prompt_file
from softprompt.significance import METRICS, Comparison, Metric, compare_runs
from softprompt.templates import Template
from softprompt.train import TrainConfig
from softprompt.visualise import read_mixture, save_html, save_png

GEO_PREFIX = "geo:"
USER_ERRORS = (SoftpromptError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class _Root(TyperGroup):
    """The top-level command group: every command runs inside its ``invoke``, so this is where user
    errors become one line and exit code 2 (for the console script and for CliRunner alike)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            if isinstance(error, OSError) and error.filename is not None:
                message = f"{error.filename}: {error.strerror}"
            else:
                message = " ".join(str(error).split())  # one line, whatever the message holds
            # soft_wrap keeps the line whole (paths, "line 2") at any terminal width.
            err_console.print(Text("error: ", style="bold red") + Text(message, style="red"), soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Checkpoints are written after every epoch, so little is lost; say how to pick up again.
            err_console.print("interrupted; continue with the same command (probe train: add --resume)",
                              style="yellow", soft_wrap=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Root,
    help="Soft prompts for knowledge probing of frozen language models (Qin & Eisner, 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs
)
probe_app = typer.Typer(help="Probe a relation's facts: train a prompt, or evaluate one.",
                        no_args_is_help=True)
app.add_typer(probe_app, name="probe")

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


def _load_relation(data: str, template: str | None, templates: Path | None, name: str | None) -> Relation:
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


def _check_run_dir(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse to write into a directory that holds a run, unless told to overwrite or resume it."""
    if out.exists() and not out.is_dir():
        raise SoftpromptError(f"--out {out} is a file; the run directory must be a directory")
    if force or resume:
        return
    if (out / "metrics.json").is_file():
        raise SoftpromptError(
            f"{out} already holds a finished run (metrics.json); pass --force to overwrite it, "
            "or choose another --out"
        )
    if (out / "checkpoint.safetensors").is_file():
        raise SoftpromptError(
            f"{out} holds an interrupted training run; continue it with probe train --resume, "
            "or pass --force to overwrite it"
        )


def _load_model(spec: str, device: str | None = None) -> LanguageModel:
    # transformers' weight-loading bars and notes would bury the command's own output.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with console.status(f"loading model {spec} ..."):
        return load_model(spec, device=device)


def _limits(**caps: int | None) -> dict[str, int]:
    return {split: cap for split, cap in caps.items() if cap is not None}


def _require(data: EncodedRelation, splits: tuple[str, ...], hint: str) -> None:
    for split in splits:
        if not data.splits[split]:
            raise SoftpromptError(
                f"relation {data.name}: the {split} split has no usable facts "
                f"({data.dropped[split]} dropped because their answer is not a single token); {hint}"
            )


def _print_facts(data: EncodedRelation) -> None:
    used = ", ".join(f"{split} {len(examples)}" for split, examples in data.splits.items())
    dropped = ", ".join(f"{split} {n}" for split, n in data.dropped.items())
    console.print(f"facts used: {used}")
    console.print(f"facts dropped because their answer is not a single token: {dropped}")


def _metrics_table(relation: str, mode: str, split: str, metrics: Mapping[str, float]) -> Table:
    table = Table(title=f"{split} metrics (×100)")
    for name in ("relation", "prompt", "n", "P@1", "P@10", "MRR"):
        table.add_column(name, justify="left" if name in ("relation", "prompt") else "right")
    table.add_row(relation, mode, str(metrics["n"]),
                  *(f"{100 * metrics[key]:.1f}" for key in ("p@1", "p@10", "mrr")))
    return table


@probe_app.command("train")
def probe_train(
    data: Data,
    out: Out,
    template: TemplateText = None,
    templates: TemplatesFile = None,
    relation: RelationName = None,
    model: Model = DEFAULT_MODEL,
    mode: Annotated[Literal["soft", "deep"], typer.Option(
        help="soft: one trainable vector per template token; deep: also a perturbation at every layer."
    )] = "soft",
    init: Annotated[Literal["template", "random"], typer.Option(
        help="Start from the template's word embeddings, or from random draws shaped like them."
    )] = "template",
    lr: Lr = TrainConfig.lr,
    batch_size: BatchSize = TrainConfig.batch_size,
    epochs: Epochs = TrainConfig.max_epochs,
    patience: Patience = TrainConfig.patience,
    seed: Seed = TrainConfig.seed,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    max_test: MaxTest = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train a soft or deep prompt on the train split (early stopping on dev) and score it on test.

    Facts whose answer is not a single token for the model are dropped (and counted). The run directory
    gets config.json, metrics.json, predictions.jsonl, prompt.safetensors and checkpoint.safetensors.
    """
    if resume and force:
        raise typer.BadParameter("give --resume to continue a run or --force to start over, not both",
                                 param_hint="'--resume' / '--force'")
    rel = _load_relation(data, template, templates, relation)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience, seed=seed)
    limits = _limits(train=max_train, dev=max_dev, test=max_test)
    _check_run_dir(out, force, resume)
    lm = _load_model(model)
    encoded = encode_relation(rel, lm, limits)  # also checks that the template suits the model
    _require(encoded, ("train", "dev", "test"),
             "training needs facts in train, dev and test (a split directory)")
    if resume:
        changed = changed_settings(out, run_settings(lm, rel, mode, init, config, limits))
        if changed:
            raise SoftpromptError(
                f"{out} was started with other settings ({', '.join(changed)}); resume with the same "
                "options, or pass --force instead of --resume to start over"
            )
    _print_facts(encoded)
    started = time.monotonic()
    doc = run_probe(lm, rel, out, mode=mode, init=init, config=config, limits=limits, resume=resume,
                    progress=not quiet)
    console.print(_metrics_table(rel.name, mode, "test", doc["test"]))
    console.print(f"best epoch {doc['best_epoch']} of {len(doc['history']) - 1}, "
                  f"{time.monotonic() - started:.0f} s; run directory: {out}")


@probe_app.command("eval")
def probe_eval(
    data: Data,
    out: Out,
    prompt: Annotated[Path | None, typer.Option(
        help="A prompt file, or a run directory holding prompt.safetensors; without it, the template "
             "itself is evaluated as a hard prompt. A saved prompt brings its own template.",
        show_default=False)] = None,
    template: TemplateText = None,
    templates: TemplatesFile = None,
    relation: RelationName = None,
    model: Model = DEFAULT_MODEL,
    split: Annotated[Literal["test", "dev", "train"], typer.Option(help="The split to score.")] = "test",
    max_facts: Annotated[int | None, typer.Option("--max", min=1, help="Score at most N facts.")] = None,
    force: Force = False,
) -> None:
    """Score a saved prompt, or the hard template, on one split; write config, metrics and predictions."""
    meta = read_prompt_file(prompt)[0] if prompt is not None else None
    if meta is not None and template is None and templates is None:
        rel = _load_relation(data, meta["template"], None, relation)
    else:
        rel = _load_relation(data, template, templates, relation)
        if meta is not None and rel.template != meta["template"]:
            raise SoftpromptError(
                f"{prompt} was trained with the template {meta['template']!r}, not {rel.template!r}; "
                "a saved prompt brings its own template, so leave out --template/--templates"
            )
    _check_run_dir(out, force)
    lm = _load_model(model)
    loaded = load_prompt(prompt, lm) if prompt is not None else None
    limits = _limits(**{split: max_facts})
    encoded = encode_relation(rel, lm, limits)
    _require(encoded, (split,), "choose another --split, or data with single-token answers")
    scored = loaded or make_prompt("hard", encoded.encoder)
    metrics, rows = evaluate(Engine(lm), scored, encoded, split)
    write_json(out / "config.json", {
        "model": lm.name, "relation": rel.name, "template": rel.template, "mode": scored.mode,
        "init": scored.init, "prompt": str(prompt) if prompt is not None else None, "split": split,
        "limits": limits, "examples": {split: len(encoded.splits[split])},
        "dropped_multi_token": encoded.dropped,
    })
    write_jsonl(out / "predictions.jsonl", rows)
    # metrics.json last: its presence marks the run as finished.
    write_json(out / "metrics.json", {"relation": rel.name, "mode": scored.mode, "init": scored.init,
                                      split: metrics, "dropped_multi_token": encoded.dropped})
    console.print(f"facts dropped because their answer is not a single token: {encoded.dropped[split]}")
    console.print(_metrics_table(rel.name, scored.mode, split, metrics))
    console.print(f"run directory: {out}")


DEMO_HELP = f"""Probe the geography relations ({", ".join(GEO_RELATIONS)}) with manual, soft and deep prompts.

Prints test P@1, P@10 and MRR (×100) per relation and prompt, with a macro-average, and writes the table
to OUT/summary.md. Demo settings: lr {DEMO_CONFIG.lr:g}, batch {DEMO_CONFIG.batch_size}, at most
{DEMO_CONFIG.max_epochs} epochs, patience {DEMO_CONFIG.patience}, at most {DEMO_LIMITS["train"]} train,
{DEMO_LIMITS["dev"]} dev and {DEMO_LIMITS["test"]} test facts per relation (about 4 minutes on 2 CPU cores
with SmolLM2-135M). Rerunning reuses finished runs and resumes interrupted ones.
"""


@app.command(help=DEMO_HELP)
def demo(
    model: Model = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Where the runs and summary.md go.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help=(
        f"Smoke test: at most {QUICK_LIMITS['train']} train, {QUICK_LIMITS['dev']} dev and "
        f"{QUICK_LIMITS['test']} test facts, {QUICK_CONFIG.max_epochs} epochs."))] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Redo runs in --out that were made with other settings, instead of stopping."
    )] = False,
) -> None:
    started = time.monotonic()
    lm = _load_model(model)
    config, limits = (QUICK_CONFIG, QUICK_LIMITS) if quick else (DEMO_CONFIG, DEMO_LIMITS)
    results = run_demo(lm, out, config=config, limits=limits, force=force, console=console)
    console.print(summary_table(results, title=f"{lm.name}: test metrics (×100)"))
    console.print(f"summary: {out / 'summary.md'}  ({time.monotonic() - started:.0f} s)")


mixture_app = typer.Typer(help="Mixtures of prompts (Qin & Eisner §3.3–3.5): train one, or show what it learned.",
                          no_args_is_help=True)
app.add_typer(mixture_app, name="mixture")

PROMPTS_HELP = (
    "The prompt set: sin (the LAMA template), par (LPAQA paraphrases), min (LPAQA mined), ran (mined prompts "
    "with random vectors), pararel or omcs, read from --prompt-root for the relation; or a file of templates "
    '(JSONL with "template" per line, or one template per text line).'
)


def _relation_name(data: str, relation: str | None) -> str:
    if relation:
        return relation
    if data.startswith(GEO_PREFIX):
        return data.removeprefix(GEO_PREFIX)
    return Path(data).name.removesuffix(".gz").removesuffix(".jsonl")


@mixture_app.command("train")
def mixture_train(
    data: Data,
    out: Out,
    prompts: Annotated[str, typer.Option("--prompts", help=PROMPTS_HELP, show_default=False)],
    relation: RelationName = None,
    dataset: Annotated[Literal["trex", "google_re", "conceptnet"], typer.Option(
        help="Whose prompt files --prompts names (T-REx, Google-RE or ConceptNet).")] = "trex",
    prompt_root: Annotated[Path | None, typer.Option(
        help="The staged data holding the prompt sets (default: $SOFTPROMPT_SHARED_DATA or ../shared/data).",
        show_default=False)] = None,
    model: Model = DEFAULT_MODEL,
    mode: Annotated[Literal["hard", "soft", "deep"], typer.Option(
        help="The component prompts: hard (only mixture weights learn), soft, or deep.")] = "soft",
    init: Annotated[Literal["template", "random"] | None, typer.Option(
        help="Initialise soft vectors from the words or at random (default: random for ran, else template).",
        show_default=False)] = None,
    method: Annotated[Literal["gradient", "em"], typer.Option(
        help="Gradient descent on the mixture's log-loss, or EM (posteriors per epoch, gradient M steps).")
    ] = "gradient",
    tune: Annotated[Literal["both", "weights", "prompts", "none"], typer.Option(
        help="What learns: everything, only the mixture weights, only the prompts, or nothing (score the "
             "initial mixture).")] = "both",
    data_dependent: Annotated[bool, typer.Option(
        "--data-dependent", help="Weight prompts per query by p(t | r) p(x | t)^(1/T), with T learned.")] = False,
    top_k: Annotated[int | None, typer.Option(
        min=1, help="Train only the K most useful prompts, chosen on dev before training (cost grows with K, "
                    "not with the set's size).", show_default=False)] = None,
    select: Annotated[Literal["weight", "greedy"], typer.Option(
        help="How --top-k picks prompts from their initial dev likelihoods: highest EM-fitted mixture weight, or "
             "greedy forward selection of the prompts that most raise the mixture's likelihood.")] = "weight",
    prune_after: Annotated[int, typer.Option(
        min=0, help="Train the whole mixture for this many epochs before --top-k prunes it, so the prompts are "
                    "judged after some tuning rather than as initialised (0: prune before training).")] = 0,
    sparse_k: Annotated[int | None, typer.Option(
        min=1, help="Backpropagate only through each fact's K prompts of highest posterior (the others are "
                    "scored without gradients): a step costs about a third as much per extra prompt.",
        show_default=False)] = None,
    sparse_m: Annotated[int | None, typer.Option(
        min=1, help="Backpropagate also (or, without --sparse-k, only) through each prompt's M facts of highest "
                    "posterior in the batch, so that every prompt keeps training.", show_default=False)] = None,
    sparse_draw: Annotated[Literal["top", "sample"], typer.Option(
        help="How --sparse-m picks each prompt's facts: its M most probable, or M drawn by posterior and "
             "importance-weighted, so each prompt's gradient is an unbiased estimate of the full mixture's.")] = "top",
    answer_first: Annotated[Literal["reorder", "skip", "error"], typer.Option(
        help="Causal LMs: move [Y] of answer-first templates to the end, leave them out, or stop.")] = "reorder",
    max_rows: Annotated[int, typer.Option(
        min=1, help="Most sequences in one forward pass (memory bound; results do not depend on it).")] = 512,
    device: Annotated[str | None, typer.Option(help="Run the model there, e.g. cuda.", show_default=False)] = None,
    weights_lr: Annotated[float, typer.Option(
        help="Adam learning rate of the mixture weights (and temperature); --lr is the prompts'.")] = WEIGHTS_LR,
    lr: Lr = TrainConfig.lr,
    batch_size: BatchSize = TrainConfig.batch_size,
    epochs: Epochs = TrainConfig.max_epochs,
    patience: Patience = TrainConfig.patience,
    seed: Seed = TrainConfig.seed,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    max_test: MaxTest = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train a mixture of prompts for one relation and score it on test.

    Facts whose answer is not a single token are dropped (and counted). The run directory gets
    config.json, metrics.json (with mixture weights and the effective number of prompts),
    predictions.jsonl (with each fact's most responsible prompts) and prompt.safetensors.
    """
    if resume and force:
        raise typer.BadParameter("give --resume to continue a run or --force to start over, not both",
                                 param_hint="'--resume' / '--force'")
    name = _relation_name(data, relation)
    if Path(prompts).is_file():
        pset = prompt_set_from_file(prompts, init or "template")
    else:
        root = prompt_root or shared_data_dir()
        if root is None:
            raise SoftpromptError(f"--prompts {prompts} names a prompt set, but no --prompt-root was given and "
                                  "../shared/data does not exist; pass --prompt-root or a file of templates")
        pset = prompt_set(prompts, name, root, dataset)
        if init is not None:
            pset = dataclasses.replace(pset, init=init)
    rel = _load_relation(data, pset.templates[0], None, name)
    settings = MixtureSettings(pset.name, pset.templates, pset.init, mode, method, tune, data_dependent, top_k,
                               answer_first, max_rows, weights_lr, select, prune_after, sparse_k,
                               sparse_m, sparse_draw)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_epochs=epochs, patience=patience, seed=seed)
    limits = _limits(train=max_train, dev=max_dev, test=max_test)
    _check_run_dir(out, force, resume)
    lm = _load_model(model, device)
    if resume:
        changed = changed_settings(out, mixture_settings(lm, rel, settings, config, limits))
        if changed:
            raise SoftpromptError(f"{out} was started with other settings ({', '.join(changed)}); resume with the "
                                  "same options, or pass --force instead of --resume to start over")
    started = time.monotonic()
    doc = run_mixture(lm, rel, settings, out, config, limits, resume=resume, progress=not quiet)
    report = doc["prompt_set"]
    console.print(f"prompts: {report['total']} in the set, {report['reordered']} reordered to end in [Y], "
                  f"{report['skipped']} skipped, {report['duplicates']} duplicates; {doc['num_prompts']} used")
    console.print(_metrics_table(rel.name, f"mixture ({mode})", "test", doc["test"]))
    console.print(f"effective number of prompts 2^H = {doc['effective_prompts']:.2f}; "
                  f"{time.monotonic() - started:.0f} s; run directory: {out}")


@mixture_app.command("show")
def mixture_show(
    run: Annotated[Path, typer.Argument(help="A mixture run directory, or its prompt.safetensors.",
                                        show_default=False)],
    model: Model = DEFAULT_MODEL,
    png: Annotated[Path | None, typer.Option(help="Write the figure here (default: RUN/mixture.png).",
                                             show_default=False)] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write the HTML fragment here (default: RUN/mixture.html).", show_default=False)] = None,
    top: Annotated[int, typer.Option(min=1, help="Draw this many of the heaviest prompts.")] = 12,
) -> None:
    """Show a trained mixture: each prompt's weight, its words and the nearest word to each tuned vector."""
    path = run / "prompt.safetensors" if run.is_dir() else run
    meta = read_prompt_file(path)[0]
    if meta["mode"] != "mixture":
        raise SoftpromptError(f"{path} holds a {meta['mode']} prompt, not a mixture; train one with "
                              "softprompt mixture train")
    lm = _load_model(model)
    mixture = load_prompt(path, lm)
    readings = read_mixture(mixture)
    title = f"{meta.get('relation', '')} ({meta['component_mode']}, 2^H = {meta['effective_prompts']:.2f})"
    table = Table(title=title)
    for col in ("weight", "prompt", "nearest words (p(w|v))", "‖v‖/‖v0‖"):
        table.add_column(col)
    for r in readings[:top]:
        table.add_row(f"{r.weight:.3f}", r.source, " ".join(t.nearest_dot for t in r.tokens),
                      " ".join(f"{t.norm_ratio:.2f}" for t in r.tokens))
    console.print(table)
    folder = path.parent
    html_path, png_path = html_out or folder / "mixture.html", png or folder / "mixture.png"
    save_html(readings, html_path, title)
    save_png(readings, png_path, title, top)
    console.print(f"written: {html_path}, {png_path}")


COMPARE_HELP = """Is one probing run significantly better than another? Paired tests on the same test facts.

RUN_A and RUN_B are run directories written by `softprompt probe train/eval`, their predictions.jsonl files,
or directory trees of runs (every predictions.jsonl under them, e.g. one run per relation). Both must have
scored exactly the same facts (relation, subject, answer).

Prints, per metric, both macro-averages over relations and their difference (×100) with a paired bootstrap
interval at confidence 1 - --alpha (how close two runs are, e.g. whether a cheaper run is within a point of
another: the interval's lower end above -1), the p-value of a paired permutation test on the macro-average
difference, the p-value of an exact sign test on the per-fact scores, and B's wins/losses/ties. The run
that is significantly better under the permutation test (p < --alpha) is shown in bold, as the paper
boldfaces it (Qin & Eisner, 2021: p < 0.02).
"""


class MetricName(StrEnum):
    """The --metric choices (typer takes a list of an Enum, not of a Literal)."""

    P1 = "p@1"
    P10 = "p@10"
    MRR = "mrr"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


def _comparison_table(result: Comparison) -> Table:
    first = result.metrics[0]
    table = Table(title=f"A: {result.run_a}   B: {result.run_b}\n{first.n_examples} test facts, "
                        f"{first.n_relations} relations; macro-averages (×100)")
    for name in ("metric", "A", "B", "B−A", f"{100 * (1 - result.alpha):g}% interval", "p permutation", "p sign",
                 "B W/L/T"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for m in result.metrics:
        a = Text(f"{100 * m.macro_a:.1f}", style="bold" if m.better == "A" else "")
        b = Text(f"{100 * m.macro_b:.1f}", style="bold" if m.better == "B" else "")
        low, high = m.interval
        table.add_row(m.metric.upper(), a, b, f"{100 * m.difference:+.1f}", f"[{100 * low:+.1f}, {100 * high:+.1f}]",
                      _p_value(m.p_permutation),
                      _p_value(m.p_sign), f"{m.wins}/{m.losses}/{m.ties}")
    return table


@app.command(help=COMPARE_HELP)
def compare(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", help="The first run (A).", show_default=False)],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B", help="The second run (B).", show_default=False)],
    metric: Annotated[list[MetricName] | None, typer.Option(
        "--metric", help="A metric to test; repeat for several (default: all of p@1, p@10, mrr).",
        show_default=False)] = None,
    permutations: Annotated[int, typer.Option(
        min=1, help="Random permutations of the permutation test (the smallest p is 1/(N+1)).")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the permutations.")] = 0,
    alpha: Annotated[float, typer.Option(
        help="Significance level, between 0 and 1: below it, the better run is shown in bold.")] = 0.02,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result to this JSON file.", show_default=False)] = None,
) -> None:
    metrics = [cast(Metric, name.value) for name in metric] if metric else METRICS
    result = compare_runs(run_a, run_b, metrics=metrics, permutations=permutations, seed=seed,
                          alpha=alpha)
    console.print(_comparison_table(result))
    console.print(result.verdict())
    if json_out is not None:
        write_json(json_out, dataclasses.asdict(result))
        console.print(f"written: {json_out}")


# The task commands live in their own module, which builds on the shared options above.
from softprompt.cli_tasks import task_app  # noqa: E402

app.add_typer(task_app, name="task")

from softprompt.cli_analysis import analyze_app, report  # noqa: E402

app.add_typer(analyze_app, name="analyze")
app.command()(report)


def main() -> None:
    """Entry point of the ``softprompt`` console script."""
    app(prog_name="softprompt")
