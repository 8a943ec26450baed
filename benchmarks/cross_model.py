"""Cross-model prompt transfer between SmolLM2 and Gemma 3 (Su et al. 2022, findings 1 and 2 across models).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_model.py [--profile cpu] [--tasks sst2 cr]
        [--fit-tasks sst2] [--modes task distance] [--seeds 0] [--render-only] [--out-root DIR]

Both directions between the two --models (default smollm2-135m → gemma3-270m and gemma3-270m → smollm2-135m), on
few-shot NLU tasks (k training and k dev examples per class, drawn with the seed; accuracy on a stratified
evaluation sample drawn with seed 0, the same for every run). Every prompt is a prefix of soft vectors. The
projector of a direction S → T is fitted on the --fit-tasks only, so a task outside them (cr by default) is one the
projector never saw. Units, each a run directory under benchmarks/cache/cross_model/<profile>/ (ignored, resumable)
and, once finished, a small JSON record at the same relative path under benchmarks/results/cross_model/<profile>/
(committed; a unit with a record is never run again):

- <model>/<task>/text|random/seed-N: the model's own prompt, initialised from the task description ("description
  init") or randomly, trained. S's description prompts are the sources of every transfer; T's are "the target's
  own prompt" and, with the random ones, the baselines of the initialisation comparison;
- <model>/<task>/no-prompt: the task template alone (no training; the same for every seed);
- <S>-to-<T>/fit-<fit tasks>/projector-<mode>/seed-N: Su et al.'s projector from S to T, fitted on S's
  description prompts of the fit tasks: mode "task" tunes it through the frozen T on those tasks' few-shot
  training examples (early stopping on their dev examples), mode "distance" maps them onto T's own prompts;
- <S>-to-<T>/<task>/bridge/seed-N: S's prompt moved through the two vocabularies (no fitting), scored on T;
- <S>-to-<T>/fit-<fit tasks>/<task>/projected-<mode>/seed-N: S's prompt through the projector, scored on T
  zero-shot;
- <S>-to-<T>/fit-<fit tasks>/<task>/init-<mode>/seed-N: T's prompt trained from that projected prompt.

Measured (docs/results/cross_model.md, rendered from the records only): zero-shot accuracy of the bridged and
projected prompts against no prompt and the target's own prompt; for the projected init, its final accuracy
against the description and random inits (gain) and its speed-up over each, as benchmarks/transfer.py defines it:
the epochs the baseline init needs to get 90% of the way from its start to its best dev loss, divided by the epochs
the projected init needs to reach that same dev loss (>1: faster; "starts there" when the projected prompt is
there before training, "never" when it does not get there, – when the baseline starts at its best). Means ± std
over the seeds that have finished.

Profile "cpu" is sized for one core of a shared 2-core machine: 16-shot tasks, 10-vector prompts. Expected, from a
smoke run scaled up (the page's last table gives the measured times): each prompt training (own or from a projected
prompt) 2-4 minutes, a task-tuned projector fit 3-6 minutes, a distance fit, a bridge or a zero-shot score under a
minute; about an hour per seed with the default tasks and modes (8 own prompts, 4 projector fits, 8 trainings from
projected prompts), plus loading SST-2's training split once (tens of seconds). "full" is larger; "smoke" (not
listed) checks the script in a few minutes and writes under benchmarks/cache unless --out-root says where.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from softprompt.analysis.geometry import cosine_flat
from softprompt.analysis.transfer import convergence_speed_up, shown_speed
from softprompt.engine import Engine
from softprompt.io import write_json, write_text
from softprompt.models import load_model
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.prompts import TaskPrompt, load_prompt
from softprompt.tasks import Task, TaskExample, TaskSettings, load_task, predict, run_task, task_metrics
from softprompt.tasks.run import eval_sample, split_data
from softprompt.transfer import (
    Projector,
    PromptInit,
    SourceTask,
    bridge_prompt,
    fit_on_distances,
    fit_on_tasks,
    load_projector,
    project_prompt,
    read_source,
)
from softprompt.transfer.projector import DISTANCE_CONFIG, TASK_CONFIG, pairs_by_task
from softprompt.transfer.source import file_sha256

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parent
MODELS = ("smollm2-135m", "gemma3-270m")
TASKS = ("sst2", "cr")
FIT_TASKS = ("sst2",)
MODES = ("task", "distance")
MODE_NAMES = {"task": "task-tuned projector", "distance": "distance-fitted projector"}
# What a training unit's record keeps of its run directory's metrics.json.
TRAINING_FIELDS = ("metrics", "history", "best_epoch", "best_dev_loss", "train_seconds", "eval_seconds",
                   "train_examples", "dev_examples")


@dataclass(frozen=True)
class Profile:
    settings: TaskSettings  # every prompt, on both models
    train: TrainConfig  # every prompt's training
    projector: TrainConfig  # the task-tuned projector's fit
    distance: TrainConfig  # the distance-fitted projector's fit


PROFILES = {
    # One core: as benchmarks/transfer.py's cpu profile; a projector fit is about as long as a prompt's training.
    "cpu": Profile(TaskSettings(layout="prefix", length=10, shots=16, eval_limit=200),
                   TrainConfig(lr=1e-2, batch_size=16, max_epochs=12, patience=4), TASK_CONFIG, DISTANCE_CONFIG),
    "full": Profile(TaskSettings(layout="prefix", length=20, shots=32, eval_limit=None),
                    TrainConfig(lr=1e-2, batch_size=16, max_epochs=30, patience=6),
                    TrainConfig(lr=1e-3, batch_size=16, max_epochs=50, patience=10), DISTANCE_CONFIG),
    "smoke": Profile(TaskSettings(layout="prefix", length=4, shots=4, eval_limit=8),
                     TrainConfig(lr=1e-2, batch_size=8, max_epochs=1, patience=1),
                     TrainConfig(lr=1e-3, batch_size=8, max_epochs=1, patience=1),
                     TrainConfig(lr=1e-3, batch_size=64, max_epochs=5, patience=5)),
}


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


@dataclass
class Bench:
    """Where units live and what they need: models, engines and data, loaded on first use (a render loads none)."""

    args: argparse.Namespace
    profile: Profile
    cache: Path  # run directories, prompt and projector files (ignored)
    store: Path  # one JSON record per finished unit (committed)
    engines: dict[str, Engine] = field(default_factory=dict)
    data: dict[str, tuple[Task, list[TaskExample], list[TaskExample]]] = field(default_factory=dict)

    @property
    def fit_tag(self) -> str:
        return "fit-" + "+".join(sorted(self.args.fit_tasks))

    def engine(self, model: str) -> Engine:
        if model not in self.engines:
            self.engines[model] = Engine(load_model(model))
        return self.engines[model]

    def task_data(self, name: str) -> tuple[Task, list[TaskExample], list[TaskExample]]:
        if name not in self.data:
            task = load_task(name)
            self.data[name] = (task, task.load("train", SHARED), task.load("validation", SHARED))
        return self.data[name]

    def record(self, key: Path) -> dict[str, Any] | None:
        path = self.store / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def publish(self, key: Path, doc: dict[str, Any]) -> None:
        """Write the unit's record unless it has one: a unit rerun only to rebuild a cached file keeps its record."""
        path = self.store / f"{key}.json"
        if not path.is_file():
            write_json(path, doc)


# Unit keys: the run directory under the cache and, with ".json", the record under the store.
def own_key(model: str, task: str, init: str, seed: int) -> Path:
    return Path(slug(model), task, init, f"seed-{seed}")


def no_prompt_key(model: str, task: str) -> Path:
    return Path(slug(model), task, "no-prompt")


def direction(source: str, target: str) -> Path:
    return Path(f"{slug(source)}-to-{slug(target)}")


def projector_key(b: Bench, source: str, target: str, mode: str, seed: int) -> Path:
    return direction(source, target) / b.fit_tag / f"projector-{mode}" / f"seed-{seed}"


def bridge_key(source: str, target: str, task: str, seed: int) -> Path:
    return direction(source, target) / task / "bridge" / f"seed-{seed}"


def projected_key(b: Bench, source: str, target: str, task: str, what: str, seed: int) -> Path:
    """``what``: projected-<mode> (zero-shot) or init-<mode> (trained from the projected prompt)."""
    return direction(source, target) / b.fit_tag / task / what / f"seed-{seed}"


def say(key: Path, doc: dict[str, Any], seconds: float) -> None:
    accuracy = doc.get("metrics", {}).get("accuracy")
    shown = "" if accuracy is None else f"  acc {100 * accuracy:5.1f}"
    print(f"{key}{shown}  {seconds:.0f}s", flush=True)


def train(b: Bench, model: str, task_name: str, key: Path, seed: int, init: str = "text",
          init_from: PromptInit | None = None) -> dict[str, Any]:
    """A prompt for ``model`` trained on the task from ``init`` (text: the description; random), or from what
    ``init_from`` puts in its place, as its run directory's metrics.json has it."""
    out = b.cache / key
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    engine = b.engine(model)
    task, train_split, evaluation = b.task_data(task_name)
    settings = replace(b.profile.settings, init=init)
    start = time.perf_counter()
    doc = run_task(engine.lm, task, settings, replace(b.profile.train, seed=seed), out, train_split, evaluation,
                   resume=True, progress=False, engine=engine, init_from=init_from)
    say(key, doc, time.perf_counter() - start)
    return doc


def own_prompt(b: Bench, model: str, task: str, seed: int, init: str = "text") -> Path:
    """The model's own trained prompt (its run directory), trained and recorded if needed."""
    key = own_key(model, task, init, seed)
    doc = train(b, model, task, key, seed, init)
    b.publish(key, {k: doc[k] for k in TRAINING_FIELDS if k in doc})
    return b.cache / key


def score(b: Bench, model: str, task_name: str, prompt: TaskPrompt | None) -> dict[str, Any]:
    """Zero-shot metrics of ``prompt`` (None: the template alone) on the evaluation sample every run is scored on.
    (``eval_task`` needs a prompt, so the no-prompt case goes through the same ``predict`` it uses.)"""
    engine = b.engine(model)
    task, _, evaluation = b.task_data(task_name)
    settings = b.profile.settings
    start = time.perf_counter()
    indices, _, _ = eval_sample(task, evaluation, settings)
    examples = [evaluation[i] for i in indices]
    scores = predict(engine, prompt, task, examples, settings, b.profile.train.eval_batch_size)
    return {"metrics": task_metrics(task, scores, [e.label for e in examples]),
            "eval_seconds": time.perf_counter() - start}


def run_no_prompt(b: Bench, model: str, task: str) -> None:
    key = no_prompt_key(model, task)
    doc = score(b, model, task, None)
    b.publish(key, doc)
    say(key, doc, doc["eval_seconds"])


def projector_file(b: Bench, source: str, target: str, mode: str, seed: int) -> Path:
    """The S → T projector fitted on the fit tasks (its file), fitted and recorded if needed."""
    key = projector_key(b, source, target, mode, seed)
    out = b.cache / key / "projector.safetensors"
    if out.is_file():
        if (b.cache / key / "fit.json").is_file():  # what the record says, kept beside the projector
            b.publish(key, json.loads((b.cache / key / "fit.json").read_text()))
        return out
    sources = [read_source(own_prompt(b, source, t, seed)) for t in b.args.fit_tasks]
    if mode == "task":
        engine = b.engine(target)
        # source_tasks would load each task's training split again (SST-2's takes tens of seconds): the same
        # SourceTasks from the splits already loaded, split as the prompts' runs split them.
        items = []
        for prompt in sources:
            task, train_split, _ = b.task_data(prompt.task)
            items.append(SourceTask(prompt, task, *split_data(task, train_split, b.profile.settings, seed)))
        torch.manual_seed(seed)  # the projector's initial weights
        projector = Projector(sources[0].length, sources[0].hidden_size, engine.lm.hidden_size, source_model=source,
                              target_model=engine.lm.name)
        checkpoint = out.with_name("checkpoint.safetensors")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = fit_on_tasks(projector, engine, items, replace(b.profile.projector, seed=seed), checkpoint=checkpoint,
                              resume=True, progress=False)
    else:
        pairs = pairs_by_task(sources, [read_source(own_prompt(b, target, t, seed)) for t in b.args.fit_tasks])
        torch.manual_seed(seed)
        projector = Projector(sources[0].length, sources[0].hidden_size, pairs[0][1].hidden_size,
                              source_model=source, target_model=target)
        checkpoint = None  # a few pairs, seconds of work: not worth a checkpoint of the projector every epoch
        start = time.perf_counter()
        result = fit_on_distances(projector, pairs, replace(b.profile.distance, seed=seed), progress=False)
    projector.save(out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    history = result.history
    doc = {"mode": mode, "fit_tasks": sorted(b.args.fit_tasks), "start_dev_loss": history[0]["dev_loss"],
           "best_dev_loss": result.best_dev_loss, "best_epoch": result.best_epoch, "epochs": history[-1]["epoch"],
           "seconds": result.earlier_seconds + time.perf_counter() - start,
           "sources": [s.record()["sha256"] for s in sources], "projector_sha256": file_sha256(out)}
    if mode == "task":
        doc["history"] = history  # the distance fit's is hundreds of epochs long
    write_json(b.cache / key / "fit.json", doc)
    b.publish(key, doc)
    say(key, doc, doc["seconds"])
    return out


def projected_file(b: Bench, source: str, target: str, task: str, mode: str, seed: int) -> Path:
    """S's prompt of the task mapped by the projector into T's input space (a prompt file for T)."""
    out = b.cache / projected_key(b, source, target, task, f"projected-{mode}", seed) / "prompt.safetensors"
    if out.is_file():
        return out
    projector = projector_file(b, source, target, mode, seed)
    prompt = read_source(own_prompt(b, source, task, seed))
    projected = project_prompt(prompt, load_projector(projector), b.engine(target).lm, projector)
    projected.save(out, extra={"transfer": {"projector": str(projector), "projector_sha256": file_sha256(projector),
                                            "source": prompt.record()}})
    return out


def run_bridge(b: Bench, source: str, target: str, task: str, seed: int) -> None:
    key = bridge_key(source, target, task, seed)
    prompt = read_source(own_prompt(b, source, task, seed))
    bridged_prompt, bridged = bridge_prompt(prompt, b.engine(source).lm, b.engine(target).lm)
    bridged_prompt.save(b.cache / key / "prompt.safetensors",
                        extra={"transfer": {"bridge": {"source_ids": bridged.source_ids,
                                                       "target_ids": bridged.target_ids}, "source": prompt.record()}})
    doc = score(b, target, task, bridged_prompt) | {
        "text": bridged.text, "source_tokens": len(bridged.source_ids), "target_tokens": len(bridged.target_ids),
        "source_sha256": prompt.record()["sha256"]}
    b.publish(key, doc)
    say(key, doc, doc["eval_seconds"])


def run_projected(b: Bench, source: str, target: str, task: str, mode: str, seed: int) -> None:
    key = projected_key(b, source, target, task, f"projected-{mode}", seed)
    path = projected_file(b, source, target, task, mode, seed)
    prompt = load_prompt(path, b.engine(target).lm)
    doc = score(b, target, task, prompt) | {"prompt_sha256": file_sha256(path)}
    if task not in b.args.fit_tasks:
        # A projector fitted on few prompts can map every input to nearly the same output; how close this
        # task's projection is to each fit task's says whether the zero-shot score is this task's prompt at all.
        vectors = prompt.vectors().detach()
        doc["cosine_to_fit_tasks"] = {
            f: cosine_flat(vectors, load_prompt(projected_file(b, source, target, f, mode, seed),
                                                b.engine(target).lm).vectors().detach())
            for f in b.args.fit_tasks}
    b.publish(key, doc)
    say(key, doc, doc["eval_seconds"])


def run_init(b: Bench, source: str, target: str, task: str, mode: str, seed: int) -> None:
    key = projected_key(b, source, target, task, f"init-{mode}", seed)
    path = projected_file(b, source, target, task, mode, seed)
    doc = train(b, target, task, key, seed, init_from=PromptInit([path]))
    b.publish(key, {k: doc[k] for k in TRAINING_FIELDS if k in doc} | {"init_sha256": file_sha256(path)})


@dataclass
class Unit:
    key: Path
    run: Callable[[], object]


def plan(b: Bench) -> list[Unit]:
    """Every unit, in the order they run: seeds outermost (a partial run covers every cell once), each seed's own
    prompts first (the sources and baselines), then each direction's projectors, bridge, zero-shot and init."""
    args, units = b.args, []
    models, tasks = args.models, args.tasks
    own_tasks = list(dict.fromkeys([*args.fit_tasks, *tasks]))
    pairs = [(models[0], models[1]), (models[1], models[0])]
    units += [Unit(no_prompt_key(m, t), lambda m=m, t=t: run_no_prompt(b, m, t)) for m in models for t in tasks]
    for seed in args.seeds:
        units += [Unit(own_key(m, t, "text", seed), lambda m=m, t=t, s=seed: own_prompt(b, m, t, s))
                  for m in models for t in own_tasks]
        units += [Unit(own_key(m, t, "random", seed), lambda m=m, t=t, s=seed: own_prompt(b, m, t, s, "random"))
                  for m in models for t in tasks]
        for src, tgt in pairs:
            units += [Unit(projector_key(b, src, tgt, mode, seed),
                           lambda src=src, tgt=tgt, mode=mode, s=seed: projector_file(b, src, tgt, mode, s))
                      for mode in args.modes]
            units += [Unit(bridge_key(src, tgt, t, seed), lambda src=src, tgt=tgt, t=t, s=seed: run_bridge(
                b, src, tgt, t, s)) for t in tasks]
            units += [Unit(projected_key(b, src, tgt, t, f"projected-{mode}", seed),
                           lambda src=src, tgt=tgt, t=t, mode=mode, s=seed: run_projected(b, src, tgt, t, mode, s))
                      for t in tasks for mode in args.modes]
            units += [Unit(projected_key(b, src, tgt, t, f"init-{mode}", seed),
                           lambda src=src, tgt=tgt, t=t, mode=mode, s=seed: run_init(b, src, tgt, t, mode, s))
                      for t in tasks for mode in args.modes]
    return units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=list(MODELS), metavar=("A", "B"),
                        help="the two models; both directions are run")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", metavar="{cpu,full}")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--fit-tasks", nargs="+", default=list(FIT_TASKS),
                        help="the tasks the projectors are fitted on (default: sst2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="projector fits")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--out-root", type=Path, default=None,
                        help="write run directories (DIR/cache), records (DIR/results) and the page "
                             "(DIR/cross_model.md) under DIR instead of benchmarks/ and docs/results/")
    parser.add_argument("--out", type=Path, default=None,
                        help="the page (default docs/results/cross_model.md, or under --out-root); another page "
                             "for another choice of --fit-tasks, e.g. docs/results/cross_model-fit3.md")
    args = parser.parse_args()
    if args.models[0] == args.models[1]:
        sys.exit("--models needs two different models")
    if args.out_root is not None:
        cache, store, page = args.out_root / "cache", args.out_root / "results", args.out_root / "cross_model.md"
    elif args.profile == "smoke":  # never into the committed tree
        base = ROOT / "cache" / "cross_model" / "smoke"
        cache, store, page = base / "runs", base / "records", base / "cross_model.md"
    else:
        cache, store = ROOT / "cache" / "cross_model" / args.profile, ROOT / "results" / "cross_model" / args.profile
        page = ROOT.parent / "docs" / "results" / "cross_model.md"
    page = args.out.resolve() if args.out else page
    b = Bench(args, PROFILES[args.profile], cache, store)
    if not args.render_only:
        if SHARED is None:
            sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
        for unit in plan(b):
            if b.record(unit.key) is None:
                unit.run()
    write_text(page, render(b))
    print(f"wrote {page}")


# Rendering: every number comes from the records.
@dataclass
class ZeroShot:
    """One zero-shot cell (means over seeds): the moved prompt, no prompt and the target's own prompt."""

    label: str
    value: float
    no_prompt: float
    own: float | None


@dataclass
class InitRun:
    """One seed of one projected init against the target's baselines (None: that baseline has no record; a NaN
    speed-up: the baseline starts at its best)."""

    label: str
    start: float  # the projected prompt's dev loss before training
    speed_description: float | None
    gain_description: float | None
    speed_random: float | None
    gain_random: float | None


def accuracy(doc: dict[str, Any] | None) -> float | None:
    return None if doc is None else doc["metrics"]["accuracy"]


def accuracies(b: Bench, keys: list[Path]) -> list[float]:
    return [a for k in keys if (a := accuracy(b.record(k))) is not None]


def cell(values: list[float], signed: bool = False) -> str:
    """Accuracy points (×100), mean ± std where there are several."""
    if not values:
        return "–"
    mean = format(100 * statistics.fmean(values), "+.1f" if signed else ".1f")
    return mean if len(values) == 1 else f"{mean} ± {100 * statistics.stdev(values):.1f}"


def loss_cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = f"{statistics.fmean(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.3f}"


def seconds_cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.0f}" if values else "–"


def speed_cell(values: list[float]) -> str:
    """Mean ± std of the speed-ups when every seed's is a ratio; else every seed's value."""
    if not values:
        return "–"
    if all(math.isfinite(v) and v > 0 for v in values):
        mean = f"{statistics.fmean(values):.2f}"
        return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.2f}"
    return ", ".join(shown_speed(v) for v in values)


def goal_speed(baseline: dict[str, Any], new: dict[str, Any]) -> float:
    """The speed-up of ``new`` over ``baseline`` (90% of the baseline's way to its best), as transfer.py's."""
    return convergence_speed_up(baseline["history"], new["history"])


def escape(text: str, limit: int = 70) -> str:
    """A bridged text as one table cell: quoted, cut, pipes escaped."""
    shown = json.dumps(text, ensure_ascii=False)
    shown = shown if len(shown) <= limit else shown[: limit - 1] + "…"
    return shown.replace("|", "\\|").replace("`", "'")


def shown_path(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    return str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path)


def present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def render(b: Bench) -> str:
    args, p = b.args, b.profile
    models, tasks, seeds, modes = args.models, args.tasks, args.seeds, args.modes
    pairs = [(models[0], models[1]), (models[1], models[0])]
    fit = ", ".join(sorted(args.fit_tasks))
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_model.py --profile {args.profile} --tasks "
               f"{' '.join(tasks)} --fit-tasks {' '.join(args.fit_tasks)} --modes {' '.join(modes)} --seeds "
               f"{' '.join(map(str, seeds))}" + (f" --out {shown_path(args.out.resolve())}" if args.out else ""))

    def seen(task: str) -> str:
        return "yes" if task in args.fit_tasks else "no"

    def label(src: str, tgt: str, task: str) -> str:
        return f"{src} → {tgt} {task}" + ("" if task in args.fit_tasks else " (unseen)")

    lines = [
        f"# Cross-model prompt transfer: {models[0]} ↔ {models[1]} (Su et al. 2022)", "",
        f"Models `{models[0]}` and `{models[1]}` (causal, fp32, frozen); profile `{args.profile}`: {p.settings}; "
        f"prompt training {p.train}; task-tuned projector {p.projector}; distance-fitted projector {p.distance}. "
        f"Projectors (Su et al.'s Linear → 768 → LeakyReLU → Linear) are fitted on **{fit}** only, from the source "
        "model's description-init prompts of those tasks: \"task\" tunes the projector through the frozen target "
        "model on their few-shot training examples, \"distance\" maps them onto the target model's own prompts of "
        "the same tasks. Accuracy ×100 on a stratified evaluation sample (seed 0, the same for every run); few-shot "
        "training data drawn with each seed; mean ± std over the seeds that have finished.", "",
        f"Reproduce: `{command}` (resumable; `--render-only` rewrites this page from the records under "
        f"`{shown_path(b.store)}/`). Units and definitions: the script's docstring.", "",
        "Su et al.'s own claims on projected prompts as initialisation are mixed: the first (arXiv v1) abstract "
        "calls them not effective, the NAACL 2022 version says \"projected prompts of other PLMs can significantly "
        "accelerate training and also improve the performance of PT\". The findings below are what these runs "
        "show, at this page's small few-shot budget.", "",
        "## Zero-shot: the source model's prompt on the target model", "",
        "\"seen\": the projectors were fitted on this task; a \"no\" row is a task they never saw. \"source prompt\" "
        "is the source model's own prompt on the source model (where the moved prompt comes from).", "",
        "| source → target | task | seen | no prompt | bridge | "
        + " | ".join(f"projected ({m})" for m in modes) + " | target's own prompt | source prompt |",
        "|---|---|---|---|---|" + "---|" * len(modes) + "---|---|",
    ]
    zero: dict[str, list[ZeroShot]] = {}
    for src, tgt in pairs:
        for t in tasks:
            none = accuracy(b.record(no_prompt_key(tgt, t)))
            own = accuracies(b, [own_key(tgt, t, "text", s) for s in seeds])
            source = accuracies(b, [own_key(src, t, "text", s) for s in seeds])
            moved = {"bridge": accuracies(b, [bridge_key(src, tgt, t, s) for s in seeds])}
            for m in modes:
                moved[f"projected ({m})"] = accuracies(
                    b, [projected_key(b, src, tgt, t, f"projected-{m}", s) for s in seeds])
            for what, values in moved.items():
                if values and none is not None:
                    zero.setdefault(what, []).append(ZeroShot(label(src, tgt, t), statistics.fmean(values), none,
                                                              statistics.fmean(own) if own else None))
            lines.append(f"| {src} → {tgt} | {t} | {seen(t)} | {cell([] if none is None else [none])} | "
                         + " | ".join(cell(v) for v in moved.values()) + f" | {cell(own)} | {cell(source)} |")

    lines += ["", "## Projected prompts as initialisation", "",
              "Final accuracy of the target model's prompt, by where its training started:", "",
              "| source → target | task | seen | description init | random init | "
              + " | ".join(f"projected ({m}) init" for m in modes) + " |",
              "|---|---|---|---|---|" + "---|" * len(modes)]
    speed_rows: list[str] = []
    runs: dict[str, list[InitRun]] = {m: [] for m in modes}
    for src, tgt in pairs:
        for t in tasks:
            inits = [accuracies(b, [projected_key(b, src, tgt, t, f"init-{m}", s) for s in seeds]) for m in modes]
            lines.append(f"| {src} → {tgt} | {t} | {seen(t)} | "
                         f"{cell(accuracies(b, [own_key(tgt, t, 'text', s) for s in seeds]))} | "
                         f"{cell(accuracies(b, [own_key(tgt, t, 'random', s) for s in seeds]))} | "
                         + " | ".join(cell(v) for v in inits) + " |")
            for m in modes:
                cell_runs = []
                for s in seeds:
                    new = b.record(projected_key(b, src, tgt, t, f"init-{m}", s))
                    if new is None:
                        continue
                    description, random_ = b.record(own_key(tgt, t, "text", s)), b.record(own_key(tgt, t, "random", s))
                    cell_runs.append(InitRun(
                        label(src, tgt, t), new["history"][0]["dev_loss"],
                        None if description is None else goal_speed(description, new),
                        None if description is None else accuracy(new) - accuracy(description),
                        None if random_ is None else goal_speed(random_, new),
                        None if random_ is None else accuracy(new) - accuracy(random_)))
                runs[m] += cell_runs
                description_start = [d["history"][0]["dev_loss"] for s in seeds
                                     if (d := b.record(own_key(tgt, t, "text", s))) is not None]
                speed_rows.append(
                    f"| {src} → {tgt} | {t} | {seen(t)} | {m} | "
                    f"{speed_cell(present([r.speed_description for r in cell_runs]))} | "
                    f"{speed_cell(present([r.speed_random for r in cell_runs]))} | "
                    f"{cell(present([r.gain_description for r in cell_runs]), signed=True)} | "
                    f"{cell(present([r.gain_random for r in cell_runs]), signed=True)} | "
                    f"{loss_cell([r.start for r in cell_runs])} | {loss_cell(description_start)} |")
    lines += ["", "Speed-up and accuracy gain of the projected init over the target's description and random inits "
              "(per seed, then mean ± std), and the dev loss it and the description init start from (epoch 0):", "",
              "| source → target | task | seen | projector | speed-up vs description | speed-up vs random | "
              "gain vs description | gain vs random | start dev loss (projected) | start dev loss (description) |",
              "|---|---|---|---|---|---|---|---|---|---|", *speed_rows]

    lines += ["", "## Projector fits", "",
              "Task-tuned losses are the target model's choice cross-entropy on the fit tasks' dev examples; "
              "distance-fitted losses are the mean squared error to the target's prompts (all pairs, none held "
              "out).", "",
              "| source → target | projector | fitted on | seed | start dev loss | best dev loss | best epoch | "
              "epochs | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for src, tgt in pairs:
        for m in modes:
            for s in seeds:
                if (d := b.record(projector_key(b, src, tgt, m, s))) is not None:
                    lines.append(f"| {src} → {tgt} | {m} | {', '.join(d['fit_tasks'])} | {s} | "
                                 f"{d['start_dev_loss']:.4g} | {d['best_dev_loss']:.4g} | {d['best_epoch']} | "
                                 f"{d['epochs']} | {d['seconds']:.0f} |")

    lines += ["", "## What the bridge reads", "",
              "Each source vector's nearest source token (cosine), decoded; the target model embeds that text, its "
              "tokens cycled or cut to the prompt's length.", "",
              "| source → target | task | seed | text | source tokens | target tokens |", "|---|---|---|---|---|---|"]
    for src, tgt in pairs:
        for t in tasks:
            for s in seeds:
                if (d := b.record(bridge_key(src, tgt, t, s))) is not None:
                    lines.append(f"| {src} → {tgt} | {t} | {s} | {escape(d['text'])} | {d['source_tokens']} | "
                                 f"{d['target_tokens']} |")

    lines += ["", "## Findings", "", *findings(zero, runs), *collapse(b, pairs, tasks, seeds, modes)]
    lines += ["", "## Time per unit (seconds, mean over its records)", "", *times(b, pairs)]
    missing = [str(u.key) for u in plan(b) if b.record(u.key) is None]
    if missing:
        lines += ["", "## Not run yet", "", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


def findings(zero: dict[str, list[ZeroShot]], runs: dict[str, list[InitRun]]) -> list[str]:
    """Generated sentences: they follow the records, whatever they show."""
    out = []
    for what, cells in zero.items():
        wins = sum(c.value > c.no_prompt for c in cells)
        owned = [c for c in cells if c.own is not None]
        reaches = sum(c.value >= c.own for c in owned)
        detail = "; ".join(f"{c.label} {100 * c.value:.1f} vs {100 * c.no_prompt:.1f}" for c in cells)
        out.append(f"- Zero-shot, {what} beats no prompt in {wins} of {len(cells)} cells ({detail}) and reaches the "
                   f"target's own prompt in {reaches} of {len(owned)}.")
    for mode, found in runs.items():
        if not found:
            continue
        parts = []
        for name, speeds, gains in (
                ("description", [r.speed_description for r in found], [r.gain_description for r in found]),
                ("random", [r.speed_random for r in found], [r.gain_random for r in found])):
            ratios = [v for v in present(speeds) if not math.isnan(v)]
            known = present(gains)
            if not known:
                continue
            parts.append(f"against the {name} init it is faster in {sum(v > 1 for v in ratios)} of {len(ratios)} "
                         f"(where that init had a way to go) and ends higher in {sum(g > 0 for g in known)} of "
                         f"{len(known)} (mean gain {100 * statistics.fmean(known):+.1f})")
        if parts:
            out.append(f"- As initialisation ({MODE_NAMES[mode]}, {len(found)} runs of a cell and seed): "
                       + "; ".join(parts) + ".")
    return out or ["- Nothing has finished yet."]


def collapse(b: Bench, pairs: list[tuple[str, str]], tasks: list[str], seeds: list[int],
             modes: list[str]) -> list[str]:
    """Per projector mode: whether the fit reproduces its targets exactly (then a seen task's projection is the
    target's own prompt), and how close the unseen tasks' projected prompts are to each fit task's projection
    (cosine of the flattened vectors), from the records that measured it."""
    out = []
    for m in modes:
        fits = [d for src, tgt in pairs for s in seeds if (d := b.record(projector_key(b, src, tgt, m, s)))]
        if m == "distance" and fits and all(d["best_dev_loss"] < 1e-8 for d in fits):
            out.append(f"- The {MODE_NAMES[m]} fits its {len(b.args.fit_tasks)} pairs exactly (mean squared error "
                       f"≤ {max(d['best_dev_loss'] for d in fits):.0e}): on a task it was fitted on, its projection is "
                       "the target's own prompt, so those zero-shot cells equal the own prompt by construction and "
                       "only the unseen tasks test the projector.")
        cells = [(f"{src} → {tgt} {t}" + (f" seed {s}" if len(seeds) > 1 else ""), d["cosine_to_fit_tasks"])
                 for src, tgt in pairs for t in tasks for s in seeds
                 if (d := b.record(projected_key(b, src, tgt, t, f"projected-{m}", s))) is not None
                 and d.get("cosine_to_fit_tasks")]
        if not cells:
            continue
        detail = "; ".join(f"{label}: " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(c.items(), key=lambda x: -x[1]))
                           for label, c in cells)
        nearest = [max(c.values()) for _, c in cells]
        spread = [max(c.values()) - min(c.values()) for _, c in cells]
        if len(b.args.fit_tasks) > 1 and all(v > 0.8 for c in (c for _, c in cells) for v in c.values()):
            verdict = ("close to every fit task's projection at once: the projector gives nearly one output "
                       "whatever prompt it is given")
        elif all(v > 0.9 for v in nearest):
            verdict = ("close to one fit task's projection" + (f" and far from another's (spread up to "
                       f"{max(spread):.2f}): it tells the tasks apart, and" if len(b.args.fit_tasks) > 1 else ":")
                       + " on a task it never saw it outputs nearly that fit task's projected prompt, so the "
                       "zero-shot score there measures that prompt's transfer")
        elif not any(v > 0.9 for v in nearest):
            verdict = "not close to any fit task's projection: its output depends on the prompt it is given"
        else:
            close = sum(v > 0.9 for v in nearest)
            verdict = f"close to a fit task's projection (cosine > 0.9) in {close} of {len(cells)}"
        out.append(f"- The {MODE_NAMES[m]} puts the unseen tasks' prompts {verdict} (cosine to each fit task's "
                   f"projection: {detail}).")
    return out


def times(b: Bench, pairs: list[tuple[str, str]]) -> list[str]:
    """Mean seconds of each kind of unit, from its records (what a rerun of it costs on the machine that ran it)."""
    args = b.args
    rows = ["| unit | model / direction | records | train or fit s | eval s |", "|---|---|---|---|---|"]

    def row(unit: str, who: str, keys: list[Path], seconds: str | None) -> None:
        docs = [d for k in keys if (d := b.record(k)) is not None]
        if docs:
            fit = "–" if seconds is None else seconds_cell([d[seconds] for d in docs])
            rows.append(f"| {unit} | {who} | {len(docs)} | {fit} | "
                        f"{seconds_cell([d['eval_seconds'] for d in docs if 'eval_seconds' in d])} |")

    for m in args.models:
        row("no prompt", m, [no_prompt_key(m, t) for t in args.tasks], None)
        row("own prompt (description init)", m, [own_key(m, t, "text", s) for t in args.tasks for s in args.seeds],
            "train_seconds")
        row("own prompt (random init)", m, [own_key(m, t, "random", s) for t in args.tasks for s in args.seeds],
            "train_seconds")
    for src, tgt in pairs:
        who = f"{src} → {tgt}"
        row("bridge (zero-shot)", who, [bridge_key(src, tgt, t, s) for t in args.tasks for s in args.seeds], None)
        for m in args.modes:
            row(f"projector fit ({m})", who, [projector_key(b, src, tgt, m, s) for s in args.seeds], "seconds")
            row(f"projected (zero-shot, {m})", who, [projected_key(b, src, tgt, t, f"projected-{m}", s)
                                                    for t in args.tasks for s in args.seeds], None)
            row(f"init from projected ({m})", who, [projected_key(b, src, tgt, t, f"init-{m}", s)
                                                   for t in args.tasks for s in args.seeds], "train_seconds")
    return rows


if __name__ == "__main__":
    main()
