"""ZeroPrompt's multitask half on SmolLM2 (Xu et al. 2022): task scaling (Figure 5), the unseen-task prompt init
(Table 5) and the verbalizer part of the prompt-design ablation (Table 4), with the LM frozen.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/zeroprompt.py [--profile cpu] [--shared deep lora]
        [--sizes 1 2 4 8] [--seeds 0 1 2] [--render-only] [--num-cpus N | --address auto] [--unit-cpus C]

Tasks (the built-in pool, ``softprompt task list``):
- training pool, in a fixed order: sst2, trec, mrpc, cb, subj, cr, mpqa, sst5 (sentiment, question type,
  paraphrase, NLI, subjectivity); a model with k training tasks takes k of them, drawn with the seed;
- unseen tasks, never trained on: mr (sentiment: a seen type), rte (NLI: a seen type), agnews (topic: an unseen
  type) and copa (commonsense: an unseen type).

Units, each a run directory under benchmarks/cache/zeroprompt/<model>/<profile>/ (ignored, resumable) whose
result is published as a record under benchmarks/results/zeroprompt/<model>/<profile>/ (committed):
- ``base``: no training (k = 0): every unseen task under the hybrid layout without a soft prompt (``none``) and
  with a random one (``random``; seeded);
- ``<shared>-k<k>-seed<s>``: a multitask model (per-task E_t in the hybrid layout + a shared ``deep`` prompt or
  ``lora`` adapters) trained on k tasks, then every unseen task under E_new = random (at the largest k also
  none, top1 and weighted: Table 5), and every training task under its own E_t;
- Table 4's designs at the largest k: without the options (−V, deep and LoRA), and, LoRA only, without the task
  prompts E (−E) and without both (−E −V); unseen tasks under E_new = random.
Scores: accuracy on a stratified sample of each unseen task's validation split (seed 0, the same everywhere).
Each unit runs as one Ray task (benchmarks/grid.py): --num-cpus N runs N at once with one thread each (--unit-cpus
C: C threads each), --address a Ray cluster; ``base`` runs first, in this process.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.engine import Engine
from softprompt.io import write_json, write_text
from softprompt.models import load_model
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import TaskSettings, load_task
from softprompt.tasks.run import eval_task
from softprompt.zeroprompt import MultitaskSettings, eval_multitask, load_multitask, train_multitask

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parent
POOL = ("sst2", "trec", "mrpc", "cb", "subj", "cr", "mpqa", "sst5")
UNSEEN = ("mr", "rte", "agnews", "copa")
INITS = ("none", "random", "top1", "weighted")
NO_OPTIONS = "[P*{n}]{description}\n{input}"
# Table 4's prompt designs: E (task soft prompt), V (the options), D (the description), each with D and the input.
DESIGNS = {"hybrid": "E + V + D (hybrid)", NO_OPTIONS: "E + D (−V)", "hybrid-hard": "V + D (−E)",
           "{description}\n{input}": "D (−E −V)"}
SUFFIXES = {"hybrid": "", NO_OPTIONS: "-noV", "hybrid-hard": "-noE", "{description}\n{input}": "-noEV"}


@dataclass(frozen=True)
class Profile:
    settings: MultitaskSettings
    config: TrainConfig
    eval_limit: int


PROFILES = {
    # One thread, two units on two cores: k = 8 trains 3 epochs of 8 × 64 examples in 8-15 minutes; evaluating the
    # 4 unseen tasks under 4 inits and the 8 seen tasks, 100 examples each, takes 6-10.
    "cpu": Profile(MultitaskSettings(length=10, cap=64, dev_size=16), TrainConfig(lr=1e-2, batch_size=16,
                                                                                  max_epochs=3, patience=2), 100),
    "full": Profile(MultitaskSettings(length=20, cap=500, dev_size=32), TrainConfig(lr=1e-2, batch_size=16,
                                                                                    max_epochs=10, patience=3), 500),
    # The script end to end in a few minutes; its records stay in the cache.
    "smoke": Profile(MultitaskSettings(length=4, cap=8, dev_size=4, feature_inputs=8),
                     TrainConfig(lr=1e-2, batch_size=8, max_epochs=1, patience=1), 8),
}


def training_tasks(k: int, seed: int) -> list[str]:
    """k tasks of the pool, drawn with the seed (the same draw for deep and lora)."""
    return sorted(random.Random(seed).sample(POOL, k), key=POOL.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--shared", nargs="*", default=["deep", "lora"], choices=["deep", "lora"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--no-ablation", action="store_true", help="skip the −V units")
    parser.add_argument("--render-only", action="store_true")
    add_ray_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "zeroprompt.md")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    profile = PROFILES[args.profile]
    model_dir = re.sub(r"[^\w.-]", "_", args.model)
    cache = ROOT / "cache" / "zeroprompt" / model_dir / args.profile
    store = ROOT / ("cache" if args.profile == "smoke" else "results") / "zeroprompt" / model_dir / args.profile
    failed: list[str] = []
    if not args.render_only:
        run_base(args, profile, store, load_data(UNSEEN))
        units = [(shared, k, seed, "hybrid") for seed in args.seeds for k in args.sizes for shared in args.shared]
        if not args.no_ablation:  # −V for both shared components; −E only for LoRA (deep needs prompt positions)
            units += [(shared, max(args.sizes), seed, layout) for seed in args.seeds for shared, layout in
                      (("deep", NO_OPTIONS), ("lora", NO_OPTIONS), ("lora", "hybrid-hard"),
                       ("lora", "{description}\n{input}")) if shared in args.shared]
        # Table 5 compares the inits at the largest k only; elsewhere the tables read E_new = random alone.
        jobs = [(name, args.model, args.profile, cache / name, store / f"{name}.json", shared, k, seed, layout,
                 INITS if (k, layout) == (max(args.sizes), "hybrid") else ("random",), int(args.unit_cpus))
                for shared, k, seed, layout in units
                if not (store / f"{(name := unit_name(shared, k, seed, layout))}.json").is_file()]
        failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    # The page describes every seed's published records, whatever subset this call ran.
    write_text(args.out, render(store, argparse.Namespace(**{**vars(args), "seeds": sorted({0, 1, 2, *args.seeds})})))
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def load_data(names: Sequence[str]) -> dict[str, Any]:
    """Each task with its staged training and validation examples."""
    return {name: (task := load_task(name), task.load("train", SHARED), task.load("validation", SHARED))
            for name in names}


def unit_name(shared: str, k: int, seed: int, layout: str) -> str:
    return f"{shared}{SUFFIXES[layout]}-k{k}-seed{seed}"


def run_base(args: argparse.Namespace, profile: Profile, store: Path, data: dict[str, Any]) -> None:
    """k = 0: the unseen tasks under the hybrid layout without a soft prompt, and with a random one."""
    record = store / "base.json"
    if record.is_file():
        return
    lm = load_model(args.model)
    engine = Engine(lm)
    settings = TaskSettings(eval_limit=profile.eval_limit)
    n = profile.settings.length
    doc: dict[str, Any] = {"unseen": {}}
    for name in UNSEEN:
        task, _, evaluation = data[name]
        doc["unseen"][name] = {"none": eval_task(lm, task, TaskPrompt(lm, "hybrid-hard", 0, tuning="hard"),
                                                 evaluation, settings, engine=engine)["metrics"]}
        doc["unseen"][name]["random"] = {str(seed): eval_task(lm, task, TaskPrompt(
            lm, "hybrid", n, tuning="soft", init="random", seed=seed), evaluation, settings, engine=engine)["metrics"]
            for seed in args.seeds}
        print(f"base {name}: none {100 * doc['unseen'][name]['none']['accuracy']:.1f}", flush=True)
    write_json(record, doc)


def run_unit(label: str, model_name: str, profile_name: str, out: Path, record: Path, shared: str, k: int, seed: int,
             layout: str, inits: Sequence[str], threads: int) -> str:
    """One multitask model, as a Ray task: train (or resume) it, evaluate it, publish its record, and return the
    line that reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    start = time.perf_counter()
    profile = PROFILES[profile_name]
    lm = load_model(model_name)  # a fresh model: LoRA adapters attach to the model they train
    engine = Engine(lm)
    names = training_tasks(k, seed)
    data = load_data([*names, *UNSEEN])
    settings = replace(profile.settings, shared=shared, layout=layout)
    trained = train_multitask(lm, [data[n][0] for n in names], [data[n][1] for n in names], settings,
                              replace(profile.config, seed=seed), out, resume=True, progress=False, engine=engine)
    evaluated = time.perf_counter()
    model = load_multitask(out, lm)
    doc: dict[str, Any] = {"tasks": names, "shared": shared, "layout": layout, "seed": seed,
                           "train_seconds": trained.get("train_seconds"), "dev_metrics": trained.get("dev_metrics"),
                           "unseen": {}, "seen": {}}
    for name in UNSEEN:
        task, _, evaluation = data[name]
        doc["unseen"][name] = {}
        for init in inits:
            result = eval_multitask(model, task, evaluation, init=init, seed=seed, eval_limit=profile.eval_limit,
                                    engine=engine)
            doc["unseen"][name][init] = result["metrics"] | {"weights": result.get("weights")}
    for name in names:
        task, _, evaluation = data[name]
        doc["seen"][name] = eval_multitask(model, task, evaluation, seed=seed, eval_limit=profile.eval_limit,
                                           engine=engine)["metrics"]
    doc["seconds"], doc["eval_seconds"] = time.perf_counter() - start, time.perf_counter() - evaluated
    write_json(record, doc)
    return f"{label}: tasks {', '.join(names)}; unseen (random E) {100 * unseen_mean(doc):.1f}; {doc['seconds']:.0f}s"


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def render(store: Path, args: argparse.Namespace) -> str:
    profile = PROFILES[args.profile]
    records = {p.stem: json.loads(p.read_text()) for p in sorted(store.glob("*.json"))} if store.is_dir() else {}
    lines = [
        "# ZeroPrompt on SmolLM2: task scaling, unseen-task prompts, prompt design (Xu et al. 2022)",
        "",
        f"Model `{args.model}` (causal, fp32, frozen); profile `{args.profile}`: {profile.settings}, "
        f"{profile.config}, {profile.eval_limit} evaluation examples per task. Reproduce: "
        f"`OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/zeroprompt.py --profile {args.profile}` (resumable; "
        "`--render-only` rewrites this page from the committed records). Training pool: "
        f"{', '.join(POOL)} (k tasks drawn with the seed); unseen tasks: {', '.join(UNSEEN)}. Accuracy ×100, mean ± "
        "std over seeds (the seed draws the training tasks and seeds training and the random E).",
        "",
        "## Task scaling (Figure 5): mean unseen-task accuracy against the number of training tasks",
        "",
        "| shared | k = 0 | " + " | ".join(f"k = {k}" for k in args.sizes) + " |",
        "|---|---|" + "---|" * len(args.sizes),
    ]
    base = records.get("base")
    base_random = cell(list(base_by_seed(base, args.seeds).values())) if base else "–"
    missing = []
    for shared in ("deep", "lora"):
        row = [shared, base_random]
        for k in args.sizes:
            docs = unit_docs(records, shared, k, "hybrid", args.seeds)
            if len(docs) < len(args.seeds):
                missing.append(f"{shared} k={k} ({len(docs)}/{len(args.seeds)} seeds)")
            row.append(cell([unseen_mean(d) for d in docs]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "k = 0 is the untrained LM under the hybrid layout with a random E; every other column is a "
              "multitask model with E_new = random on the unseen tasks.", "",
              "## Unseen-task prompt init (Table 5), per unseen task, k = " + str(max(args.sizes)), "",
              "| shared | task | " + " | ".join(INITS) + " |", "|---|---|" + "---|" * len(INITS)]
    for shared in ("deep", "lora"):
        docs = unit_docs(records, shared, max(args.sizes), "hybrid", args.seeds)
        for name in UNSEEN:
            if docs:
                lines.append(f"| {shared} | {name} | " + " | ".join(
                    cell([d["unseen"][name][i]["accuracy"] for d in docs]) for i in INITS) + " |")
    if base:
        lines.append("| untrained | (all) | " + cell([statistics.fmean(base["unseen"][n]["none"]["accuracy"]
                                                                       for n in UNSEEN)]) + " | " + base_random
                     + " | – | – |")
    lines += ["", f"## Prompt design (Table 4), k = {max(args.sizes)}", "",
              "| shared | layout | seen tasks (own E) | unseen tasks (random E) |", "|---|---|---|---|"]
    for shared in ("deep", "lora"):
        for layout, label in DESIGNS.items():
            docs = unit_docs(records, shared, max(args.sizes), layout, args.seeds)
            if layout != "hybrid" and (shared == "lora" or layout == NO_OPTIONS) and len(docs) < len(args.seeds):
                missing.append(f"{shared} {label} k={max(args.sizes)} ({len(docs)}/{len(args.seeds)} seeds)")
            if not docs:
                continue
            seen = [seen_mean(d) for d in docs]
            unseen = [unseen_mean(d) for d in docs]
            lines.append(f"| {shared} | {label} | {cell(seen)} | {cell(unseen)} |")
    lines += ["", "With a deep shared component, `none` leaves nothing of the training: the deep prompt lives at the "
              "[P] positions that `none` drops, so its `none` column is the untrained LM's score.", "",
              "Without E (−E) there is no task prompt to choose, so every init gives the same prompt; a deep "
              "shared prompt needs prompt positions, so −E runs with LoRA only."]
    units = [d for name, d in records.items() if name != "base"]
    if units:
        train, evaluation = (sum(t) / 3600 for t in zip(*map(unit_seconds, units), strict=True))
        lines += ["", f"CPU budget: {len(units)} multitask models, {train + evaluation:.1f} core-hours in all "
                  f"(training {train:.1f}, evaluation {evaluation:.1f}), two units at a time on the machine's two "
                  "cores, one thread each, at times beside other benchmarks."]
    lines += ["", "## Findings (generated from the tables)", "", *findings(records, args)]
    if missing:
        lines += ["", "## Not run yet", "", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


def unit_docs(records: dict[str, Any], shared: str, k: int, layout: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The published records of one configuration, one per seed that has finished."""
    return [records[n] for s in seeds if (n := unit_name(shared, k, s, layout)) in records]


def unit_seconds(doc: dict[str, Any]) -> tuple[float, float]:
    """A unit's training seconds (summed over resumed calls) and evaluation seconds. A record from before
    ``eval_seconds`` timed only its last call: what it spent past the training, or all of it where the training
    had finished in an earlier call."""
    train = doc.get("train_seconds") or 0.0
    if "eval_seconds" in doc:
        return train, doc["eval_seconds"]
    return train, doc["seconds"] - train if doc["seconds"] > train else doc["seconds"]


def unseen_mean(doc: dict[str, Any], init: str = "random") -> float:
    """A multitask model's accuracy under one E_new init, averaged over the unseen tasks."""
    return statistics.fmean(doc["unseen"][n][init]["accuracy"] for n in UNSEEN)


def findings(records: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What the tables say against the paper's three claims: more training tasks help unseen tasks, a random E_new
    is the best init, and each part of the hybrid prompt helps. Two configurations are compared seed by seed (one
    seed draws the same training tasks and the same random E for both), and a difference counts only where it has
    the same sign in every seed; three seeds make no significance test, so the page says no more than that."""
    out, top = [], max(args.sizes)
    base = records.get("base")
    for shared in ("deep", "lora"):
        curve = {k: v for k in args.sizes if (v := by_seed(records, shared, k, "hybrid", args.seeds, unseen_mean))}
        if not curve:
            continue
        if base:
            curve = {0: base_by_seed(base, args.seeds)} | curve
        means = {k: statistics.fmean(v.values()) for k, v in curve.items()}
        last, best = max(curve), max(means, key=means.__getitem__)
        line = f"- Task scaling, {shared}: mean unseen-task accuracy " + ", ".join(
            f"k = {k}: {cell(list(v.values()))}" for k, v in curve.items())
        if 0 in curve and last and (gain := paired(curve[last], curve[0])):
            line += f"; k = {last} against k = 0: {delta(gain)}, " + (
                ("higher in every seed: more training tasks help unseen tasks, as in the paper's Figure 5"
                 if gain[0] > 0 else "lower in every seed, the opposite of the paper's Figure 5")
                if consistent(gain) else "not the same sign in every seed: no consistent gain, unlike the paper's "
                                         "Figure 5")
            if best != last and (drop := paired(curve[last], curve[best])):
                line += (f"; the curve peaks at k = {best}, and k = {last} is {delta(drop)} from it ("
                         + ("lower in every seed)" if consistent(drop) else "not lower in every seed)"))
        seeds = min(len(v) for v in curve.values())
        out.append(line + (f" ({seeds} seed{'s' if seeds > 1 else ''} at the thinnest point: not yet a trend)."
                           if seeds < 3 else "."))
        docs = unit_docs(records, shared, top, "hybrid", args.seeds)
        collapsed = [f"seed {d['seed']}: " + ", ".join(f"{n} {100 * m['accuracy']:.0f}" for n, m in low)
                     for d in docs if (low := [(n, m) for n, m in d["seen"].items()
                                               if m["accuracy"] < 1 / load_task(n).num_choices])]
        if collapsed:
            out.append(f"- Training tasks given up, {shared} at k = {top}: in {len(collapsed)} of {len(docs)} seeds a "
                       "task it trains on ends below uniform chance (1 / its labels) under its own E ("
                       + "; ".join(collapsed) + "): checkpoints are chosen on the mean dev loss over the tasks, "
                       "which one task can lose while the others gain.")
        inits = {i: by_seed(records, shared, top, "hybrid", args.seeds, lambda d, i=i: unseen_mean(d, i))
                 for i in INITS}
        if inits["random"]:
            order = sorted(INITS, key=lambda i: -statistics.fmean(inits[i].values()))
            wins = sum(all(inits["random"][s] >= inits[i][s] for i in INITS) for s in inits["random"])
            n = len(inits["random"])
            line = (f"- E_new init, {shared} at k = {top}: " + ", ".join(
                f"{i} {cell(list(inits[i].values()))}" for i in order)
                + f"; random is the best init (or tied) in {wins} of {n} seed{'s' if n > 1 else ''}")
            if order[0] == "random":
                lead = paired(inits["random"], inits[order[1]])
                out.append(line + f"; random is best on average, {delta(lead)} over {order[1]}, " + (
                    "ahead in every seed, as the paper's Table 5 finds." if consistent(lead) else
                    "not ahead in every seed: the paper's Table 5 is neither confirmed nor refuted here."))
            else:
                lead = paired(inits[order[0]], inits["random"])
                out.append(line + f"; {order[0]} is best on average, {delta(lead)} over random, " + (
                    "ahead in every seed: not random as in the paper's Table 5." if consistent(lead) else
                    "not ahead in every seed: the paper's Table 5 is neither confirmed nor refuted here."))
        full = {part: by_seed(records, shared, top, "hybrid", args.seeds, score)
                for part, score in (("seen", seen_mean), ("unseen", unseen_mean))}
        ablated = {label: {part: by_seed(records, shared, top, layout, args.seeds, score)
                           for part, score in (("seen", seen_mean), ("unseen", unseen_mean))}
                   for layout, label in DESIGNS.items() if layout != "hybrid"}
        diffs = {label: {part: paired(v[part], full[part]) for part in v} for label, v in ablated.items()}
        diffs = {label: d for label, d in diffs.items() if d["unseen"] and d["seen"]}
        if diffs:
            costs = sum(d["unseen"][0] < 0 for d in diffs.values())
            always = sum(d["unseen"][0] < 0 and consistent(d["unseen"]) for d in diffs.values())
            out.append(f"- Prompt design, {shared} at k = {top}: against {DESIGNS['hybrid']}, " + ", ".join(
                f"{label} seen {delta(d['seen'])}, unseen {delta(d['unseen'])}" for label, d in diffs.items())
                + f"; removing a part lowers mean unseen-task accuracy in {costs} of {len(diffs)} ({always} in "
                "every seed), where the paper's Table 4 finds every removal costs.")
    return out


def by_seed(records: dict[str, Any], shared: str, k: int, layout: str, seeds: Sequence[int],
            score: Callable[[dict[str, Any]], float]) -> dict[int, float]:
    """One configuration's score, per seed that has finished."""
    return {d["seed"]: score(d) for d in unit_docs(records, shared, k, layout, seeds)}


def base_by_seed(base: dict[str, Any], seeds: Sequence[int]) -> dict[int, float]:
    """The untrained LM's (k = 0) mean unseen-task accuracy under each seed's random E."""
    return {s: statistics.fmean(base["unseen"][n]["random"][str(s)]["accuracy"] for n in UNSEEN)
            for s in seeds if str(s) in base["unseen"][UNSEEN[0]]["random"]}


def seen_mean(doc: dict[str, Any]) -> float:
    """A multitask model's accuracy on its own training tasks, each under its own E, averaged over them."""
    return statistics.fmean(m["accuracy"] for m in doc["seen"].values())


def paired(after: dict[int, float], before: dict[int, float]) -> list[float] | None:
    """``after - before`` per seed, over the seeds both have; None if they share none."""
    return [after[s] - before[s] for s in after if s in before] or None


def delta(diffs: list[float]) -> str:
    """Per-seed differences as mean ± std ×100."""
    mean = 100 * statistics.fmean(diffs)
    return f"{mean:+.1f} ± {100 * statistics.stdev(diffs):.1f}" if len(diffs) > 1 else f"{mean:+.1f} (1 seed)"


def consistent(diffs: list[float]) -> bool:
    """Whether a difference has one sign in every seed (one seed never counts)."""
    return len(diffs) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs))


if __name__ == "__main__":
    main()
