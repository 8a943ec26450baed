"""T-REx-10: manual template -> soft prompt -> deep prompt (Qin & Eisner Table 1 analogue), on any model.

    .venv/bin/python benchmarks/lama.py [--model smollm2-135m] [--test-limit 300] [--relations P36 ...]
        [--num-cpus N | --address auto] [--unit-cpus C] [--render-only] [--out docs/results/lama.md]

SmolLM2 writes docs/results/lama.md; the second model family is
`--model gemma3-270m --out docs/results/lama-gemma.md`.

Resumable: each (relation, mode) run lives in benchmarks/cache/lama/<model>/<relation>/<mode>/; a finished run
(metrics.json present) is skipped and an interrupted one resumes from its checkpoint. Writes the page from the
relations whose three runs have finished and lists the others. Each (relation, mode) runs as one Ray task
(benchmarks/grid.py): --num-cpus N runs N at once with one thread each (--unit-cpus C: C threads each), --address
a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.engine import Engine
from softprompt.metrics import macro_average
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.probing import TREX10, load_relation
from softprompt.probing.probe import run_probe
from softprompt.significance import load_predictions, pair_runs, paired_permutation_test
from softprompt.sweep import worker_model

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"

MODES = ("hard", "soft", "deep")
ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relations", nargs="*", default=list(TREX10))
    parser.add_argument("--test-limit", type=int, default=300, help="first N single-token test facts")
    add_ray_options(parser)
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from the finished runs")
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "lama.md")
    args = parser.parse_args()
    shared = shared_data_dir(default=SHARED_DEFAULT)
    if shared is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    config = TrainConfig()
    cache = ROOT / "cache" / "lama" / re.sub(r"[^\w.-]", "_", args.model)
    jobs = []
    for rel in args.relations:
        for mode in MODES:
            out = cache / rel / mode
            if (out / "metrics.json").is_file():
                print(line(rel, mode, json.loads((out / "metrics.json").read_text())), flush=True)
            elif not args.render_only:
                jobs.append((f"{rel} {mode}", args.model, shared, rel, mode, args.test_limit, out,
                             int(args.unit_cpus)))
    failed = run_on_ray(jobs, run_unit, args.unit_cpus, args.unit_gpus or 0, args.num_cpus, args.address)
    # A relation is on the page once its three runs have finished; the others are listed as not run yet, so an
    # interrupted grid still publishes what it measured (and says what it did not).
    results: dict[str, dict[str, dict]] = {
        rel: {mode: json.loads((cache / rel / mode / "metrics.json").read_text()) for mode in MODES}
        for rel in args.relations if all((cache / rel / mode / "metrics.json").is_file() for mode in MODES)}
    if results:
        args.out.write_text(render(results, args, config))
        print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def line(rel: str, mode: str, doc: dict) -> str:
    t = doc["test"]
    return (f"{rel:6} {mode:5} P@1 {100 * t['p@1']:5.1f}  P@10 {100 * t['p@10']:5.1f}  "
            f"MRR {100 * t['mrr']:5.1f}  n={t['n']}  {doc.get('seconds', 0):.0f}s")


def run_unit(label: str, model: str, shared: Path, rel: str, mode: str, test_limit: int, out: Path,
             threads: int) -> str:
    """One (relation, mode), as a Ray task: run (or resume) it, write its metrics.json with its seconds, and
    return the line that reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, None)
    relation = load_relation(shared / "qin_eisner_soft_prompts" / "db" / "trex_original" / rel,
                             templates_file=shared / "lama" / "relations.jsonl", name=rel)
    start = time.perf_counter()
    doc = run_probe(lm, relation, out, mode=mode, config=TrainConfig(), limits={"test": test_limit}, resume=True,
                    progress=False, engine=Engine(lm))
    doc["seconds"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(doc, indent=2))
    return line(rel, mode, doc)


def render(results: dict[str, dict[str, dict]], args: argparse.Namespace, config: TrainConfig) -> str:
    lines = [
        "# T-REx-10: manual template → soft prompt → deep prompt",
        "",
        f"Model `{args.model}`; data `../shared/data/qin_eisner_soft_prompts/db/trex_original` (AutoPrompt "
        f"train/dev split, LAMA test set), templates from LAMA `relations.jsonl`. Test: first "
        f"{args.test_limit} facts whose answer is a single token for the model. Training: Adam lr "
        f"{config.lr}, batch {config.batch_size}, at most {config.max_epochs} epochs, patience "
        f"{config.patience} on dev loss, seed {config.seed}, both prompts initialised from the template. "
        "Ranking over the full vocabulary. All numbers ×100.",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/lama.py{reproduce_options(args)}` (resumable; `--render-only` "
        "rewrites this page from the finished runs).",
        "",
        "| relation | template | n test | dropped (train/dev/test) | " + " | ".join(
            f"{m} P@1 | {m} P@10 | {m} MRR" for m in MODES) + " | train s (soft/deep) |",
        "|---|---|---|---|" + "---|" * (3 * len(MODES)) + "---|",
    ]
    for rel, modes in results.items():
        d = modes["hard"]["dropped_multi_token"]
        cells = [f"{100 * modes[m]['test'][k]:.1f}" for m in MODES for k in ("p@1", "p@10", "mrr")]
        template = json.loads((ROOT / "cache" / "lama" / re.sub(r"[^\w.-]", "_", args.model) / rel / "hard"
                               / "config.json").read_text())["template"]
        secs = "/".join(f"{modes[m].get('seconds', 0):.0f}" for m in ("soft", "deep"))
        lines.append(f"| {rel} | `{template}` | {modes['hard']['test']['n']} | {d['train']}/{d['dev']}/{d['test']} | "
                     + " | ".join(cells) + f" | {secs} |")
    macro = {m: macro_average({r: modes[m]["test"] for r, modes in results.items()}) for m in MODES}
    cells = [f"**{100 * macro[m][k]:.1f}**" for m in MODES for k in ("p@1", "p@10", "mrr")]
    label = "macro" if len(results) == len(args.relations) else f"macro ({len(results)} of {len(args.relations)})"
    lines.append(f"| **{label}** | | | | " + " | ".join(cells) + " | |")
    cache = ROOT / "cache" / "lama" / re.sub(r"[^\w.-]", "_", args.model)

    def pvalue(a: str, b: str) -> float:
        rows = {m: [row for rel in results for row in load_predictions(cache / rel / m)] for m in (a, b)}
        paired = pair_runs(rows[a], rows[b], "p@1")
        return paired_permutation_test(paired.a, paired.b, paired.groups, permutations=10000)

    p1 = {m: {r: 100 * modes[m]["test"]["p@1"] for r, modes in results.items()} for m in MODES}
    wins = {(a, b): sum(p1[b][r] > p1[a][r] for r in results) for a, b in (("hard", "soft"), ("soft", "deep"))}
    gain = {(a, b): 100 * (macro[b]["p@1"] - macro[a]["p@1"]) for a, b in wins}
    lines += [
        "",
        "## Findings",
        "",
        f"- Tuning the manual template as a soft prompt raises macro P@1 by {gain['hard', 'soft']:+.1f} points; "
        f"the soft prompt beats the template on {wins['hard', 'soft']} of {len(results)} relations.",
        f"- Deep perturbations add {gain['soft', 'deep']:+.1f} points of macro P@1 over the soft prompt and "
        f"beat it on {wins['soft', 'deep']} of {len(results)} relations (Qin & Eisner report that deep adds a "
        "little).",
        f"- Paired permutation test on macro P@1 over all {len(results)} × {args.test_limit} test facts "
        f"(10,000 permutations): manual → soft p = {pvalue('hard', 'soft'):.4f}, soft → deep "
        f"p = {pvalue('soft', 'deep'):.4f}. "
        "Single seed.",
        "- Training seconds are wall-clock on a 2-core CPU; some runs shared the machine with other jobs, so "
        "they are an upper bound.",
    ] + [f"- {rel}'s template scores {p1['hard'][rel]:.1f} P@1 as a hard prompt: the model's most frequent "
         f"first prediction is {shown} ({share:.0f}% of test facts; `predictions.jsonl` in the run directory)."
         for rel in results if p1["hard"][rel] < 1 for word, share in [most_frequent_top1(cache / rel / "hard")]
         # predictions.jsonl keeps tokens stripped: an empty one was whitespace (a space or a newline)
         for shown in [f'"{word}"' if word else "a whitespace-only token"]]
    missing = [rel for rel in args.relations if rel not in results]
    if missing:
        lines += ["", "## Not run yet", "", f"Relations without all three runs: {', '.join(missing)}. The macro "
                  f"row averages the {len(results)} finished relations only."]
    return "\n".join(lines) + "\n"


def most_frequent_top1(run: Path) -> tuple[str, float]:
    """The hard prompt's most frequent top-1 prediction in a run and the percentage of test facts it is."""
    firsts = Counter(row["top10"][0][0] for row in load_predictions(run) if row.get("top10"))
    word, count = firsts.most_common(1)[0]
    return word, 100 * count / sum(firsts.values())


def reproduce_options(args: argparse.Namespace) -> str:
    """The options that differ from the defaults, for the page's reproduce line."""
    out = []
    if args.model != "smollm2-135m":
        out.append(f"--model {args.model}")
    if args.test_limit != 300:
        out.append(f"--test-limit {args.test_limit}")
    if args.out.name != "lama.md":
        out.append(f"--out docs/results/{args.out.name}")
    return "".join(f" {o}" for o in out)


if __name__ == "__main__":
    main()
