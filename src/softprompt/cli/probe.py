"""``softprompt probe train`` and ``probe eval``: one prompt for one relation's facts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from softprompt.cli.common import (
    BatchSize,
    Data,
    Epochs,
    Force,
    Lr,
    MaxDev,
    MaxTest,
    MaxTrain,
    Model,
    Out,
    Patience,
    Quiet,
    RelationName,
    Resume,
    Seed,
    TemplatesFile,
    TemplateText,
    check_resume_force,
    console,
    limits,
    load_lm,
    metrics_table,
    relation_from_options,
    train_config,
)
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL
from softprompt.optimizers import TrainConfig
from softprompt.probing import EncodedRelation, encode_relation, eval_probe, run_probe
from softprompt.probing.probe import run_settings
from softprompt.prompts import PROMPT_KINDS, TemplatePrompt, load_prompt, read_prompt_file
from softprompt.runs import RunDir

app = typer.Typer(help="Probe a relation's facts: train a prompt, or evaluate one.", no_args_is_help=True)


def print_facts(data: EncodedRelation) -> None:
    used = ", ".join(f"{split} {len(examples)}" for split, examples in data.splits.items())
    dropped = ", ".join(f"{split} {n}" for split, n in data.dropped.items())
    console.print(f"facts used: {used}")
    console.print(f"facts dropped because their answer is not a single token: {dropped}")


@app.command("train")
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
    check_resume_force(resume, force)
    rel = relation_from_options(data, template, templates, relation)
    config = train_config(lr, batch_size, epochs, patience, seed)
    caps = limits(train=max_train, dev=max_dev, test=max_test)
    run = RunDir(out, "softprompt probe train")
    run.prepare(force, resume)
    lm = load_lm(model, quiet=quiet)
    encoded = encode_relation(rel, lm, caps)  # also checks that the template suits the model
    run.prepare(force, resume, run_settings(lm, rel, mode, init, config, caps))
    print_facts(encoded)
    started = time.monotonic()
    doc = run_probe(lm, rel, out, mode=mode, init=init, config=config, limits=caps, resume=resume,
                    progress=not quiet, data=encoded)
    console.print(metrics_table(rel.name, mode, "test", doc["test"]))
    console.print(f"best epoch {doc['best_epoch']} of {len(doc['history']) - 1}, "
                  f"{time.monotonic() - started:.0f} s; run directory: {out}")


@app.command("eval")
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
    if meta is not None and not issubclass(PROMPT_KINDS.get(meta["kind"], TemplatePrompt), TemplatePrompt):
        raise SoftpromptError(f"{prompt} holds a {meta['kind']} prompt; probe eval scores hard, soft and deep prompts "
                              "(score a mixture with mixture train --tune none, a task prompt with task eval)")
    if meta is not None and template is None and templates is None:
        rel = relation_from_options(data, meta["template"], None, relation)
    else:
        rel = relation_from_options(data, template, templates, relation)
        if meta is not None and rel.template != meta["template"]:
            raise SoftpromptError(
                f"{prompt} was trained with the template {meta['template']!r}, not {rel.template!r}; "
                "a saved prompt brings its own template, so leave out --template/--templates"
            )
    RunDir(out, "softprompt probe eval").prepare(force)
    lm = load_lm(model)
    loaded = load_prompt(prompt, lm) if prompt is not None else None
    doc, encoded = eval_probe(lm, rel, out, loaded, prompt, split, limits(**{split: max_facts}))
    console.print(f"facts dropped because their answer is not a single token: {encoded.dropped[split]}")
    console.print(metrics_table(rel.name, doc["mode"], split, doc[split]))
    console.print(f"run directory: {out}")
