"""Genetic Prompt Search on SmolLM2 (Xu et al. 2022, Tables 6-7): manual prompts, generated prompts without
selection, and GPS, per mutator, in "zero-shot adaptation with few-shot validation".

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gps.py [--tasks sst2 rte agnews] [--mutators paraphrase infill]
        [--seeds 0 1 2] [--profile cpu] [--render-only] [--num-cpus N | --address auto] [--unit-cpus C]

For each task:
- manual: the three handcrafted prompts G⁰ built from the task's description (``softprompt.tasks.gps.
  initial_layouts``), each evaluated: their mean, best and worst (Table 6's Avg/Max/Min are over tasks; here
  over the three prompts of one task);
- <mutator>, no selection: one prompt the mutator wrote from G⁰ (the first generation), drawn at random with
  the seed: what generation alone gives, without the dev set choosing;
- <mutator> + GPS: the search's best prompt on the few-shot dev set (32 training examples, §4.3.2), after T
  iterations keeping the top K.
The LM is SmolLM2 itself, frozen, with no multitask training (the base model's zero-shot prompts); the mutators'
generator is the same model (the paper used GPT-2/CPM/T5 and translation models; none are bundled here).
Evaluation: a stratified sample of the validation split (seed 0, the same for every method and seed).

Every (task, mutator, seed) is one GPS run directory under benchmarks/cache/gps/<model>/<profile>/ (ignored), which
resumes per iteration; a finished one is published as a record under benchmarks/results/gps/<model>/<profile>/
(committed), and a later call skips it; so is each task's manual.json (its three handcrafted prompts). Writes
docs/results/gps.md from the records. Each (task, mutator, seed), and each task's handcrafted prompts, runs as one
Ray task (benchmarks/grid.py): --num-cpus N runs N at once with one thread each (--unit-cpus C: C threads each),
--address a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.engine import Engine
from softprompt.io import write_json, write_text
from softprompt.models import LanguageModel
from softprompt.optimizers.gps import GeneticPromptSearch, GPSConfig
from softprompt.optimizers.mutators import Paraphrase, SpanInfill
from softprompt.paths import shared_data_dir
from softprompt.prompts.task import TaskPrompt
from softprompt.sweep import worker_model
from softprompt.tasks import TaskSettings, load_task
from softprompt.tasks.gps import initial_layouts, run_gps
from softprompt.tasks.run import eval_task

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parent
TASKS = ("sst2", "rte", "agnews")
MUTATORS = {"paraphrase": Paraphrase, "infill": SpanInfill}


@dataclass(frozen=True)
class Profile:
    search: GPSConfig
    eval_limit: int | None


PROFILES = {
    # One core: a search scores 3 + T·K·children = 30 prompts on 32 dev examples, 3-8 minutes.
    "cpu": Profile(GPSConfig(iterations=3, top_k=3, children=3), 200),
    "full": Profile(GPSConfig(iterations=6, top_k=4, children=4), None),
    # Checks the script end to end in a minute; its records are not published.
    "smoke": Profile(GPSConfig(iterations=1, top_k=1, children=1), 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--mutators", nargs="*", default=list(MUTATORS), choices=list(MUTATORS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--render-only", action="store_true")
    add_ray_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "gps.md")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    model_dir = re.sub(r"[^\w.-]", "_", args.model)
    cache = ROOT / "cache" / "gps" / model_dir / args.profile
    store = ROOT / ("cache" if args.profile == "smoke" else "results") / "gps" / model_dir / args.profile
    failed: list[str] = []
    if not args.render_only:
        jobs, queued = [], set()
        for seed in sorted(set(args.seeds)):  # seeds outermost: a partial run covers every cell once
            for name in args.tasks:
                manual = store / name / "manual.json"
                if not manual.is_file() and name not in queued:  # the handcrafted prompts: once per task
                    queued.add(name)
                    jobs.append((f"{name} manual", args.model, name, "manual", 0, args.profile, cache / name,
                                 manual, int(args.unit_cpus)))
                for mutator in args.mutators:
                    record = store / name / mutator / f"seed-{seed}.json"
                    if not record.is_file():
                        jobs.append((f"{name} {mutator} seed {seed}", args.model, name, mutator, seed, args.profile,
                                     cache / name / mutator / f"seed-{seed}", record, int(args.unit_cpus)))
        failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    write_text(args.out, render(store, args))
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def settings_for(profile: Profile) -> TaskSettings:
    return TaskSettings(layout="manual", length=0, kind="hard", eval_limit=profile.eval_limit)


def run_unit(label: str, model: str, name: str, mutator: str, seed: int, profile_name: str, out: Path,
             record: Path, threads: int) -> str:
    """One (task, mutator, seed) as a Ray task: run (or resume) its search, evaluate an unselected prompt of the
    first generation, write its record, and return the line that reports it. Mutator "manual" evaluates the task's
    three handcrafted prompts instead (its manual.json; ``seed`` and ``out`` unused)."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, None)
    engine, profile, task = Engine(lm), PROFILES[profile_name], load_task(name)
    settings, evaluation = settings_for(profile), task.load("validation", SHARED)
    start = time.perf_counter()
    if mutator == "manual":
        docs = [eval_task(lm, task, task_prompt(lm, t, name), evaluation, settings, engine=engine)
                for t in initial_layouts(task)]
        write_json(record, {"prompts": list(initial_layouts(task)), "metrics": [d["metrics"] for d in docs]})
        accuracies = [100 * d["metrics"]["accuracy"] for d in docs]
        return (f"{name:7} {'manual':10} G⁰      mean {statistics.fmean(accuracies):5.1f}  best {max(accuracies):5.1f}"
                f"  worst {min(accuracies):5.1f}  {time.perf_counter() - start:5.0f}s")
    search = GeneticPromptSearch([MUTATORS[mutator](lm)], GPSConfig(**{**vars(profile.search), "seed": seed}),
                                 progress=False)
    doc = run_gps(lm, task, search, out, task.load("train", SHARED), evaluation, settings, seed, resume=True,
                  engine=engine)
    lineage = [json.loads(line) for line in (out / "lineage.jsonl").read_text().splitlines()]
    first = [row for row in lineage if row["iteration"] == 1]
    drawn = random.Random(seed).choice(first)
    unselected = eval_task(lm, task, task_prompt(lm, drawn["text"], name), evaluation, settings, engine=engine)
    write_json(record, {k: doc[k] for k in ("prompt_text", "dev_accuracy", "dev_examples", "metrics", "final",
                                            "prompts_scored", "search_seconds", "history")}
               | {"unselected": {"text": drawn["text"], "dev_accuracy": drawn["dev_accuracy"],
                                 "metrics": unselected["metrics"]}})
    return (f"{name:7} {mutator:10} seed {seed}  GPS {100 * doc['metrics']['accuracy']:5.1f}  "
            f"unselected {100 * unselected['metrics']['accuracy']:5.1f}  "
            f"{time.perf_counter() - start:5.0f}s  {doc['prompt_text']!r}")


def task_prompt(lm: LanguageModel, text: str, task: str) -> TaskPrompt:
    return TaskPrompt(lm, text, 0, tuning="hard", task=task)


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def findings(store: Path) -> list[str]:
    """Per task and mutator: GPS against the handcrafted prompts (mean and best) and against generation alone."""
    out = []
    for name in TASKS:
        manual = store / name / "manual.json"
        if not manual.is_file():
            continue
        accuracies = [m["accuracy"] for m in json.loads(manual.read_text())["metrics"]]
        for mutator in MUTATORS:
            docs = [json.loads(p.read_text()) for s in (0, 1, 2)
                    if (p := store / name / mutator / f"seed-{s}.json").is_file()]
            if not docs:
                continue
            found = statistics.fmean(d["metrics"]["accuracy"] for d in docs)
            plain = statistics.fmean(d["unselected"]["metrics"]["accuracy"] for d in docs)
            verdict = ("beats the best handcrafted prompt" if found > max(accuracies) else
                       "beats their mean, not the best" if found > statistics.fmean(accuracies) else
                       "does not beat the handcrafted prompts")
            out.append(f"- {name}, {mutator} ({len(docs)} seeds): GPS {100 * found:.1f} vs handcrafted mean "
                       f"{100 * statistics.fmean(accuracies):.1f} (best {100 * max(accuracies):.1f}) and an unselected "
                       f"generated prompt {100 * plain:.1f}: {verdict}, {100 * (found - plain):+.1f} from selection.")
    return out


def render(store: Path, args: argparse.Namespace) -> str:
    lines = [
        "# Genetic Prompt Search on SmolLM2 (ZeroPrompt, Xu et al. 2022, Tables 6-7)",
        "",
        f"Model `{args.model}` (causal, fp32, frozen, no multitask training); profile `{args.profile}` "
        f"({PROFILES[args.profile].search}). Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gps.py "
        f"--profile {args.profile}` (resumable; `--render-only` rewrites this page from the committed records). "
        "Accuracy ×100 on a stratified sample of the validation split; GPS rows are mean ± std over seeds (the "
        "seed draws the 32-example dev set and the mutations); manual rows are the three handcrafted prompts G⁰ "
        "(mean ± std over the prompts, then their best and worst). The generator of the mutators is SmolLM2 "
        "itself. The paper's third mutator, back-translation, is not run here: it needs two translation models "
        "and none is available offline; `softprompt search gps --mutator backtranslate --translate-with A "
        "--translate-back B` runs it where they are (tested with tiny T5s).",
        "",
        "| task | method | seeds | accuracy | best | worst | dev accuracy | prompts scored | search s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    texts, missing = [], []
    for name in TASKS:
        manual = store / name / "manual.json"
        if manual.is_file():
            accuracies = [m["accuracy"] for m in json.loads(manual.read_text())["metrics"]]
            lines.append(f"| {name} | manual (G⁰) | – | {cell(accuracies)} | {100 * max(accuracies):.1f} | "
                         f"{100 * min(accuracies):.1f} | – | – | – |")
        for mutator in MUTATORS:
            docs = {s: json.loads(p.read_text()) for s in (0, 1, 2)
                    if (p := store / name / mutator / f"seed-{s}.json").is_file()}
            if len(docs) < 3:
                missing.append(f"{name} {mutator} ({len(docs)}/3 seeds)")
            if not docs:
                continue
            plain = [d["unselected"]["metrics"]["accuracy"] for d in docs.values()]
            found = [d["metrics"]["accuracy"] for d in docs.values()]
            lines.append(f"| {name} | {mutator}, no selection | {len(docs)} | {cell(plain)} | {100 * max(plain):.1f} | "
                         f"{100 * min(plain):.1f} | – | – | – |")
            lines.append(f"| {name} | {mutator} + GPS | {len(docs)} | {cell(found)} | {100 * max(found):.1f} | "
                         f"{100 * min(found):.1f} | {cell([d['dev_accuracy'] for d in docs.values()])} | "
                         f"{statistics.fmean(d['prompts_scored'] for d in docs.values()):.0f} | "
                         f"{statistics.fmean(d['search_seconds'] for d in docs.values()):.0f} |")
            texts += [f"| {name} | {mutator} | {s} | {100 * d['metrics']['accuracy']:.1f} | "
                      f"`{json.dumps(d['prompt_text'])[1:-1]}` |" for s, d in docs.items()]
    lines += ["", "## Findings (generated from the records)", "", *findings(store)]
    lines += ["", "## The prompts GPS found", "", "| task | mutator | seed | accuracy | prompt |",
              "|---|---|---|---|---|", *texts]
    if missing:
        lines += ["", "## Not run yet", "", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
