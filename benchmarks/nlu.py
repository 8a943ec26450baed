"""Prompt tuning on SuperGLUE-style tasks with SmolLM2: zero-shot vs prefix prompt tuning vs hybrid prompt.

    .venv/bin/python benchmarks/nlu.py [--tasks sst2 cb ...] [--methods manual prefix ...] [--seeds 0 1 2]
        [--profile cpu] [--render-only] [--num-cpus N | --address auto] [--unit-cpus C]

Methods (Dayton et al. §3–5, ZeroPrompt §3.4):
- manual: zero-shot with the task's manual template (no training);
- hybrid-hard: zero-shot with the task description and "Options: ..." before the input;
- prefix: 20 soft vectors before the input, initialised from the task description's tokens, trained;
- hybrid: the same 20 trained vectors, then description, options and input (ZeroPrompt's hybrid prompt).

Every (task, method, seed) is one run directory under benchmarks/cache/nlu/<model>/<profile>/; a finished
one (metrics.json) is reused and an interrupted one resumes from its checkpoint. Writes
docs/results/nlu.md from whatever has finished (mean ± std over seeds), listing what has not.

Profile "cpu" fits 2 CPU cores: at most 128 training examples (after holding out up to 32 for early
stopping), ≤8 epochs with patience 5, and at most 300 evaluation examples (SST-2 and BoolQ have more).
A training run then takes 5–15 minutes on one core.
Each (task, method, seed) runs as one Ray task (benchmarks/grid.py): --num-cpus N runs N at once with one thread
each (--unit-cpus C: C threads each), --address a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.engine import Engine
from softprompt.io import write_text
from softprompt.metrics import accuracy, macro_f1
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.sweep import worker_model
from softprompt.tasks import TaskSettings, load_task, run_task
from softprompt.tasks.sampling import stratified_sample

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = shared_data_dir(default=SHARED_DEFAULT)

ROOT = Path(__file__).resolve().parent
TASKS = ("sst2", "cb", "rte", "copa", "wsc", "boolq")
METHODS = {
    "manual": TaskSettings(layout="manual", kind="hard"),
    "hybrid-hard": TaskSettings(layout="hybrid-hard", kind="hard"),
    "prefix": TaskSettings(layout="prefix", length=20, init="text"),
    "hybrid": TaskSettings(layout="hybrid", length=20, init="text"),
}


@dataclass(frozen=True)
class Profile:
    config: TrainConfig
    train_limit: int | None
    dev_size: int
    eval_limit: int | None


PROFILES = {
    "cpu": Profile(TrainConfig(lr=1e-2, batch_size=16, max_epochs=8, patience=5, eval_batch_size=32), 128, 32, 300),
    "full": Profile(TrainConfig(lr=1e-2, batch_size=16, max_epochs=20, patience=5, eval_batch_size=64), None, 200,
                    None),
}


def settings_for(method: str, profile: Profile) -> TaskSettings:
    base = METHODS[method]
    return TaskSettings(**{**base.__dict__, "train_limit": profile.train_limit, "dev_size": profile.dev_size,
                           "eval_limit": profile.eval_limit})


def run_dir(cache: Path, task: str, method: str, seed: int) -> Path:
    return cache / task / method / f"seed-{seed}"


def seeds_of(method: str, seeds: list[int]) -> list[int]:
    return seeds if METHODS[method].kind != "hard" else [0]  # zero-shot runs are deterministic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--render-only", action="store_true")
    add_ray_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "nlu.md")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    profile = PROFILES[args.profile]
    cache = ROOT / "cache" / "nlu" / re.sub(r"[^\w.-]", "_", args.model) / args.profile
    failed: list[str] = []
    if not args.render_only:
        jobs = []
        # Seeds outermost: a partial run still covers every task and method once.
        for seed in sorted(set(args.seeds)):
            for name in args.tasks:
                for method in args.methods:
                    out = run_dir(cache, name, method, seed)
                    if seed in seeds_of(method, args.seeds) and not (out / "metrics.json").is_file():
                        jobs.append((f"{name} {method} seed {seed}", args.model, name, method, seed, args.profile,
                                     out, int(args.unit_cpus)))
        failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    write_text(args.out, render(cache, args, profile))
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def run_unit(label: str, model: str, name: str, method: str, seed: int, profile_name: str, out: Path,
             threads: int) -> str:
    """One (task, method, seed), as a Ray task: run (or resume) it and return the line that reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, None)
    profile, task = PROFILES[profile_name], load_task(name)
    config = TrainConfig(**{**profile.config.__dict__, "seed": seed})
    start = time.perf_counter()
    doc = run_task(lm, task, settings_for(method, profile), config, out, task.load("train", SHARED),
                   task.load("validation", SHARED), resume=True, progress=False, engine=Engine(lm))
    return (f"{name:6} {method:12} seed {seed}  acc {100 * doc['metrics']['accuracy']:5.1f}  "
            f"{time.perf_counter() - start:5.0f}s")


def load_docs(cache: Path, task: str, method: str, seeds: list[int]) -> list[dict[str, Any]]:
    paths = [run_dir(cache, task, method, s) / "metrics.json" for s in seeds_of(method, seeds)]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def findings(means: dict[str, dict[str, float]]) -> list[str]:
    """Which method beats which, task by task, as generated sentences (they follow the cache)."""
    out = []
    for a, b in (("prefix", "manual"), ("hybrid", "manual"), ("hybrid", "prefix"), ("hybrid-hard", "manual")):
        pairs = {t: (m[a], m[b]) for t, m in means.items() if a in m and b in m}
        if not pairs:
            continue
        wins = [t for t, (x, y) in pairs.items() if x > y]
        detail = "; ".join(f"{t} {100 * x:.1f} vs {100 * y:.1f}" for t, (x, y) in pairs.items())
        out.append(f"- {a} beats {b} on {len(wins)} of {len(pairs)} tasks ({detail}).")
    return out


def render(cache: Path, args: argparse.Namespace, profile: Profile) -> str:
    c = profile.config
    lines = [
        "# Prompt tuning on NLU tasks with SmolLM2 (Dayton et al., ZeroPrompt hybrid prompt)",
        "",
        f"Model `{args.model}` (causal, fp32, frozen). Profile `{args.profile}`: Adam lr {c.lr}, batch "
        f"{c.batch_size}, at most {c.max_epochs} epochs, early stopping with patience {c.patience} on "
        f"{profile.dev_size} examples held out from the training split; at most {profile.train_limit} training "
        f"examples and {profile.eval_limit} evaluation examples per task (a stratified sample of the validation "
        "set, seed 0, the same for every method and seed). "
        "Prompts of 20 vectors initialised from the task description's tokens. Scores are the label words' "
        "log-likelihoods (COPA: each choice's summed log-likelihood); all numbers ×100, mean ± std over the "
        "seeds that have finished (training data order and held-out split vary with the seed).",
        "",
        f"Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nlu.py --profile {args.profile}` (resumable; "
        "`--render-only` rewrites this file from the cache).",
        "",
        "Data: SuperGLUE validation sets; BoolQ trains on FewGLUE's 32 examples (the official train set is "
        "not staged), so BoolQ is a few-shot result.",
        "",
        "\"majority\" always predicts the evaluation set's most frequent label (the floor to beat).",
        "",
        "| task | metric | majority | " + " | ".join(args.methods) + " |",
        "|---|---|---|" + "---|" * len(args.methods),
    ]
    missing, times = [], []
    accuracy_means: dict[str, dict[str, float]] = {}
    for name in args.tasks:
        task = load_task(name)
        docs = {m: load_docs(cache, name, m, args.seeds) for m in args.methods}
        accuracy_means[name] = {m: statistics.fmean(d["metrics"]["accuracy"] for d in docs[m])
                                for m in args.methods if docs[m]}
        for m in args.methods:
            expected = len(seeds_of(m, args.seeds))
            if len(docs[m]) < expected:
                missing.append(f"{name} {m} ({len(docs[m])}/{expected} seeds)")
        everything = [e.label for e in task.load("validation", SHARED)]
        labels = [everything[i] for i in stratified_sample(everything, profile.eval_limit, 0)]  # what runs score
        majority = max(set(labels), key=labels.count)
        floor = {"accuracy": accuracy([majority] * len(labels), labels),
                 "macro_f1": macro_f1([majority] * len(labels), labels, task.num_choices), "roc_auc": 0.5}
        for metric in task.metrics:
            cells = [cell([d["metrics"][metric] for d in docs[m]]) for m in args.methods]
            lines.append(f"| {name} | {metric} | {100 * floor[metric]:.1f} | " + " | ".join(cells) + " |")
        for m in args.methods:
            if docs[m]:
                d = docs[m][0]
                times.append(f"| {name} | {m} | {d.get('train_examples', 0)} | {d['metrics']['n']} | "
                             f"{statistics.fmean(x['train_seconds'] for x in docs[m]):.0f} | "
                             f"{statistics.fmean(x['eval_seconds'] for x in docs[m]):.0f} | "
                             f"{statistics.fmean(x.get('best_epoch', 0) for x in docs[m]):.1f} |")
    lines += ["", "## Findings (mean accuracy over the seeds run so far)", "", *findings(accuracy_means)]
    lines += ["", "## Time per run (seconds, mean over seeds)", "",
              "| task | method | train examples | eval examples | train s | eval s | best epoch |",
              "|---|---|---|---|---|---|---|", *times]
    if missing:
        lines += ["", "## Not yet run", "", *[f"- {m}" for m in missing]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
