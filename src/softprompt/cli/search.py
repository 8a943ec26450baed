"""``softprompt search pez|autoprompt|rlprompt``: search a hard prompt for a task (``--task``) or a relation
(``--data``); ``softprompt search gps``: evolve instruction prompts for a task. Each command builds its optimizer
from its options and hands it to the task or probing run."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from softprompt.cli.common import (
    Force,
    MaxDev,
    MaxTest,
    MaxTrain,
    Model,
    Out,
    Quiet,
    RelationName,
    Resume,
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
    staged_data,
    tracked,
)
from softprompt.cli.task import DataDir, Normalise
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import DEFAULT_MODEL, LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.optimizers.autoprompt import AutoPrompt, AutoPromptConfig
from softprompt.optimizers.base import Optimizer
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.gps import GeneticPromptSearch, GPSConfig
from softprompt.optimizers.mutators import BackTranslation, Paraphrase, SpanInfill
from softprompt.optimizers.pez import PEZ, PEZConfig
from softprompt.optimizers.rlprompt import RLPrompt, RLPromptConfig
from softprompt.probing import encode_relation, run_probe
from softprompt.probing.probe import resume_settings, run_settings
from softprompt.runs import RunDir
from softprompt.tasks import TaskSettings, load_task, run_task
from softprompt.tasks.gps import run_gps
from softprompt.tasks.run import load_split, task_run_settings
from softprompt.tracking import TrackerKind
from softprompt.zeroprompt import load_multitask, prompt_for_task

app = typer.Typer(help="Search a hard prompt for a task or a relation: token ids (PEZ, AutoPrompt, RLPrompt) or "
                  "instruction texts (GPS).",
                  no_args_is_help=True)

TaskOption = Annotated[str | None, typer.Option(
    "--task", help="A built-in task name or a task YAML file (search the [P] positions of --layout).",
    show_default=False)]
DataOption = Annotated[str | None, typer.Option(
    "--data", help="A relation's facts (probing: search the template's [T] triggers, or all its tokens).",
    show_default=False)]
Layout = Annotated[str, typer.Option(help="Tasks: where the searched tokens go, a layout name or a pattern with "
                                     "{input} and [P]/[P*N] markers (e.g. '{input} [P*5]').")]
Length = Annotated[int, typer.Option(min=1, help="Tasks: N in the prefix/hybrid layouts' [P*N].")]
Init = Annotated[str, typer.Option(help="Start from: random (common tokens), keep (probing: the template's own "
                                   "words), or any other text, whose tokens are cycled over the positions.")]
Shots = Annotated[int | None, typer.Option(min=1, help="Tasks: k training and k dev examples per class.",
                                           show_default=False)]
EvalLimit = Annotated[int | None, typer.Option(min=1, help="Tasks: evaluate on a stratified sample of N examples.",
                                               show_default=False)]
Seed = Annotated[int, typer.Option(help="Seed of the data split, the initial tokens and the search.")]
FluencyModel = Annotated[str | None, typer.Option(
    help="The causal LM whose perplexity of the prompt is measured (and, for PEZ, regularised); default: the "
         "model itself.", show_default=False)]
Steps = Annotated[int, typer.Option(min=1, help="Search steps.")]
EvalEvery = Annotated[int, typer.Option(min=1, help="Evaluate on dev (and checkpoint) every N steps.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Training items per step.")]


def fluency_for(lm: LanguageModel, spec: str | None, quiet: bool) -> Fluency | None:
    """The --fluency-model reference; None leaves the search its default (the model itself, when causal)."""
    if spec is None:
        return None
    return Fluency(lm) if spec == lm.name else Fluency(load_lm(spec, quiet=quiet), lm)


Build = Callable[[LanguageModel, Fluency | None, bool], Optimizer]  # (model, fluency reference, quiet) -> search


@dataclass(frozen=True)
class Target:
    """What a search command's options say to search: a task's layout or a relation's template, and the data."""

    task: str | None
    data: str | None
    template: str | None
    templates: Path | None
    relation: str | None
    layout: str
    length: int
    init: str
    shots: int | None
    eval_limit: int | None
    seed: int
    caps: dict[str, int]
    data_dir: Path | None


def run_search(build: Build, name: str, target: Target, out: Path, model: str, fluency_model: str | None,
               resume: bool, force: bool, quiet: bool, tracker: TrackerKind | None, tracking_dir: Path | None
               ) -> None:
    """Load the model and the data, search, evaluate, and print what was found (and log it to ``tracker``: each
    evaluation of the search's history, once it is done)."""
    task, data, init, seed = target.task, target.data, target.init, target.seed
    check_resume_force(resume, force)
    if (task is None) == (data is None):
        raise SoftpromptError("give --task (a task's [P] positions) or --data (a relation's template), one of them")
    run = RunDir(out, f"softprompt search {name}")
    run.prepare(force, resume)
    lm = load_lm(model, quiet=quiet)
    search = build(lm, fluency_for(lm, fluency_model, quiet), quiet)
    train_config = TrainConfig(seed=seed)
    if task is not None:
        spec = load_task(task)
        text = init != "random"
        settings = TaskSettings(layout=target.layout, length=target.length, kind="soft",
                                init="text" if text else "random", init_text=init if text else None,
                                shots=target.shots, eval_limit=target.eval_limit)
        train, train_source = load_split(spec, "train", staged_data(target.data_dir))
        evaluation, eval_source = load_split(spec, "validation", staged_data(target.data_dir))
        run.prepare(force, resume, task_run_settings(lm, spec, settings, train_config, search))
        with tracked(tracker, tracking_dir, out, resume, live=False):
            doc = run_task(lm, spec, settings, train_config, out, train, evaluation, resume=resume,
                           progress=not quiet, engine=Engine(lm),
                           sources={"train": train_source, "validation": eval_source}, search=search)
        table = Table(title=f"{spec.name}: {search.name} prompt, {doc['metrics']['n']} evaluation examples (×100)")
        for name in spec.metrics:
            table.add_column(name, justify="right")
        table.add_row(*("–" if doc["metrics"][m] is None else f"{100 * doc['metrics'][m]:.1f}" for m in spec.metrics))
    else:
        rel = relation_from_options(data, target.template, target.templates, target.relation)
        encoded = encode_relation(rel, lm, target.caps)
        run.prepare(force, resume, resume_settings(run_settings(lm, rel, "hard", init, train_config, target.caps, None,
                                                                search)))
        with tracked(tracker, tracking_dir, out, resume, live=False):
            doc = run_probe(lm, rel, out, mode="hard", init=init, config=train_config, limits=target.caps,
                            resume=resume, progress=not quiet, data=encoded, search=search)
        table = metrics_table(rel.name, search.name, "test", doc["test"])
    console.print(table)
    perplexity = "no causal reference for a perplexity" if doc["perplexity"] is None else (
        f"perplexity {doc['perplexity']:.0f} under {doc['fluency_model']}")
    console.print(f"prompt found: {doc['prompt_text']!r} ({perplexity})")
    console.print(f"run directory: {out}")


@app.command("pez")
def pez(
    out: Out,
    task: TaskOption = None,
    data: DataOption = None,
    model: Model = DEFAULT_MODEL,
    template: TemplateText = None,
    templates: TemplatesFile = None,
    relation: RelationName = None,
    layout: Layout = "prefix",
    length: Length = 5,
    init: Init = "random",
    steps: Steps = PEZConfig.steps,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the reference's 0.1).")] = PEZConfig.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = PEZConfig.weight_decay,
    batch_size: BatchSize = PEZConfig.batch_size,
    projection: Annotated[Literal["cosine", "dot"], typer.Option(
        help="Nearest vocabulary embedding by cosine similarity (the reference) or dot product.")] = "cosine",
    fluency_weight: Annotated[float, typer.Option(
        help="λ: weight of the fluency regulariser (Patel et al.'s J = loss + λ·fluency); 0 is plain PEZ.")] = 0.0,
    fluency_form: Annotated[Literal["nll", "perplexity"], typer.Option(
        help="Regularise the prompt's mean token NLL, or its perplexity (exp of it, Patel's J).")] = "nll",
    fluency_model: FluencyModel = None,
    eval_every: EvalEvery = PEZConfig.eval_every,
    seed: Seed = 0,
    shots: Shots = None,
    eval_limit: EvalLimit = None,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    max_test: MaxTest = None,
    data_dir: DataDir = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
) -> None:
    """PEZ (Wen et al. 2023): projected gradient descent with a straight-through step, optionally regularised
    by the prompt's fluency (Patel et al.). The best projected prompt on dev is kept."""
    config = PEZConfig(steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size, projection=projection,
                       fluency_weight=fluency_weight, fluency_form=fluency_form, eval_every=eval_every, seed=seed)
    target = Target(task, data, template, templates, relation, layout, length, init, shots, eval_limit, seed,
                    limits(train=max_train, dev=max_dev, test=max_test), data_dir)
    run_search(lambda lm, fluency, quiet: PEZ(config, fluency, progress=not quiet), "pez", target, out, model,
               fluency_model, resume, force, quiet, tracker, tracking_dir)


@app.command("autoprompt")
def autoprompt(
    out: Out,
    task: TaskOption = None,
    data: DataOption = None,
    model: Model = DEFAULT_MODEL,
    template: TemplateText = None,
    templates: TemplatesFile = None,
    relation: RelationName = None,
    layout: Layout = "prefix",
    length: Length = 5,
    init: Init = "the",
    steps: Steps = AutoPromptConfig.steps,
    candidates: Annotated[int, typer.Option(min=1, help="Candidate tokens scored per step.")] = 10,
    batch_size: BatchSize = AutoPromptConfig.batch_size,
    eval_size: Annotated[int, typer.Option(min=1, help="Training items the candidates are compared on.")] = 64,
    fluency_model: FluencyModel = None,
    eval_every: EvalEvery = AutoPromptConfig.eval_every,
    seed: Seed = 0,
    shots: Shots = None,
    eval_limit: EvalLimit = None,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    max_test: MaxTest = None,
    data_dir: DataDir = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
) -> None:
    """AutoPrompt (Shin et al. 2020): gradient-ranked token swaps at the triggers, kept when they lower the loss
    on a sample of training items. The best prompt on dev is kept."""
    config = AutoPromptConfig(steps=steps, candidates=candidates, batch_size=batch_size, eval_size=eval_size,
                              eval_every=eval_every, seed=seed)
    target = Target(task, data, template, templates, relation, layout, length, init, shots, eval_limit, seed,
                    limits(train=max_train, dev=max_dev, test=max_test), data_dir)
    run_search(lambda lm, fluency, quiet: AutoPrompt(config, fluency, progress=not quiet), "autoprompt", target, out,
               model, fluency_model, resume, force, quiet, tracker, tracking_dir)


@app.command("rlprompt")
def rlprompt(
    out: Out,
    task: TaskOption = None,
    data: DataOption = None,
    model: Model = DEFAULT_MODEL,
    template: TemplateText = None,
    templates: TemplatesFile = None,
    relation: RelationName = None,
    layout: Layout = "prefix",
    length: Length = 5,
    init: Init = "random",
    steps: Steps = RLPromptConfig.steps,
    prompts_per_step: Annotated[int, typer.Option(min=1, help="Prompts sampled per step.")] = 16,
    batch_size: BatchSize = RLPromptConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the policy's MLP.")] = RLPromptConfig.lr,
    alpha: Annotated[float, typer.Option(
        help="α: the reward loses α × the prompt's perplexity (Patel et al.); 0 is plain RLPrompt.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(
        help="Fluent sampling: only the frozen LM's own top-k tokens at each step.", show_default=False)] = None,
    final: Annotated[Literal["greedy", "sample-best"], typer.Option(
        help="The prompt evaluated on dev: the policy's greedy decoding, or the step's best-rewarded sample.")
    ] = "greedy",
    policy_model: Annotated[str | None, typer.Option(
        help="The policy's frozen causal LM (same tokenizer as --model); default: the model itself.",
        show_default=False)] = None,
    fluency_model: FluencyModel = None,
    eval_every: EvalEvery = RLPromptConfig.eval_every,
    seed: Seed = 0,
    shots: Shots = None,
    eval_limit: EvalLimit = None,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    max_test: MaxTest = None,
    data_dir: DataDir = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
) -> None:
    """RLPrompt (Deng et al. 2022): a policy (a frozen causal LM with a small trainable MLP) learns to write the
    prompt by soft Q-learning on the task's reward, optionally minus α × perplexity. The best prompt on dev is
    kept."""
    config = RLPromptConfig(steps=steps, prompts_per_step=prompts_per_step, batch_size=batch_size, lr=lr, alpha=alpha,
                            top_k=top_k, final=final, eval_every=eval_every, seed=seed)

    def build(lm: LanguageModel, fluency: Fluency | None, quiet: bool) -> Optimizer:
        policy = load_lm(policy_model, quiet=quiet) if policy_model and policy_model != lm.name else None
        return RLPrompt(config, fluency, policy, progress=not quiet)

    target = Target(task, data, template, templates, relation, layout, length, init, shots, eval_limit, seed,
                    limits(train=max_train, dev=max_dev, test=max_test), data_dir)
    run_search(build, "rlprompt", target, out, model, fluency_model, resume, force, quiet, tracker, tracking_dir)


MUTATORS = ("paraphrase", "infill", "backtranslate")


@app.command("gps")
def gps(
    task: Annotated[str, typer.Option("--task", help="A built-in task name or a task YAML file.", show_default=False)],
    out: Out,
    model: Model = DEFAULT_MODEL,
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", help="An initial prompt (G⁰), with the slot {input} and optionally {options}; repeat it. "
        "Default: three prompts built from the task's description.", show_default=False)] = None,
    mutator: Annotated[list[str] | None, typer.Option(
        "--mutator", help="A genetic function, repeatable: paraphrase (the generator LM rewrites, DINO-style), "
        "infill (it fills a masked span, LM-BFF-style), backtranslate (needs --translate-with and "
        "--translate-back). Default: paraphrase and infill.", show_default=False)] = None,
    generator_model: Annotated[str | None, typer.Option(
        help="The LM that paraphrases and infills (causal, masked or T5-style); default: the model itself.",
        show_default=False)] = None,
    translate_with: Annotated[str | None, typer.Option(
        help="Back-translation: the encoder-decoder that translates a prompt (e.g. Helsinki-NLP/opus-mt-en-de).",
        show_default=False)] = None,
    translate_back: Annotated[str | None, typer.Option(
        help="Back-translation: the encoder-decoder that translates it back (e.g. Helsinki-NLP/opus-mt-de-en).",
        show_default=False)] = None,
    iterations: Annotated[int, typer.Option(min=0, help="T: generations after the initial prompts.")] = 4,
    top_k: Annotated[int, typer.Option(min=1, help="K: the prompts kept to breed each generation, and at the end.")
                     ] = 4,
    children: Annotated[int, typer.Option(min=1, help="Rewrites each kept prompt asks of each mutator.")] = 4,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling of the generators.")] = 0.9,
    model_run: Annotated[Path | None, typer.Option(
        help="A ZeroPrompt model (zeroprompt train's run): the prompts follow its soft prompt E, with its shared "
             "component, as in the hybrid prompt E + D + V.", show_default=False)] = None,
    init: Annotated[Literal["none", "random", "top1", "weighted"] | None, typer.Option(
        help="With --model-run: E for a task it was not trained on (a training task keeps its own).",
        show_default=False)] = None,
    seed: Seed = 0,
    eval_limit: EvalLimit = None,
    normalise: Normalise = False,
    data_dir: DataDir = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    tracker: TrackerOption = None,
    tracking_dir: TrackingDir = None,
) -> None:
    """Genetic Prompt Search (Xu et al. 2022, ZeroPrompt §3.3): evolve instruction prompts around the task's input,
    scored on a few-shot dev set (32 training examples, or 8 per label past 5 labels); the LM is not trained. The
    best prompt is evaluated; every prompt scored is in the run's lineage.jsonl."""
    check_resume_force(resume, force)
    names = list(dict.fromkeys(mutator or ["paraphrase", "infill"]))
    if unknown := [n for n in names if n not in MUTATORS]:
        raise SoftpromptError(f"unknown mutator {unknown[0]!r}; choose from: {', '.join(MUTATORS)}")
    if ("backtranslate" in names) != (translate_with is not None and translate_back is not None):
        raise SoftpromptError("back-translation needs --mutator backtranslate with both --translate-with and "
                              "--translate-back (two encoder-decoder translation models; none is bundled)")
    config = GPSConfig(iterations=iterations, top_k=top_k, children=children, seed=seed)
    spec = load_task(task)
    run = RunDir(out, "softprompt search gps")
    run.prepare(force, resume)
    lm = load_lm(model, quiet=quiet)
    generator = lm if generator_model in (None, lm.name) else load_lm(generator_model, quiet=quiet)
    built = {"paraphrase": lambda: Paraphrase(generator, top_p=top_p),
             "infill": lambda: SpanInfill(generator, top_p=top_p),
             "backtranslate": lambda: BackTranslation(load_lm(translate_with, quiet=quiet),
                                                      load_lm(translate_back, quiet=quiet), top_p=top_p)}
    search = GeneticPromptSearch([built[n]() for n in names], config, progress=not quiet)
    settings = TaskSettings(layout="manual", length=0, kind="hard", normalise=normalise, eval_limit=eval_limit)
    train, train_source = load_split(spec, "train", staged_data(data_dir))
    evaluation, eval_source = load_split(spec, "validation", staged_data(data_dir))
    base, context, origin = None, nullcontext, None
    if model_run is not None:
        multitask = load_multitask(model_run, lm)
        base, chosen = prompt_for_task(multitask, spec, train, init, seed)
        context, origin = multitask.applied, {"model_run": str(model_run), "e": chosen}
    elif init is not None:
        raise SoftpromptError("--init chooses the soft prompt of a ZeroPrompt model: give --model-run too")
    with tracked(tracker, tracking_dir, out, resume, live=False):
        doc = run_gps(lm, spec, search, out, train, evaluation, settings, seed, prompt, resume,
                      sources={"train": train_source, "validation": eval_source}, base=base, context=context,
                      origin=origin)
    table = Table(title=f"{spec.name}: GPS prompt, {doc['metrics']['n']} evaluation examples (×100)")
    for name in spec.metrics:
        table.add_column(name, justify="right")
    table.add_row(*("–" if doc["metrics"][m] is None else f"{100 * doc['metrics'][m]:.1f}" for m in spec.metrics))
    console.print(table)
    console.print(f"prompt found (dev accuracy {100 * doc['dev_accuracy']:.1f} on {doc['dev_examples']}, "
                  f"{doc['prompts_scored']} prompts scored): {doc['prompt_text']!r}")
    console.print(f"run directory: {out}")
