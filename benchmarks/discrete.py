"""Discrete prompts on SmolLM2 (Patel et al. §4): accuracy against perplexity for PEZ with a fluency
regulariser, RLPrompt with a perplexity reward, and AutoPrompt, beside the manual template and a soft prefix.

    .venv/bin/python benchmarks/discrete.py [--tasks sst2 boolq] [--methods manual soft pez-0 ...]
        [--seeds 0 1 2] [--profile cpu] [--render-only] [--num-cpus N | --address auto] [--unit-cpus C]

Methods:
- manual: the task's template, zero-shot;
- soft: 20 trained vectors before the input (prompt tuning), initialised from the task description; its
  unembedding's accuracy gives Patel's Δ_L and its perplexity;
- pez-λ: PEZ with the fluency regulariser λ·NLL (λ = 0 is plain PEZ), 5 tokens;
- autoprompt: AutoPrompt's swaps, 5 tokens starting from "the";
- rlprompt-α: RLPrompt with reward − α·perplexity, 5 tokens.
Searched tokens sit between the input and the answer ("{input} [P*5]", RLPrompt's "[input] [prompt]
[answer]"), where the candidate scorer computes each input once for all candidates.

Data: few-shot, k training and k dev examples per class drawn with the seed (SST-2: k = 16, Patel's 32-shot;
BoolQ: k = 8 from FewGLUE's 32 examples, the staged train set); evaluation on a stratified sample of the
validation set (seed 0, the same for every method and seed). Perplexities are under the model itself.

Every (task, method, seed) is one run directory under benchmarks/cache/discrete/<model>/<profile>/ (ignored);
an interrupted one resumes from its checkpoint. A finished one is published as a small record (its metrics.json,
with the soft prompt's faithfulness) under benchmarks/results/discrete/<model>/<profile>/, which is committed:
results outlive the cache, and a later checkout skips what is published. Writes docs/results/discrete.md from
the records, listing what has not run. Each (task, method, seed) runs as one Ray task (benchmarks/grid.py):
--num-cpus N runs N at once with one thread each (--unit-cpus C: C threads each), --address a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.analysis.faithfulness import faithfulness
from softprompt.engine import Engine
from softprompt.io import write_json, write_text
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.optimizers.autoprompt import AutoPrompt, AutoPromptConfig
from softprompt.optimizers.base import Optimizer
from softprompt.optimizers.pez import PEZ, PEZConfig
from softprompt.optimizers.rlprompt import RLPrompt, RLPromptConfig
from softprompt.paths import shared_data_dir
from softprompt.prompts import load_prompt
from softprompt.sweep import worker_model
from softprompt.tasks import TaskSettings, load_task, run_task
from softprompt.tasks.run import eval_sample
from softprompt.tasks.task import TaskExample

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parent
TASKS = ("sst2", "boolq")
SHOTS = {"sst2": 16, "boolq": 8}
SEARCH_LAYOUT = "{input} [P*5]"
# λ on the mean token NLL (a few nats); α on the perplexity itself (10^3-10^6 for random tokens), so small.
METHODS = ("manual", "soft", "pez-0", "pez-0.3", "pez-1", "autoprompt", "rlprompt-0", "rlprompt-0.0001",
           "rlprompt-0.001")


@dataclass(frozen=True)
class Profile:
    soft: TrainConfig
    pez: PEZConfig
    autoprompt: AutoPromptConfig
    rlprompt_steps: int
    eval_limit: int | None


PROFILES = {
    # Two CPU cores: a search of 5 tokens takes 3-6 minutes on SST-2.
    "cpu": Profile(TrainConfig(lr=1e-2, batch_size=16, max_epochs=12, patience=4, eval_batch_size=32),
                   PEZConfig(steps=80, batch_size=8, eval_every=20), AutoPromptConfig(steps=40, batch_size=8,
                                                                                       eval_size=16, eval_every=10),
                   60, 200),
    # The references' budgets (PEZ 3000 steps, AutoPrompt 100×10, RLPrompt 12,000 steps in Deng et al.).
    "full": Profile(TrainConfig(lr=1e-2, batch_size=16, max_epochs=40, patience=8, eval_batch_size=64),
                    PEZConfig(), AutoPromptConfig(), 12000, None),
}


def settings_for(task: str, method: str, profile: Profile) -> TaskSettings:
    common = {"shots": SHOTS[task], "eval_limit": profile.eval_limit}
    if method == "manual":
        return TaskSettings(layout="manual", kind="hard", **common)
    if method == "soft":
        return TaskSettings(layout="prefix", length=20, init="text", **common)
    init = {"init": "text", "init_text": "the"} if method == "autoprompt" else {"init": "random"}
    return TaskSettings(layout=SEARCH_LAYOUT, length=5, kind="soft", **init, **common)


def optimizer_for(method: str, profile: Profile, seed: int) -> Optimizer | None:
    name, _, weight = method.partition("-")
    if name == "pez":
        return PEZ(replace(profile.pez, fluency_weight=float(weight), seed=seed), progress=False)
    if name == "autoprompt":
        return AutoPrompt(replace(profile.autoprompt, seed=seed), progress=False)
    if name == "rlprompt":
        return RLPrompt(RLPromptConfig(steps=profile.rlprompt_steps, alpha=float(weight), seed=seed), progress=False)
    return None


def run_dir(cache: Path, task: str, method: str, seed: int) -> Path:
    return cache / task / method / f"seed-{seed}"


def seeds_of(method: str, seeds: list[int]) -> list[int]:
    return [0] if method == "manual" else seeds


def record_path(store: Path, task: str, method: str, seed: int) -> Path:
    return store / task / method / f"seed-{seed}.json"


def publish(lm: LanguageModel, engine: Engine, out: Path, record: Path, task_name: str, method: str,
            profile: Profile) -> None:
    """Write the committed record of a finished run: its metrics (with the search's history and the prompt's
    text), and for a soft prompt Patel's Δ_L and the perplexity of its unembedding."""
    doc = json.loads((out / "metrics.json").read_text())
    if method == "soft":
        prompt = load_prompt(out / "prompt.safetensors", lm)
        doc["faithfulness"] = faithfulness(engine, prompt, load_task(task_name), evaluation_sample(task_name, profile),
                                           reference=lm).to_dict()
    write_json(record, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--render-only", action="store_true")
    add_ray_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "discrete.md")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    profile = PROFILES[args.profile]
    model_dir = re.sub(r"[^\w.-]", "_", args.model)
    cache = ROOT / "cache" / "discrete" / model_dir / args.profile
    store = ROOT / "results" / "discrete" / model_dir / args.profile
    failed: list[str] = []
    if not args.render_only:
        jobs = []
        for seed in sorted(set(args.seeds)):  # seeds outermost: a partial run covers every method once
            for name in args.tasks:
                for method in args.methods:
                    out, record = run_dir(cache, name, method, seed), record_path(store, name, method, seed)
                    if seed in seeds_of(method, args.seeds) and not record.is_file():
                        jobs.append((f"{name} {method} seed {seed}", args.model, name, method, seed, args.profile,
                                     out, record, int(args.unit_cpus)))
        failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    # The page describes every record published, whatever subset this call ran.
    grid = argparse.Namespace(**{**vars(args), "tasks": list(TASKS), "methods": list(METHODS), "seeds": [0, 1, 2]})
    write_text(args.out, render(store, grid, profile))
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def run_unit(label: str, model: str, name: str, method: str, seed: int, profile_name: str, out: Path, record: Path,
             threads: int) -> str:
    """One (task, method, seed), as a Ray task: run (or resume) it, publish its record, and return the line that
    reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, None)
    engine, profile, task = Engine(lm), PROFILES[profile_name], load_task(name)
    start = time.perf_counter()
    if not (out / "metrics.json").is_file():
        run_task(lm, task, settings_for(name, method, profile), replace(profile.soft, seed=seed), out,
                 task.load("train", SHARED), task.load("validation", SHARED), resume=True, progress=False,
                 engine=engine, search=optimizer_for(method, profile, seed))
    publish(lm, engine, out, record, name, method, profile)
    doc = json.loads(record.read_text())
    return (f"{name:6} {method:14} seed {seed}  acc {100 * doc['metrics']['accuracy']:5.1f}  "
            f"{time.perf_counter() - start:5.0f}s  {doc.get('prompt_text', '')!r}")


def load_docs(store: Path, task: str, method: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The published records of these seeds, each with its ``seed``."""
    paths = {seed: record_path(store, task, method, seed) for seed in seeds_of(method, seeds)}
    return [json.loads(p.read_text()) | {"seed": seed} for seed, p in paths.items() if p.is_file()]


def cell(values: list[float], scale: float = 100, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def scorings(doc: dict[str, Any]) -> int | None:
    """(prompt, example) pairs scored: a search's count, or a soft run's epochs × (train + dev) examples."""
    history = doc.get("history") or []
    if history and "evaluations" in history[-1]:
        return history[-1]["evaluations"]
    if history:
        return (len(history) - 1) * doc["train_examples"] + len(history) * doc["dev_examples"]
    return None


def trade_off(means: dict[str, tuple[float, float | None]], family: str, weight: str) -> str | None:
    """How a family's accuracy and perplexity move as its fluency weight grows, as a sentence."""
    runs = sorted(((float(m.partition("-")[2]), v) for m, v in means.items() if m.startswith(family + "-")))
    if len(runs) < 2:
        return None
    steps = ", ".join(f"{weight} = {w:g}: {100 * a:.1f} at perplexity "
                      f"{'–' if p is None else f'{p:,.0f}'}" for w, (a, p) in runs)
    perplexities = [p for _, (_, p) in runs if p is not None]
    falls = len(perplexities) == len(runs) and all(b <= a for a, b in pairwise(perplexities)) \
        and perplexities[-1] < perplexities[0]
    costs = all(b[1][0] <= a[1][0] for a, b in pairwise(runs))
    verdict = ("perplexity falls and accuracy never rises as the weight grows: the trade-off Patel et al. report"
               if falls and costs else "not the monotone trade-off Patel et al. report")
    return f"{family}: {steps}; {verdict}."


def evaluation_sample(task: str, profile: Profile) -> list[TaskExample]:
    """The validation examples every method is scored on, drawn as run_task draws them."""
    evaluation = load_task(task).load("validation", SHARED)
    indices = eval_sample(load_task(task), evaluation, TaskSettings(eval_limit=profile.eval_limit))[0]
    return [evaluation[i] for i in indices]


def majority(task: str, profile: Profile) -> float | None:
    """The share of the evaluation sample's most frequent label: what always answering one class scores."""
    if SHARED is None:
        return None
    labels = [e.label for e in evaluation_sample(task, profile)]
    return max(labels.count(label) for label in set(labels)) / len(labels)


def same_prompts(store: Path, task: str, methods: list[str], seeds: list[int]) -> str | None:
    """RLPrompt's α > 0 runs that end on the same prompt in every seed, and why, as a sentence."""
    alphas = [m for m in methods if m.startswith("rlprompt-") and float(m.partition("-")[2]) > 0]
    runs = [{d["seed"]: d for d in load_docs(store, task, m, seeds)} for m in alphas]
    if len(runs) < 2:
        return None
    shared = [s for s in runs[0] if all(s in r and r[s]["prompt_text"] == runs[0][s]["prompt_text"] for r in runs)]
    if not shared:
        return None
    rewards = [line["reward"] for r in runs for line in r[shared[0]]["history"] if line.get("reward") is not None]
    return (f"{' and '.join(alphas)} end on the same prompt in {len(shared)} of {len(runs[0])} seeds. Each step's "
            "rewards are z-scored across its prompts, so once α × perplexity outweighs the gap reward (at most "
            f"200 in size; the mean step reward of these runs reaches {min(rewards):,.0f}) the normalised reward, "
            "and with it the search, hardly depends on α: this α range sets no trade-off to trace.")


def findings(store: Path, args: argparse.Namespace, profile: Profile) -> list[str]:
    out = []
    for name in args.tasks:
        means: dict[str, tuple[float, float | None]] = {}
        for method in args.methods:
            docs = load_docs(store, name, method, args.seeds)
            if docs:
                ppl = [d.get("perplexity") for d in docs if d.get("perplexity") is not None]
                means[method] = (statistics.fmean(d["metrics"]["accuracy"] for d in docs),
                                 statistics.fmean(ppl) if ppl else None)
        if not means:
            continue
        order = sorted(means, key=lambda m: -means[m][0])
        out.append(f"- {name}, by mean accuracy: " + ", ".join(f"{m} {100 * means[m][0]:.1f}" for m in order) + ".")
        if (share := majority(name, profile)) is not None:
            above = [m for m in order if means[m][0] > share]
            out.append(f"- {name}: always answering the majority class scores {100 * share:.1f}; "
                       + (f"above it: {', '.join(above)}." if above else "no method is above it."))
        out += [f"- {name} {s}" for f, w in (("pez", "λ"), ("rlprompt", "α")) if (s := trade_off(means, f, w))]
        if note := same_prompts(store, name, args.methods, args.seeds):
            out.append(f"- {name} rlprompt: {note}")
        if name == "boolq" and {"pez-0", "soft", "manual"} <= set(means):
            pez, soft, manual = (100 * means[m][0] for m in ("pez-0", "soft", "manual"))
            out.append(f"- boolq against Patel et al. (T5-small: PEZ 38, at the no-prompt level, 24 points below "
                       f"soft 62): PEZ {pez:.1f}, soft {soft:.1f} ({soft - pez:+.1f}), the manual prompt "
                       f"{manual:.1f}.")
    return out


def render(store: Path, args: argparse.Namespace, profile: Profile) -> str:
    lines = [
        "# Discrete prompts on SmolLM2: PEZ with a fluency regulariser, RLPrompt with a perplexity reward, "
        "AutoPrompt (Patel et al. §4)",
        "",
        f"Model `{args.model}` (causal, fp32, frozen); profile `{args.profile}`. Reproduce: "
        f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/discrete.py --profile {args.profile}` (resumable; "
        "`--render-only` rewrites this file from the committed records). The method list and the data are in the "
        "script's docstring. Accuracy ×100, mean ± std over the seeds that finished; perplexity of the prompt's tokens "
        "under the model itself (mean over seeds); Δ_L is "
        "|accuracy of the soft prompt − accuracy of its nearest-token unembedding| (0 by construction for the "
        "discrete methods, whose vectors are tokens); scorings are (prompt, example) pairs scored, forward "
        "passes of one example under one prompt.",
        "",
        "| task | method | seeds | accuracy | perplexity | Δ_L | train s | scorings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    missing, texts = [], []
    for name in args.tasks:
        for method in args.methods:
            docs = load_docs(store, name, method, args.seeds)
            expected = len(seeds_of(method, args.seeds))
            if len(docs) < expected:
                missing.append(f"{name} {method} ({len(docs)}/{expected} seeds)")
            if not docs:
                continue
            accuracy = [d["metrics"]["accuracy"] for d in docs]
            if method == "soft":
                perplexity = [d["faithfulness"]["perplexity"] for d in docs if "faithfulness" in d]
                delta = cell([d["faithfulness"]["performance"] for d in docs if "faithfulness" in d])
            else:
                perplexity = [d.get("perplexity") for d in docs]
                delta = "–" if method == "manual" else "0"
            counts = [scorings(d) for d in docs]
            lines.append(f"| {name} | {method} | {len(docs)} | {cell(accuracy)} | {cell(perplexity, 1, 0)} | {delta} | "
                         f"{statistics.fmean(d['train_seconds'] for d in docs):.0f} | "
                         f"{cell(counts, 1, 0) if None not in counts else '–'} |")
            for d in docs:
                if "prompt_text" in d:
                    texts.append(f"| {name} | {method} | {d['seed']} | {100 * d['metrics']['accuracy']:.1f} | "
                                 f"{d['perplexity']:.0f} | `{json.dumps(d['prompt_text'])[1:-1]}` |")
    lines += ["", "## Findings (generated from the table)", "", *findings(store, args, profile)]
    lines += ["", "## The prompts found", "", "| task | method | seed | accuracy | perplexity | text |",
              "|---|---|---|---|---|---|", *texts]
    if missing:
        lines += ["", "## Not run yet", "", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
