"""T-REx-10 with SmolLM2: AutoPrompt and PEZ beside the manual template (the "AutoPrompt" row of Qin & Eisner's
Table 1, for our model), on the facts of benchmarks/lama.py.

    .venv/bin/python benchmarks/trex_discrete.py [--relations P1001 ...] [--methods hard autoprompt-5 ...]
        [--steps 100] [--test-limit 300] [--render-only] [--num-cpus N | --address auto] [--unit-cpus C]

Methods:
- hard: the LAMA template, as in lama.md (rerun here: it is cheap and makes the comparison same-run);
- autoprompt-5 / pez-5: five [T] triggers between subject and answer, "[X] [T] [T] [T] [T] [T] [Y]", from
  "the" (AutoPrompt's start) or random common tokens (PEZ's);
- autoprompt-template / pez-template: every token of the LAMA template searched, starting from its words.
Each search keeps the prompt with the best dev P@1 (then dev loss); the test metrics rank the answer over
the whole vocabulary, as in lama.md. The soft (48.1) and deep (51.0) macro P@1 of lama.md are quoted, not
rerun (hours of CPU).

Resumable: each (relation, method) run lives in benchmarks/cache/trex_discrete/<model>/<relation>/<method>/
(ignored), and an interrupted one resumes from its checkpoint. A finished one is published as its metrics.json
under benchmarks/results/trex_discrete/<model>/steps-N/ (committed), which a later checkout skips. Writes
docs/results/trex_discrete.md from the records. Each (relation, method) runs as one Ray task (benchmarks/grid.py):
--num-cpus N runs N at once with one thread each (--unit-cpus C: C threads each), --address a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.engine import Engine
from softprompt.io import write_text
from softprompt.metrics import macro_average
from softprompt.optimizers import TrainConfig
from softprompt.optimizers.autoprompt import AutoPrompt, AutoPromptConfig
from softprompt.optimizers.base import Optimizer
from softprompt.optimizers.pez import PEZ, PEZConfig
from softprompt.paths import shared_data_dir
from softprompt.probing import TREX10, load_relation
from softprompt.probing.probe import run_probe
from softprompt.probing.relations import Relation
from softprompt.sweep import worker_model

SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parent
METHODS = ("hard", "autoprompt-template", "pez-5", "autoprompt-5", "pez-template")
TRIGGERS = "[X] [T] [T] [T] [T] [T] [Y]"
# lama.md's macro P@1 over the ten relations (benchmarks/lama.py, same facts and model).
QUOTED = {"soft": 48.1, "deep": 51.0}


def search_for(method: str, steps: int) -> Optimizer | None:
    name = method.partition("-")[0]
    if name == "autoprompt":
        return AutoPrompt(AutoPromptConfig(steps=steps, eval_size=32, eval_every=max(1, steps // 5)), progress=False)
    if name == "pez":
        return PEZ(PEZConfig(steps=steps, batch_size=32, eval_every=max(1, steps // 5)), progress=False)
    return None


def relation_for(method: str, relation: Relation) -> tuple[Relation, str]:
    """The relation with the method's template, and the search's start."""
    if method.endswith("-5"):
        start = "the" if method.startswith("autoprompt") else "random"
        return Relation(relation.name, TRIGGERS, relation.splits), start
    return relation, "keep" if method != "hard" else "template"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relations", nargs="*", default=list(TREX10))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--test-limit", type=int, default=300, help="first N single-token test facts")
    parser.add_argument("--render-only", action="store_true")
    add_ray_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "trex_discrete.md")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    model_dir = re.sub(r"[^\w.-]", "_", args.model)
    cache = ROOT / "cache" / "trex_discrete" / model_dir
    store = ROOT / "results" / "trex_discrete" / model_dir / f"steps-{args.steps}"
    failed: list[str] = []
    if not args.render_only:
        jobs = []
        for method in args.methods:  # methods outermost: a partial run covers every relation for a method
            for rel in args.relations:
                out, record = cache / rel / method, store / rel / f"{method}.json"
                if record.is_file():
                    continue
                if (out / "metrics.json").is_file():
                    write_text(record, (out / "metrics.json").read_text())
                    continue
                jobs.append((f"{rel} {method}", args.model, rel, method, args.steps, args.test_limit, out, record,
                             int(args.unit_cpus)))
        failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    write_text(args.out, render(store, args))
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def run_unit(label: str, model: str, rel: str, method: str, steps: int, test_limit: int, out: Path, record: Path,
             threads: int) -> str:
    """One (relation, method), as a Ray task: run (or resume) it, publish its record, and return the line that
    reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, None)
    base = load_relation(SHARED / "qin_eisner_soft_prompts" / "db" / "trex_original" / rel,
                         templates_file=SHARED / "lama" / "relations.jsonl", name=rel)
    relation, init = relation_for(method, base)
    start = time.perf_counter()
    doc = run_probe(lm, relation, out, mode="hard", init=init, config=TrainConfig(), limits={"test": test_limit},
                    resume=True, progress=False, engine=Engine(lm), search=search_for(method, steps))
    write_text(record, json.dumps(doc, indent=2))
    return (f"{rel:6} {method:20} P@1 {100 * doc['test']['p@1']:5.1f}  {time.perf_counter() - start:5.0f}s"
            f"  {doc.get('prompt_text', '')!r}")


def render(store: Path, args: argparse.Namespace) -> str:
    docs = {m: {r: json.loads((store / r / f"{m}.json").read_text()) for r in args.relations
                if (store / r / f"{m}.json").is_file()} for m in args.methods}
    lines = [
        "# T-REx-10: AutoPrompt and PEZ against the manual template (SmolLM2)",
        "",
        f"Model `{args.model}`; the facts of [lama.md](lama.md) (AutoPrompt's train/dev split, the LAMA test set, "
        f"first {args.test_limit} single-token test facts). Searches: {args.steps} steps, the best dev P@1 kept; "
        "AutoPrompt compares 10 candidates a step on 32 training facts (gradient on 32), PEZ takes 32 facts a "
        "step. P@1 ×100 over the whole vocabulary. Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python "
        f"benchmarks/trex_discrete.py --steps {args.steps}` (resumable; `--render-only` rewrites this file from the "
        "committed records).",
        "",
        "| relation | " + " | ".join(args.methods) + " |",
        "|---|" + "---|" * len(args.methods),
    ]
    for rel in args.relations:
        cells = [f"{100 * docs[m][rel]['test']['p@1']:.1f}" if rel in docs[m] else "–" for m in args.methods]
        lines.append(f"| {rel} | " + " | ".join(cells) + " |")
    complete = [m for m in args.methods if len(docs[m]) == len(args.relations)]
    macro = {m: 100 * macro_average({r: d["test"] for r, d in docs[m].items()})["p@1"] for m in complete}
    lines.append("| **macro P@1** | " + " | ".join(f"**{macro[m]:.1f}**" if m in macro else "–"
                                                   for m in args.methods) + " |")
    lines += ["", f"lama.md, same facts: soft prompt {QUOTED['soft']}, deep prompt {QUOTED['deep']} macro P@1.", "",
              "## The prompts found", "", "| relation | method | dev P@1 | perplexity | text |",
              "|---|---|---|---|---|"]
    for m in args.methods:
        for rel, d in docs[m].items():
            if "prompt_text" in d:
                best = max(h["dev_accuracy"] for h in d["history"])
                lines.append(f"| {rel} | {m} | {100 * best:.1f} | {d['perplexity']:.0f} | "
                             f"`{json.dumps(d['prompt_text'])[1:-1]}` |")
    missing = [f"{m} ({len(docs[m])}/{len(args.relations)} relations)" for m in args.methods
               if len(docs[m]) < len(args.relations)]
    if missing:
        lines += ["", "Not finished: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
