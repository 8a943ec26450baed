"""``softprompt mixture train`` and ``mixture show``: mixtures of prompts (Qin & Eisner §3.3–3.5)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from softprompt.analysis.visualise import read_mixture, save_html, save_png
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
    TrackerOption,
    TrackingDir,
    check_resume_force,
    console,
    limits,
    load_lm,
    metrics_table,
    relation_from_options,
    relation_name,
    staged_data,
    tracked,
    train_config,
    training_process,
)
from softprompt.engine import MAX_ROWS
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL
from softprompt.optimizers import TrainConfig
from softprompt.probing import prompt_set, prompt_set_from_file
from softprompt.probing.mixture import WEIGHTS_LR, MixtureSettings, mixture_settings, run_mixture
from softprompt.prompts import effective_prompts, load_prompt, read_prompt_file
from softprompt.runs import WARMUP, RunDir

app = typer.Typer(help="Mixtures of prompts (Qin & Eisner §3.3–3.5): train one, or show what it learned.",
                  no_args_is_help=True)

PROMPTS_HELP = (
    "The prompt set: sin (the LAMA template), par (LPAQA paraphrases), min (LPAQA mined), ran (mined prompts "
    "with random vectors), pararel or omcs, read from --prompt-root for the relation; or a file of templates "
    '(JSONL with "template" per line, or one template per text line).'
)


@app.command("train")
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
        min=1, help="Most sequences in one forward pass (memory bound; results do not depend on it).")] = MAX_ROWS,
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
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
    precision: PrecisionOption = None,
) -> None:
    """Train a mixture of prompts for one relation and score it on test (data-parallel under accelerate launch).

    Facts whose answer is not a single token are dropped (counted, and listed in dropped.jsonl); the drops and
    the reordered templates are shown before training. The run directory gets config.json, metrics.json (with
    mixture weights and the effective number of prompts), predictions.jsonl (with each fact's most responsible
    prompts), dropped.jsonl and prompt.safetensors.
    """
    check_resume_force(resume, force)
    name = relation_name(data, relation)
    if Path(prompts).is_file():
        pset = prompt_set_from_file(prompts, init or "template")
    else:
        root = staged_data(prompt_root)
        if root is None:
            raise SoftpromptError(f"--prompts {prompts} names a prompt set, but no --prompt-root was given, "
                                  "$SOFTPROMPT_SHARED_DATA is not set and ../shared/data does not exist; pass "
                                  "--prompt-root or a file of templates")
        pset = prompt_set(prompts, name, root, dataset)
        if init is not None:
            pset = dataclasses.replace(pset, init=init)
    rel = relation_from_options(data, pset.templates[0], None, name)
    settings = MixtureSettings(pset.name, pset.templates, pset.init, mode, method, tune, data_dependent, top_k,
                               answer_first, max_rows, weights_lr, select, prune_after, sparse_k,
                               sparse_m, sparse_draw)
    config = train_config(lr, batch_size, epochs, patience, seed)
    caps = limits(train=max_train, dev=max_dev, test=max_test)
    with training_process(out, quiet, precision, device) as launch:
        run = RunDir(launch.out, "softprompt mixture train")
        run.prepare(force, resume)
        lm = load_lm(model, launch.device, launch.quiet)
        run.prepare(force, resume, mixture_settings(lm, rel, settings, config, caps))
        started = time.monotonic()
        # A run resumed after its warm-up goes on counting epochs from the warm-up's last one.
        pruned = resume and (run.path / WARMUP).is_file() and run.checkpoint.is_file()
        with tracked(tracker, tracking_dir, launch.out, resume, offset=prune_after if pruned else 0):
            doc = run_mixture(lm, rel, settings, launch.out, config, caps, resume=resume, progress=not launch.quiet)
    report = doc["prompt_set"]
    console.print(f"prompts: {report['total']} in the set, {report['reordered']} reordered to end in [Y], "
                  f"{report['skipped']} skipped, {report['duplicates']} duplicates; {doc['num_prompts']} used; facts "
                  f"dropped: {', '.join(f'{s} {n}' for s, n in doc['dropped_multi_token'].items())}")
    console.print(metrics_table(rel.name, f"mixture ({mode})", "test", doc["test"]))
    console.print(f"effective number of prompts 2^H = {doc['effective_prompts']:.2f}; "
                  f"{time.monotonic() - started:.0f} s; run directory: {out}")


@app.command("show")
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
    if meta["kind"] != "mixture":
        raise SoftpromptError(f"{path} holds a {meta['kind']} prompt, not a mixture; train one with "
                              "softprompt mixture train")
    lm = load_lm(model)
    mixture = load_prompt(path, lm)
    readings = read_mixture(mixture)
    # 2^H from the weights themselves: a file's header need not carry it.
    title = f"{meta.get('relation', '')} ({meta['component_kind']}, 2^H = {effective_prompts(mixture.weights()):.2f})"
    table = Table(title=title)
    for col in ("weight", "prompt", "nearest words (cosine)", "‖v−v0‖/‖v0‖"):
        table.add_column(col)
    for r in readings[:top]:
        table.add_row(f"{r.weight:.3f}", r.source, " ".join(t.nearest_cosine for t in r.tokens),
                      " ".join(f"{t.moved:.2f}" for t in r.tokens))
    console.print(table)
    folder = path.parent
    html_path, png_path = html_out or folder / "mixture.html", png or folder / "mixture.png"
    save_html(readings, html_path, title)
    save_png(readings, png_path, title, top)
    console.print(f"written: {html_path}, {png_path}")
