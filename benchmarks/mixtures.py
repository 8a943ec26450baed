"""Mixtures of soft prompts on T-REx-10 with SmolLM2 (Qin & Eisner Tables 4, 5, 9, 10 analogues).

    .venv/bin/python benchmarks/mixtures.py [--profile cpu|paper] [--experiments main ablation ...]
        [--relations P36 ...] [--device cuda] [--render-only]

Every (profile, split, relation, configuration) is one run directory under
benchmarks/cache/mixtures/<model>/<profile>/; a finished one (metrics.json) is reused and an interrupted
one resumes from its checkpoint, so the script can be stopped and rerun at any time. It writes
docs/results/mixtures.md from whatever runs exist, listing the ones still missing.

Profiles: "paper" trains every prompt of a set with the paper's settings (batch 64, ≤16 epochs,
patience 4, all train/dev facts); it is meant for a GPU. "cpu" fits 2 CPU cores: at most 400 train and
100 dev facts, ≤8 epochs, patience 2, and mixtures pruned to the 4 prompts with the highest EM-fitted
weight on dev (softprompt.mixture.select_prompts). Both test on the first 300 single-token test facts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from softprompt.data import TREX10, load_relation, shared_data_dir
from softprompt.data.prompt_sets import prompt_set
from softprompt.engine import Engine
from softprompt.metrics import macro_average
from softprompt.mixture import MixtureSettings, run_mixture
from softprompt.models import load_model
from softprompt.significance import load_predictions, pair_runs, paired_permutation_test
from softprompt.train import TrainConfig

ROOT = Path(__file__).resolve().parent
SETS = ("sin", "par", "min", "ran")
ALPHA = 0.02


@dataclass(frozen=True)
class Profile:
    config: TrainConfig
    limits: dict[str, int]
    top_k: int | None


PROFILES = {
    "paper": Profile(TrainConfig(), {"test": 300}, None),
    "cpu": Profile(TrainConfig(max_epochs=8, patience=2), {"train": 400, "dev": 100, "test": 300}, 4),
}


@dataclass(frozen=True)
class Unit:
    """One configuration, run on every relation."""

    name: str
    prompts: str
    mode: str = "soft"
    tune: str = "both"
    method: str = "gradient"
    data_dependent: bool = False
    top_k: int | str | None = "profile"  # "profile": the profile's pruning
    split: str = "trex_original"


def units(experiment: str) -> list[Unit]:
    if experiment == "main":
        out = []
        for s in SETS:
            # ran.'s "init" is its random vectors, untuned; every other init is the hard prompts' words.
            init = Unit(f"{s}-init", s, mode="soft" if s == "ran" else "hard", tune="none")
            out += [init, Unit(f"{s}-soft", s), Unit(f"{s}-deep", s, mode="deep")]
        return out
    if experiment == "ablation":  # Table 4; "both" is main's min-soft
        return [Unit("min-soft-weights", "min", tune="weights"), Unit("min-soft-prompts", "min", tune="prompts")]
    if experiment == "extras":
        return [Unit("min-soft-em", "min", method="em"), Unit("min-soft-datadep", "min", data_dependent=True)]
    if experiment == "scaling":
        return [Unit(f"min-soft-top{k}", "min", top_k=k) for k in (1, 2, 4, 8)] + [
            Unit("min-soft-all", "min", top_k=None)]
    if experiment == "distinct":  # Table 9: no answer shared between train, dev and test
        return [replace(u, name=f"distinct-{u.name}", split="trex_distinct") for u in
                (Unit("sin-init", "sin", mode="hard", tune="none"), Unit("sin-soft", "sin"),
                 Unit("min-init", "min", mode="hard", tune="none"), Unit("min-soft", "min"))]
    raise SystemExit(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")


EXPERIMENTS = ("main", "ablation", "extras", "scaling", "distinct")


def run_dir(cache: Path, unit: Unit, relation: str) -> Path:
    return cache / unit.split / relation / unit.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--relations", nargs="*", default=list(TREX10))
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-rows", type=int, default=512)
    parser.add_argument("--render-only", action="store_true", help="only rewrite the report from the cache")
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs" / "results" / "mixtures.md")
    args = parser.parse_args()
    shared = shared_data_dir()
    if shared is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    profile = PROFILES[args.profile]
    cache = ROOT / "cache" / "mixtures" / re.sub(r"[^\w.-]", "_", args.model) / args.profile
    todo = [(u, r) for e in args.experiments for u in units(e) for r in args.relations]
    if not args.render_only:
        lm = load_model(args.model, device=args.device)
        engine = Engine(lm)
        for unit, rel in todo:
            out = run_dir(cache, unit, rel)
            if (out / "metrics.json").is_file():
                continue
            relation = load_relation(shared / "qin_eisner_soft_prompts" / "db" / unit.split / rel,
                                     templates_file=shared / "lama" / "relations.jsonl", name=rel)
            pset = prompt_set(unit.prompts, rel, shared)
            top_k = profile.top_k if unit.top_k == "profile" else unit.top_k
            settings = MixtureSettings(pset.name, pset.templates, pset.init, unit.mode, unit.method, unit.tune,
                                       unit.data_dependent, top_k, max_rows=args.max_rows)
            start = time.perf_counter()
            doc = run_mixture(lm, relation, settings, out, profile.config, profile.limits, resume=True,
                              progress=False, engine=engine)
            t = doc["test"]
            print(f"{unit.split:13} {rel:6} {unit.name:22} K={doc['num_prompts']:2}  P@1 {100 * t['p@1']:5.1f}  "
                  f"P@10 {100 * t['p@10']:5.1f}  MRR {100 * t['mrr']:5.1f}  2^H {doc['effective_prompts']:5.2f}  "
                  f"{time.perf_counter() - start:5.0f}s", flush=True)
    args.out.write_text(Report(cache, args, profile).render())
    print(f"wrote {args.out}")


class Report:
    def __init__(self, cache: Path, args: argparse.Namespace, profile: Profile) -> None:
        self.cache, self.args, self.profile = cache, args, profile
        self.relations = list(args.relations)
        self.missing: dict[str, str] = {}
        self._rows: dict[Unit, list[dict[str, Any]]] = {}

    def docs(self, unit: Unit) -> dict[str, dict[str, Any]] | None:
        """The unit's metrics.json per relation, or None (noted as missing) unless every relation has one."""
        found = {}
        for rel in self.relations:
            path = run_dir(self.cache, unit, rel) / "metrics.json"
            if path.is_file():
                found[rel] = json.loads(path.read_text())
        if len(found) < len(self.relations):
            self.missing[unit.name] = f"{unit.name} ({len(found)}/{len(self.relations)} relations)"
            return None
        return found

    def rows(self, unit: Unit) -> list[dict[str, Any]]:
        if unit not in self._rows:
            self._rows[unit] = [row for rel in self.relations
                                for row in load_predictions(run_dir(self.cache, unit, rel))]
        return self._rows[unit]

    def p_value(self, a: Unit, b: Unit, metric: str) -> float:
        paired = pair_runs(self.rows(a), self.rows(b), metric)
        return paired_permutation_test(paired.a, paired.b, paired.groups, permutations=10000)

    def macro(self, docs: dict[str, dict[str, Any]]) -> dict[str, float]:
        return macro_average({r: d["test"] for r, d in docs.items()})

    def render(self) -> str:
        p = self.profile
        lines = [
            "# Mixtures of soft prompts on T-REx-10 (Qin & Eisner Tables 4, 5, 9, 10 analogues)",
            "",
            f"Model `{self.args.model}` (causal), relations {' '.join(self.relations)}, profile "
            f"`{self.args.profile}`: Adam lr {p.config.lr}, batch {p.config.batch_size}, at most "
            f"{p.config.max_epochs} epochs, patience {p.config.patience}, seed {p.config.seed}; facts per split "
            f"{p.limits} (first N single-token facts); mixtures "
            + (f"pruned to the {p.top_k} prompts with the highest EM-fitted weight on the initial dev "
               "likelihoods" if p.top_k else "of every prompt in the set") + ". Ranking over the full vocabulary; "
            "all numbers ×100, macro-averaged over relations.",
            "",
            f"Reproduce: `.venv/bin/python benchmarks/mixtures.py --profile {self.args.profile}` "
            "(resumable; `--render-only` rewrites this file from the cache).",
            "",
            "Answer-first templates (most LPAQA mined prompts) are reordered to end in [Y] for the causal LM "
            "(`[Y] native [X] .` → `native [X] . [Y]`); the prompt-set table says how many.",
            "",
        ]
        lines += self.main_table() + self.prompt_set_table() + self.ablation_table() + self.extras_table()
        lines += self.scaling_table() + self.entropy_table() + self.distinct_table()
        if self.missing:
            lines += ["## Not yet run", "", *[f"- {m}" for m in self.missing.values()], ""]
        return "\n".join(lines) + "\n"

    def main_table(self) -> list[str]:
        lines = ["## Initial → soft → deep, per prompt set (Table 5)", "",
                 "Within each prompt set, the best value and all not significantly worse (paired permutation "
                 f"test, p < {ALPHA}) are bold; ↑ marks a change from init that is significant.", "",
                 "| prompts | stage | K | P@1 | P@10 | MRR | train+test s |", "|---|---|---|---|---|---|---|"]
        for s in SETS:
            block = [u for u in units("main") if u.prompts == s]
            docs = {u.name: self.docs(u) for u in block}
            if any(d is None for d in docs.values()):
                continue
            macros = {name: self.macro(d) for name, d in docs.items()}
            best: dict[str, str] = {m: max(macros, key=lambda n: macros[n][m]) for m in ("p@1", "p@10", "mrr")}
            for u in block:
                cells = []
                for m in ("p@1", "p@10", "mrr"):
                    value = f"{100 * macros[u.name][m]:.1f}"
                    best_unit = next(b for b in block if b.name == best[m])
                    if u.name == best[m] or self.p_value(u, best_unit, m) >= ALPHA:
                        value = f"**{value}**"
                    if u is not block[0]:
                        change = 100 * (macros[u.name][m] - macros[block[0].name][m])
                        mark = "↑" if self.p_value(block[0], u, m) < ALPHA and change > 0 else ""
                        value += f" ({change:+.1f}{mark})"
                    cells.append(value)
                k = sum(d["num_prompts"] for d in docs[u.name].values()) / len(self.relations)
                secs = sum(d["seconds"]["total"] for d in docs[u.name].values())
                lines.append(f"| {s}. | {u.name.split('-')[1]} | {k:.1f} | " + " | ".join(cells) + f" | {secs:.0f} |")
        return [*lines, ""]

    def prompt_set_table(self) -> list[str]:
        lines = ["## What the prompt sets became for the causal LM", "",
                 "| prompts | templates | reordered (answer-first) | duplicates after encoding | used |",
                 "|---|---|---|---|---|"]
        for s in SETS:
            docs = self.docs(Unit(f"{s}-init", s, mode="soft" if s == "ran" else "hard", tune="none"))
            if docs is None:
                continue
            keys = ("total", "reordered", "duplicates", "kept")
            total = [sum(d["prompt_set"][k] for d in docs.values()) for k in keys]
            lines.append(f"| {s}. | " + " | ".join(map(str, total)) + " |")
        return [*lines, ""]

    def _simple_table(self, title: str, intro: str, named: list[tuple[str, Unit]]) -> list[str]:
        lines = [f"## {title}", "", intro, "", "| configuration | P@1 | P@10 | MRR | 2^H | train+test s |",
                 "|---|---|---|---|---|---|"]
        for label, unit in named:
            docs = self.docs(unit)
            if docs is None:
                continue
            m = self.macro(docs)
            eff = sum(d["effective_prompts"] for d in docs.values()) / len(docs)
            secs = sum(d["seconds"]["total"] for d in docs.values())
            lines.append(f"| {label} | {100 * m['p@1']:.1f} | {100 * m['p@10']:.1f} | {100 * m['mrr']:.1f} | "
                         f"{eff:.2f} | {secs:.0f} |")
        return [*lines, ""]

    def ablation_table(self) -> list[str]:
        return self._simple_table(
            "Ablation: what is tuned (Table 4, min. prompts)", "",
            [("mixture weights only", Unit("min-soft-weights", "min", tune="weights")),
             ("token vectors only", Unit("min-soft-prompts", "min", tune="prompts")),
             ("both", Unit("min-soft", "min"))])

    def extras_table(self) -> list[str]:
        return self._simple_table(
            "Training method and data-dependent weights (min. prompts, soft)",
            "EM: posteriors once per epoch, gradient M steps. Data-dependent: p(t | r, x) ∝ p(t | r) p(x | t)^(1/T); "
            "for a causal LM p(x | t) only depends on prompt tokens before [X].",
            [("gradient (main)", Unit("min-soft", "min")), ("EM", Unit("min-soft-em", "min", method="em")),
             ("data-dependent", Unit("min-soft-datadep", "min", data_dependent=True))])

    def scaling_table(self) -> list[str]:
        named = [(f"top {k}", Unit(f"min-soft-top{k}", "min", top_k=k)) for k in (1, 2, 4, 8)]
        named.append(("all prompts", Unit("min-soft-all", "min", top_k=None)))
        return self._simple_table(
            "Cost versus number of prompts K (min. prompts, soft)",
            "The prompts are chosen before training by their EM-fitted mixture weight on the initial dev "
            "likelihoods; training cost grows with the number kept, not with the set's size.", named)

    def entropy_table(self) -> list[str]:
        lines = ["## Effective number of prompts 2^H after training (Table 10)", "",
                 "| prompts | stage | min | mean | max |", "|---|---|---|---|---|"]
        for s in SETS[1:]:
            for stage in ("soft", "deep"):
                docs = self.docs(Unit(f"{s}-{stage}", s, mode=stage))
                if docs is None:
                    continue
                eff = [d["effective_prompts"] for d in docs.values()]
                lines.append(f"| {s}. | {stage} | {min(eff):.2f} | {sum(eff) / len(eff):.2f} | {max(eff):.2f} |")
        return [*lines, ""]

    def distinct_table(self) -> list[str]:
        return self._simple_table(
            "Distinct answers across splits (Table 9, trex_distinct)",
            "No object is shared between train, dev and test: the prompt cannot win by learning frequent answers.",
            [(u.name.removeprefix("distinct-"), u) for u in units("distinct")])


if __name__ == "__main__":
    main()
