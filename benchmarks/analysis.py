"""Interpreting the NLU benchmark's prompts on SmolLM2 (Dayton et al., Patel et al., Su et al.).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/analysis.py [--tasks ...] [--seeds 0 1 2]
        [--length-tasks sst2 cb] [--stages train main lengths render]

Stages (each resumable; every unit is cached under benchmarks/cache/analysis/):
- train: prefix prompts of 5 and 100 vectors (seed 0) on --length-tasks, with benchmarks/nlu.py's
  profile (its 20-vector prompts are the third length);
- main: every analysis part over the 20-vector prefix prompts that benchmarks/nlu.py trained for
  --tasks × --seeds (run that first; runs not finished yet are listed as missing);
- lengths: readings, faithfulness and scrutability of the 5/20/100-vector prompts;
- render: docs/results/analysis.md, the HTML report (benchmarks/cache/analysis/report.html) and its
  screenshot docs/report-example.png (needs headless Chromium).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nlu

from softprompt.analysis import Analysis, AnalysisConfig, analyse, load_runs, spearman, token_perplexity
from softprompt.analysis.report import SECTIONS, render, screenshot, token_text
from softprompt.engine import Engine
from softprompt.io import write_json, write_text
from softprompt.models import load_model
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.tasks import TaskSettings, load_task, run_task

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = shared_data_dir(default=SHARED_DEFAULT)

ROOT = Path(__file__).resolve().parent
DOCS = ROOT.parent / "docs"
LENGTHS = (5, 20, 100)
CONFIG = AnalysisConfig(top_k=3, eval_limit=100, probe_size=8)


def paths(model: str) -> dict[str, Path]:
    base = ROOT / "cache" / "analysis" / model / "cpu"
    return {"nlu": ROOT / "cache" / "nlu" / model / "cpu", "runs": base / "runs", "main": base / "main",
            "lengths": base / "lengths", "baselines": base / "perplexity-baselines.json",
            "report": base / "report.html"}


def length_run(p: dict[str, Path], task: str, length: int, seed: int = 0) -> Path:
    if length == 20:
        return nlu.run_dir(p["nlu"], task, "prefix", seed)
    return p["runs"] / task / f"prefix-{length}" / f"seed-{seed}"


def train_lengths(lm: Any, p: dict[str, Path], tasks: list[str]) -> None:
    engine = Engine(lm)
    profile = nlu.PROFILES["cpu"]
    for name in tasks:
        task = load_task(name)
        train, evaluation = task.load("train", SHARED), task.load("validation", SHARED)
        for length in (5, 100):
            out = length_run(p, name, length)
            if (out / "metrics.json").is_file():
                continue
            settings = TaskSettings(**{**nlu.settings_for("prefix", profile).__dict__, "length": length})
            doc = run_task(lm, task, settings, TrainConfig(**{**profile.config.__dict__, "seed": 0}), out, train,
                           evaluation, resume=True, progress=False, engine=engine)
            print(f"trained {name} prefix-{length}: acc {100 * doc['metrics']['accuracy']:.1f} "
                  f"({doc['train_seconds']:.0f} s)", flush=True)


def run_analysis(lm: Any, dirs: list[Path], out: Path, config: AnalysisConfig) -> dict[str, Any] | None:
    dirs = [d for d in dirs if (d / "metrics.json").is_file()]
    if not dirs:
        return None
    runs = load_runs(dirs, lm)
    tasks = {r.task: load_task(r.task) for r in runs}
    examples = {name: t.load("validation", SHARED) for name, t in tasks.items()}
    return analyse(Analysis(lm, runs, tasks, examples, config, reference=lm), out,
                   progress=lambda s: print(s, flush=True))


def perplexity_baselines(lm: Any, p: dict[str, Path], tasks: list[str]) -> dict[str, Any]:
    """Perplexity of natural text (the task descriptions, cut or repeated to the length) and of tokens drawn
    uniformly from the vocabulary, for scale."""
    if p["baselines"].is_file():
        return json.loads(p["baselines"].read_text())
    out: dict[str, Any] = {}
    for n in LENGTHS:
        texts = []
        for name in tasks:
            ids = lm.tokenizer(load_task(name).description, add_special_tokens=False)["input_ids"]
            texts.append(token_perplexity(lm, (ids * (n // len(ids) + 1))[:n]))
        gen = torch.Generator().manual_seed(0)
        random = [token_perplexity(lm, torch.randint(len(lm.tokenizer), (n,), generator=gen).tolist())
                  for _ in range(5)]
        out[str(n)] = {"description": statistics.fmean(texts), "random": statistics.fmean(random)}
    write_json(p["baselines"], out)
    return out


# --- rendering ---------------------------------------------------------------------------------------------


def ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows], ""]


def cell_token(t: str) -> str:
    return "`" + token_text(t).replace("|", "\\|").replace("`", "'") + "`"


def render_markdown(main: dict[str, Any] | None, lengths: dict[str, Any] | None, baselines: dict[str, Any],
                    missing: list[str], args: argparse.Namespace) -> str:
    profile = nlu.PROFILES["cpu"]
    lines = [
        "# Interpreting the NLU prompts (Dayton et al., Patel et al., Su et al.)",
        "",
        f"Model `{args.model}`, frozen, fp32. Prompts: the 20-vector prefix prompts of `benchmarks/nlu.py` "
        f"(profile cpu: ≤{profile.train_limit} training examples, ≤{profile.config.max_epochs} epochs, initialised "
        "from the task description's tokens), one per task and seed, plus 5- and 100-vector prompts (seed 0) "
        f"trained the same way on {', '.join(args.length_tasks)}. Faithfulness and transfer are measured on the "
        f"same {CONFIG.eval_limit} validation examples of each task (a stratified sample, seed 0); neuron overlap "
        f"on {CONFIG.probe_size} probe "
        "inputs per task. Perplexities are under SmolLM2 itself (the paper uses GPT2-XL, which is not available "
        "here).",
        "",
        "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nlu.py` then "
        "`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/analysis.py` (both resumable). The HTML report "
        "(`softprompt report`) of the main analysis is pictured in [docs/report-example.png](../report-example.png).",
        "",
    ]
    if main is not None:
        lines += readings_md(main) + stochasticity_md(main) + similarity_md(main) + transfer_md(main)
    if lengths is not None:
        lines += faithfulness_md(lengths, baselines)
    lines += findings_md(main, lengths, baselines)
    if missing:
        lines += ["## Not yet run", "", *[f"- {m}" for m in missing], ""]
    return "\n".join(lines)


def by_task(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in doc["runs"]:
        out.setdefault(r["task"], []).append(r["label"])
    return out


def kept_initial(reading: dict[str, Any]) -> float:
    """Fraction of vectors whose nearest token by cosine is still the token they started from."""
    if "initial" not in reading:
        return math.nan
    tops = [row[0] for row in reading["cosine"]["tokens"]]
    return statistics.fmean(float(a == b) for a, b in zip(tops, reading["initial"], strict=True))


def readings_md(doc: dict[str, Any]) -> list[str]:
    groups = by_task(doc)
    lines = ["## Nearest-token readings", "",
             "Each 20-vector prompt read as its nearest token per vector by cosine (Dayton et al.'s reading), "
             "seed 0, with the share of vectors whose nearest token is still their initial token (mean ± std "
             "over seeds):", ""]
    rows = []
    for task, labels in groups.items():
        r = doc["readings"][labels[0]]
        rows.append([task, " ".join(cell_token(row[0]) for row in r["cosine"]["tokens"]),
                     ms([kept_initial(doc["readings"][label]) for label in labels], 100, 0) + " %"])
    lines += md_table(["task", "nearest tokens (cosine), in order", "initial token kept"], rows)
    first = next(iter(groups))
    r = doc["readings"][groups[first][0]]
    lines += [f"The {first} prompt (seed 0) in full, as the papers' figures: the three nearest tokens by cosine, "
              "the nearest by the model's p(w | v) and by Euclidean distance.", ""]
    rows = [[i, cell_token(r["initial"][i]) if "initial" in r else "",
             " ".join(f"{cell_token(t)} {s:.2f}" for t, s in zip(r["cosine"]["tokens"][i], r["cosine"]["scores"][i],
                                                                  strict=True)),
             f"{cell_token(r['dot']['tokens'][i][0])} {r['dot']['scores'][i][0]:.2f}",
             f"{cell_token(r['euclidean']['tokens'][i][0])} {r['euclidean']['scores'][i][0]:.2f}"]
            for i in range(len(r["cosine"]["tokens"]))]
    return lines + md_table(["#", "initial", "cosine (top 3)", "p(w|v)", "euclidean"], rows)


def stochasticity_md(doc: dict[str, Any]) -> list[str]:
    s = doc["stochasticity"]["tasks"]
    acc = {}
    for r in doc["runs"]:
        acc.setdefault(r["task"], []).append(r["metrics"].get("accuracy", math.nan))
    rows = [[t, v["prompts"], f"{v['mean_norm']:.2f}", f"{v['norm_variance']:.4f}", f"{v['total_variance']:.3f}",
             f"{v['within_distance']:.3f}", f"{v['between_distance']:.3f}", ms(acc[t], 100)] for t, v in s.items()]
    return ["## Stochasticity (Dayton et al. Table 1)", "",
            "Per task over its seeds: the prompts' Frobenius norms, the variance of the norm, the total variance "
            "around the task's mean prompt, and the mean distance between two of its prompts versus to other "
            "tasks' prompts.", "",
            *md_table(["task", "prompts", "mean ‖P‖_F", "var ‖P‖_F", "Σ var", "dist. within", "dist. between",
                       "accuracy (×100)"], rows)]


def similarity_md(doc: dict[str, Any]) -> list[str]:
    sim = doc["similarity"]["task_level"]
    lines = ["## Similarity between tasks' prompts", "",
             "Task level: the mean over pairs of distinct prompts (the diagonal compares a task's seeds). "
             "Frobenius: lower is more similar; the rest: higher is more similar. Neuron overlap is the cosine of "
             "the binary activated-neuron patterns (Su et al.), at the 20 prompt positions and at the answer "
             "position.", ""]
    for name, m in sim.items():
        tasks = list(m)
        lines += [f"**{name}**", "", *md_table(["", *tasks], [[t, *[f"{m[t][u]:.3f}" for u in tasks]]
                                                              for t in tasks])]
    return lines


def transfer_md(doc: dict[str, Any]) -> list[str]:
    t = doc["transfer"]
    targets = t["targets"]
    rows = [[f"{s} prompt", *[f"{100 * t['task_scores'][s][c]:.1f} ({100 * t['change_vs_no_prompt'][s][c]:+.1f})"
                              for c in targets]] for s in t["task_scores"]]
    rows.append(["no prompt", *[f"{100 * t['no_prompt'][c]:.1f}" for c in targets]])
    corr = [[c["indicator"], f"{c['rho']:+.3f}", f"{c['p_value']:.3g}", c["points"],
             "yes" if c["rho"] * c["expected_sign"] > 0 else "no"] for c in t["correlations"]]
    return ["## Zero-shot transfer (Dayton et al. Fig. 8, Su et al.)", "",
            "Rows: the task the prompts were trained on (mean over seeds); columns: the task they are evaluated "
            "on, first metric ×100 (accuracy), and in brackets the change against no prompt (the task's plain "
            "template).", "", *md_table(["source \\ target", *targets], rows),
            "Spearman correlation between each indicator (a source prompt's mean similarity to the target "
            "task's own prompts) and its transfer gain over no prompt, over every source prompt × other target "
            "task; \"expected sign\": whether more similar went with better transfer.", "",
            *md_table(["indicator", "ρ", "p", "points", "expected sign"], corr)]


def faithfulness_md(doc: dict[str, Any], baselines: dict[str, Any]) -> list[str]:
    rows = []
    length_of = {r["label"]: r["length"] for r in doc["runs"]}
    task_of = {r["label"]: r["task"] for r in doc["runs"]}
    for task in dict.fromkeys(task_of.values()):
        for n in LENGTHS:
            fs = [f for label, f in doc["faithfulness"].items() if task_of[label] == task and length_of[label] == n]
            if not fs:
                continue
            f = fs[0]
            rows.append([task, n, f"{f['distance']:.3f}", f"{f['output']:.2f}", f"{100 * f['top1_agreement']:.0f}%",
                         f"{100 * f['soft_score']:.1f}", f"{100 * f['hard_score']:.1f}",
                         f"{100 * f['performance']:.1f}", f"{f['perplexity']:.0f}",
                         cell_token(f["text"][:60])])
    base = [[n, f"{b['description']:.0f}", f"{b['random']:.0f}"] for n, b in baselines.items()]
    return ["## Faithfulness and scrutability by prompt length (Patel et al. §3)", "",
            "Δ_D: mean squared Euclidean distance to the nearest token; Δ_Output: mean squared difference of the "
            "vocabulary logits where the answer is read, soft prompt vs its unembedding f_U(P) (nearest tokens "
            "by Euclidean distance, fed as token ids), and how often the top token agrees; Δ_L = |accuracy(soft) − "
            "accuracy(f_U(P))|; perplexity of f_U(P) under SmolLM2 (scrutability; lower reads more like text).",
            "", *md_table(["task", "vectors", "Δ_D", "Δ_Output", "top-1 agree", "soft", "unembedded", "Δ_L",
                           "perplexity", "f_U(P) (start)"], rows),
            "For scale, the perplexity of natural text (the task descriptions, repeated to the length) and of "
            "uniformly drawn vocabulary tokens:", "",
            *md_table(["tokens", "description text", "random tokens"], base)]


def findings_md(main: dict[str, Any] | None, lengths: dict[str, Any] | None, baselines: dict[str, Any]) -> list[str]:
    out = ["## What replicates and what does not", ""]
    if main is not None:
        s = main["stochasticity"]["tasks"]
        closer = [t for t, v in s.items() if v["within_distance"] < v["between_distance"]]
        out.append(f"- Seeds of one task stay closer to each other than to other tasks' prompts for {len(closer)} "
                   f"of {len(s)} tasks ({', '.join(closer) or 'none'}). All prompts start from their task "
                   "description, so this mostly measures how far training moves them (Dayton et al. saw "
                   "near-equidistant seeds too).")
        acc: dict[str, list[float]] = {}
        for r in main["runs"]:
            acc.setdefault(r["task"], []).append(r["metrics"]["accuracy"])
        if len(s) >= 3:
            tasks = list(s)
            rho, p = spearman([s[t]["total_variance"] for t in tasks], [statistics.fmean(acc[t]) for t in tasks])
            out.append(f"- Dayton et al. find more seed-to-seed variance on harder tasks. Here the rank correlation "
                       f"between a task's total variance and its mean accuracy is ρ = {rho:+.2f} (p = {p:.2f}, "
                       f"{len(tasks)} tasks; negative would agree).")
        kept = [kept_initial(r) for r in main["readings"].values()]
        out.append(f"- On average {100 * statistics.fmean(kept):.0f} % of the vectors still read as their initial "
                   "token by cosine after training; Dayton et al. report that some of the original prompt's tokens "
                   "survive while the rest drift to unrelated (there: multilingual) tokens.")
        for c in main["transfer"]["correlations"]:
            verdict = "in the expected direction" if c["rho"] * c["expected_sign"] > 0 else "against the expectation"
            signif = "significant" if c["p_value"] < 0.05 else "not significant"
            out.append(f"- {c['indicator']}: Spearman ρ = {c['rho']:+.2f} with the transfer gain, {verdict}, "
                       f"{signif} (p = {c['p_value']:.2g}, {c['points']} points).")
        corr = {c["indicator"]: abs(c["rho"]) for c in main["transfer"]["correlations"]}
        best = max(corr, key=corr.get)
        out.append(f"- The indicator with the strongest rank correlation is {best} (|ρ| = {corr[best]:.2f}); Su et "
                   "al. find neuron overlap the best predictor of transfer"
                   + (" — consistent here." if best.startswith("neuron") and next(
                       c for c in main["transfer"]["correlations"] if c["indicator"] == best)["p_value"] < 0.05
                      and next(c for c in main["transfer"]["correlations"] if c["indicator"] == best)["rho"] > 0
                      else " — not shown here (no indicator is significant or in the expected direction)."))
        t = main["transfer"]
        gains = [(s, c, v) for s, row in t["change_vs_no_prompt"].items() for c, v in row.items() if s != c]
        positive = [g for g in gains if g[2] > 0]
        out.append(f"- {len(positive)} of {len(gains)} cross-task transfers beat no prompt; the best is "
                   f"{max(gains, key=lambda g: g[2])[0]} → {max(gains, key=lambda g: g[2])[1]} "
                   f"({100 * max(g[2] for g in gains):+.1f}).")
    if lengths is not None:
        fs = list(lengths["faithfulness"].values())
        lost = [f for f in fs if f["hard_score"] < f["soft_score"]]
        out.append(f"- The unembedded prompt scores below the soft prompt in {len(lost)} of {len(fs)} cases (mean "
                   f"Δ_L {100 * statistics.fmean(f['performance'] for f in fs):.1f} points), and its top token agrees "
                   f"with the soft prompt's at {100 * statistics.fmean(f['top1_agreement'] for f in fs):.0f} % of "
                   "answer positions: "
                   + ("as Patel et al. find, the soft prompts are not faithful to their nearest tokens."
                      if 2 * len(lost) > len(fs) else "unlike Patel et al., unembedding mostly keeps the accuracy."))
        length_of = {r["label"]: r["length"] for r in lengths["runs"]}
        for n in LENGTHS:
            ppl = [f["perplexity"] for label, f in lengths["faithfulness"].items() if length_of[label] == n]
            base = baselines.get(str(n))
            if not ppl or base is None:
                continue
            mean = statistics.fmean(ppl)
            where = ("above natural text" if mean > 1.5 * base["description"] else
                     "close to natural text" if mean > base["description"] / 1.5 else "below natural text")
            out.append(f"- {n}-vector prompts: perplexity of f_U(P) {mean:.0f} (mean over {len(ppl)} tasks), "
                       f"{where} ({base['description']:.0f}) and far from random tokens ({base['random']:.0f}).")
        out.append("- Patel et al. find unembedded soft prompts inscrutable (high perplexity); here the "
                   "perplexity column says how far training moved the prompts away from their (readable) "
                   "initial description.")
    return [*out, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="*", default=list(nlu.TASKS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--length-tasks", nargs="*", default=["sst2", "cb"])
    parser.add_argument("--stages", nargs="*", default=["train", "main", "lengths", "render"],
                        choices=["train", "main", "lengths", "render"])
    parser.add_argument("--parts", nargs="*", default=list(CONFIG.parts), choices=list(CONFIG.parts),
                        help="main stage: compute only these parts (units are cached, so two processes can share "
                             "the work by parts)")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    p = paths(args.model)
    lm = load_model(args.model)
    if "train" in args.stages:
        train_lengths(lm, p, args.length_tasks)
    main_dirs = [nlu.run_dir(p["nlu"], t, "prefix", s) for t in args.tasks for s in args.seeds]
    length_dirs = [length_run(p, t, n) for t in args.length_tasks for n in LENGTHS]
    missing = [str(d.relative_to(ROOT)) for d in main_dirs + length_dirs if not (d / "metrics.json").is_file()]
    if "main" in args.stages:
        run_analysis(lm, main_dirs, p["main"], replace(CONFIG, parts=tuple(args.parts)))
    if "lengths" in args.stages:
        run_analysis(lm, length_dirs, p["lengths"], AnalysisConfig(parts=("readings", "faithfulness"),
                                                                   eval_limit=CONFIG.eval_limit))
    if "render" in args.stages:
        docs = {k: json.loads((p[k] / "analysis.json").read_text()) if (p[k] / "analysis.json").is_file() else None
                for k in ("main", "lengths")}
        baselines = perplexity_baselines(lm, p, args.tasks)
        write_text(DOCS / "results" / "analysis.md", render_markdown(docs["main"], docs["lengths"], baselines,
                                                                     missing, args))
        if docs["main"] is not None:
            write_text(p["report"], render([docs["main"]], title=f"softprompt report: NLU prompts on {args.model}"))
            screenshot(p["report"], DOCS / "report-example.png", height=3000)
            print(f"wrote {p['report']} ({', '.join(SECTIONS)}) and docs/report-example.png")
        print("wrote docs/results/analysis.md")


if __name__ == "__main__":
    main()
