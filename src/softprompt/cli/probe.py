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
    PrecisionOption,
    Quiet,
    RelationName,
    Resume,
    Seed,
    TemplatesFile,
    TemplateText,
    TrackerOption,
    TrackingDir,
    check_resume_force,
    console,
    limits,
    load_lm,
    metrics_table,
    relation_from_options,
    tracked,
    train_config,
    training_process,
)
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL
from softprompt.optimizers import TrainConfig
from softprompt.probing import EncodedRelation, encode_relation, eval_probe, run_probe
from softprompt.probing.candidates import CandidateOptions
from softprompt.probing.probe import resume_settings, run_settings
from softprompt.prompts import PROMPT_KINDS, TemplatePrompt, load_prompt, read_prompt_file
from softprompt.runs import DROPPED, RunDir

app = typer.Typer(help="Probe a relation's facts: train a prompt, or evaluate one.", no_args_is_help=True)

Answers = Annotated[Literal["vocabulary", "candidates"], typer.Option(
    "--answers", help="vocabulary: rank the answer over the whole vocabulary at one position (the paper's protocol; "
                      "facts whose answer is several tokens are dropped); candidates: rank it among candidate "
                      "answers of any length, scored by their tokens' summed log-probability.")]
CandidatesFile = Annotated[Path | None, typer.Option(
    "--candidates", help="With --answers candidates: a file of candidate answers, one per line (default: every "
                         "distinct answer of the relation's splits).", show_default=False)]
Normalise = Annotated[bool, typer.Option(
    "--normalise", help="With --answers candidates: score a candidate by its mean token log-probability.")]
Negatives = Annotated[int | None, typer.Option(
    "--negatives", min=1, help="With --answers candidates, training: each step's loss over its facts' answers and N "
                               "other candidates drawn at random (faster; default: every candidate).",
    show_default=False)]


def candidate_options(answers: str, candidates: Path | None, normalise: bool, negatives: int | None = None
                      ) -> CandidateOptions | None:
    """The candidate mode the options ask for (None: the vocabulary), refusing options of the wrong mode."""
    if answers == "candidates":
        return CandidateOptions(candidates, normalise, negatives)
    if candidates is not None or normalise or negatives is not None:
        raise SoftpromptError("--candidates, --normalise and --negatives apply to candidate answers; add --answers "
                              "candidates, or leave them out")
    return None


def print_facts(data: EncodedRelation, out: Path) -> None:
    """What the run will use and what it dropped (listed in OUT/dropped.jsonl), before any training."""
    used = ", ".join(f"{split} {len(examples)}" for split, examples in data.splits.items())
    dropped = ", ".join(f"{split} {n}" for split, n in data.dropped.items())
    console.print(f"facts used: {used}")
    console.print(f"facts dropped because {data.drop_reason}: {dropped} (listed in {out / DROPPED})")


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
    answers: Answers = "vocabulary",
    candidates: CandidatesFile = None,
    normalise: Normalise = False,
    negatives: Negatives = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
    precision: PrecisionOption = None,
) -> None:
    """Train a soft or deep prompt on the train split (early stopping on dev) and score it on test.

    Facts whose answer is not a single token for the model are dropped (counted, and listed in dropped.jsonl),
    unless --answers candidates ranks answers of any length among candidate answers.
    The run directory gets config.json, metrics.json, predictions.jsonl, dropped.jsonl, prompt.safetensors and
    checkpoint.safetensors. Under accelerate launch, the processes train data-parallel.
    """
    check_resume_force(resume, force)
    rel = relation_from_options(data, template, templates, relation)
    config = train_config(lr, batch_size, epochs, patience, seed)
    caps = limits(train=max_train, dev=max_dev, test=max_test)
    options = candidate_options(answers, candidates, normalise, negatives)
    with training_process(out, quiet, precision) as launch:
        run = RunDir(launch.out, "softprompt probe train")
        run.prepare(force, resume)
        lm = load_lm(model, launch.device, quiet=launch.quiet)
        encoded = encode_relation(rel, lm, caps, options)  # also checks that the template suits the model
        run.prepare(force, resume, resume_settings(run_settings(lm, rel, mode, init, config, caps,
                                                                encoded.candidates)))
        print_facts(encoded, out)
        started = time.monotonic()
        with tracked(tracker, tracking_dir, launch.out, resume):
            doc = run_probe(lm, rel, launch.out, mode=mode, init=init, config=config, limits=caps, resume=resume,
                            progress=not launch.quiet, data=encoded)
    console.print(metrics_table(rel.name, mode, "test", doc["test"], doc.get("candidates")))
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
    answers: Answers = "vocabulary",
    candidates: CandidatesFile = None,
    normalise: Normalise = False,
    force: Force = False,
) -> None:
    """Score a saved prompt, or the hard template, on one split; write config, metrics and predictions."""
    options = candidate_options(answers, candidates, normalise)
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
    doc, encoded = eval_probe(lm, rel, out, loaded, prompt, split, limits(**{split: max_facts}), candidates=options)
    console.print(f"facts dropped because {encoded.drop_reason}: {encoded.dropped[split]} (listed in "
                  f"{out / DROPPED})")
    console.print(metrics_table(rel.name, doc["mode"], split, doc[split], doc.get("candidates")))
    console.print(f"run directory: {out}")
