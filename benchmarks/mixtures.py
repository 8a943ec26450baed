"""Mixtures of soft prompts on T-REx-10 with SmolLM2 (Qin & Eisner Tables 4, 5, 9, 10 analogues).

    .venv/bin/python benchmarks/mixtures.py [--profile cpu|paper] [--experiments main ablation ...]
        [--relations P36 ...] [--units min-soft ...] [--device cuda] [--render-only]

Every (profile, split, relation, configuration) is one run directory under
benchmarks/cache/mixtures/<model>/<profile>/ (ignored by git: prompts, checkpoints, full predictions); an
interrupted run resumes from its checkpoint. A finished run is published as one small record under
benchmarks/results/mixtures/<model>/<profile>/ (committed: metrics, mixture weights, timings and each test
fact's rank, keyed by a hash of the fact, never the data itself), so results outlive the cache and a later
checkout continues where the last one stopped. A configuration identical to a published one under another
name (the cpu profile's "min-soft" is the scaling experiment's "top 4") is copied, not retrained. It writes
docs/results/mixtures.md from the published records, listing the configurations still missing.

Every configuration still to run on a relation is one Ray task (``--num-cpus N``: a local Ray of N CPUs;
``--address``: an existing cluster, whose nodes see this checkout at the same path), declaring ``--unit-cpus``
CPUs (its torch threads) and ``--unit-gpus`` GPUs; tasks are queued relation by relation and each writes its
run directory and record itself, so rendering and resuming are as before. Identical configurations queued under
two names run once and are copied. On 2 cores, two units at a time with one thread each (the default) got about
10% more done than one process with two threads (measured with the claim-file queue this replaced).

Profiles: "paper" trains every prompt of a set with the paper's settings (batch 64, ≤16 epochs,
patience 4, all train/dev facts); it is meant for a GPU. "cpu" fits 2 CPU cores: at most 400 train and
100 dev facts, ≤8 epochs, patience 2, and mixtures pruned to the 4 prompts with the highest EM-fitted
weight on dev (softprompt.probing.mixture.select_prompts). Both test on the first 300 single-token test facts.
The cpu profile uses batches of 16: only 240-400 train facts per relation are single tokens for SmolLM2,
so batches of 64 gave 4-7 Adam steps an epoch, about 40 in a run, and every run was still improving on
dev at its last epoch; 16 gives the same compute four times the steps (the paper's batch of 64 on its
larger train sets made about 15 steps an epoch over 16 epochs).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from grid import add_ray_options, run_on_ray  # benchmarks/grid.py, beside this script

from softprompt.analysis.visualise import read_mixture, save_png
from softprompt.engine import Engine
from softprompt.io import read_jsonl, write_text
from softprompt.metrics import macro_average
from softprompt.models import LanguageModel, load_model
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.probing import TREX10, Relation, load_relation
from softprompt.probing.mixture import (
    MixtureObjective,
    MixtureSettings,
    encode_mixture_data,
    encode_prompt_set,
    evaluate_mixture,
    mixture_settings,
    run_mixture,
)
from softprompt.probing.prompt_sets import prompt_set
from softprompt.prompts import MixturePrompt, load_prompt
from softprompt.significance import pair_runs, paired_bootstrap_interval, paired_permutation_test
from softprompt.sweep import worker_model

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT.parent / "docs" / "results" / "mixtures.md"
SETS = ("sin", "par", "min", "ran")
HEAVIEST = (1, 2, 4, 8)  # the trained full mixture cut to its k heaviest prompts
ALPHA = 0.02
# The sub-linear goal: P@1 within WITHIN points of the full mixture, shown by a CONFIDENCE interval.
WITHIN = 1.0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Profile:
    config: TrainConfig
    limits: dict[str, int]
    top_k: int | None


PROFILES = {
    "paper": Profile(TrainConfig(), {"test": 300}, None),
    "cpu": Profile(TrainConfig(batch_size=16, max_epochs=8, patience=2), {"train": 400, "dev": 100, "test": 300}, 4),
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
    selection: str = "weight"  # how the top_k prompts are chosen
    prune_after: int = 0  # epochs of training all prompts before pruning to top_k
    sparse_k: int | None = None  # gradient only through each fact's sparse_k most probable prompts
    sparse_m: int | None = None  # ... and each prompt's sparse_m most probable facts of the batch
    sparse_draw: str = "top"  # or "sample": each prompt's sparse_m facts drawn by posterior
    seed: int = 0  # the profile's seed is 0; another seed is the same configuration trained again (--seeds)

    @property
    def is_full_mixture(self) -> bool:
        return self.top_k is None and not self.is_sparse

    @property
    def is_sparse(self) -> bool:
        return (self.sparse_k, self.sparse_m) != (None, None)

    @property
    def step_method(self) -> str:
        """Its name in the --step-cost record."""
        return sparse_method(self.sparse_k, self.sparse_m, self.sparse_draw)


def sparse_method(k: int | None, m: int | None, draw: str = "top") -> str:
    return ("sparse" + (str(k) if k is not None else "") + (f"m{m}" if m is not None else "")
            + ("d" if draw == "sample" else ""))


def sparse_label(k: int | None, m: int | None, draw: str = "top") -> str:
    facts = f"{m} fact{'s' * (m > 1)}" if m is not None else ""
    per_prompt = f"each prompt's top {facts}" if draw == "top" else f"{facts} per prompt drawn by posterior"
    picks = ([f"each fact's top {k}"] if k is not None else []) + ([per_prompt] if m is not None else [])
    return " and ".join(picks)


def parse_sparse_method(name: str) -> tuple[int | None, int | None, str]:
    k, m, drawn = re.fullmatch(r"sparse(\d*)(?:m(\d+)(d?))?", name).groups()
    return (int(k) if k else None), (int(m) if m else None), ("sample" if drawn else "top")


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
        # The full mixture and the profile's top 4 first: they are the comparison the pruning has to pass.
        return [Unit("min-soft-all", "min", top_k=None)] + [Unit(f"min-soft-top{k}", "min", top_k=k)
                                                             for k in (4, 8, 1, 2)] + [
            Unit("min-soft-top4-greedy", "min", top_k=4, selection="greedy"),
            Unit("min-soft-top4-warm1", "min", top_k=4, prune_after=1),
            Unit("min-soft-top4-warm2", "min", top_k=4, prune_after=2),
            Unit("min-soft-top8-warm1", "min", top_k=8, prune_after=1)] + [
            Unit(f"min-soft-sparse{k}", "min", top_k=None, sparse_k=k) for k in (4, 2)] + [
            Unit("min-soft-sparse4m1", "min", top_k=None, sparse_k=4, sparse_m=1),
            Unit("min-soft-sparse4m1d", "min", top_k=None, sparse_k=4, sparse_m=1, sparse_draw="sample")]
    if experiment == "distinct":  # Table 9: no answer shared between train, dev and test
        return [replace(u, name=f"distinct-{u.name}", split="trex_distinct") for u in
                (Unit("sin-init", "sin", mode="hard", tune="none"), Unit("sin-soft", "sin"),
                 Unit("min-init", "min", mode="hard", tune="none"), Unit("min-soft", "min"))]
    raise SystemExit(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")


EXPERIMENTS = ("main", "ablation", "extras", "scaling", "distinct")


def with_seed(unit: Unit, seed: int) -> Unit:
    """``unit`` trained with another seed (shuffle order and posterior draws); seed 0 is the unit itself."""
    return unit if seed == 0 else replace(unit, name=f"{unit.name}-seed{seed}", seed=seed)


def full_mixture() -> Unit:
    """The scaling experiment's untruncated mixture: what every cheaper way of training is measured against."""
    return next(u for u in units("scaling") if u.is_full_mixture)


def run_dir(cache: Path, unit: Unit, relation: str) -> Path:
    return cache / unit.split / relation / unit.name


def record_path(store: Path, unit: Unit, relation: str) -> Path:
    return store / unit.split / relation / f"{unit.name}.json"


def digest(obj: Any, length: int = 64) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


# Dropped from published metrics: the prompt sets' wordings come from LPAQA / LAMA files we must not copy.
UNPUBLISHED = ("templates", "sources", "run_id")  # run_id only ties a run's own files together


def publish(run: Path, record: Path) -> None:
    """Write the committed record of a finished run: its metrics, the identity of its configuration (a hash),
    and per test fact the rank of the answer with a short hash of the fact, so that two records can be paired
    fact by fact (significance tests) without the data itself being stored."""
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    identity = {k: config[k] for k in ("model", "relation", "mixture", "train", "limits")}
    rows = [row for _, row in read_jsonl(run / "predictions.jsonl")]
    write_text(record, json.dumps({
        "identity": digest(identity),
        "train": config["train"],
        "limits": config["limits"],
        "examples": config["examples"],
        "metrics": {k: v for k, v in metrics.items() if k not in UNPUBLISHED},
        # A causal LM reads the subject only after the words before [X]: most LPAQA prompts have none.
        "words_before_subject": [len(t.split("[X]")[0].split()) for t in metrics["templates"]],
        "fact_ids": [digest([row["subject"], row["answer"]], 12) for row in rows],
        "ranks": [row["rank"] for row in rows],
        "rows_grouped_by_length": True,
    }, sort_keys=True, separators=(",", ":")) + "\n")


def trex_relation(shared: Path, split: str, relation: str) -> Relation:
    return load_relation(shared / "qin_eisner_soft_prompts" / "db" / split / relation,
                         templates_file=shared / "lama" / "relations.jsonl", name=relation)


def heaviest_path(store: Path, relation: str) -> Path:
    return store / "trex_original" / relation / "heaviest" / "min-soft-all.json"


def publish_heaviest(run: Path, identity: str, out: Path, lm: LanguageModel, engine: Engine, relation: Relation,
                     max_rows: int) -> None:
    """The trained full mixture restricted to its k heaviest prompts (weights renormalised), on the same test
    facts: what pruning after training, rather than before, keeps of the full mixture at k/K of its
    inference cost."""
    mixture = load_prompt(run / "prompt.safetensors", lm)
    limits = json.loads((run / "config.json").read_text())["limits"]
    weights = torch.tensor(mixture.weights())
    doc: dict[str, Any] = {"of": identity, "k": {}}
    for k in (k for k in HEAVIEST if k < len(mixture)):
        pick = sorted(weights.topk(k).indices.tolist())
        pruned = mixture.subset(pick)
        metrics, rows = evaluate_mixture(engine, pruned, encode_mixture_data(relation, pruned, limits), "test",
                                         max_rows)
        doc["k"][str(k)] = {"test": metrics, "weight_kept": float(weights[pick].sum()),
                            "fact_ids": [digest([r["subject"], r["answer"]], 12) for r in rows],
                            "ranks": [r["rank"] for r in rows]}
    write_text(out, json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")


STEP_SIZES = (4, 8, 16)  # mixture sizes K timed per training step, besides the whole set
STEP_SPARSE = ((2, None, "top"), (4, None, "top"), (4, 1, "top"), (4, 1, "sample"))  # (k, m, draw) timed


def machine_path(store: Path) -> Path:
    """Where a store run on a GPU says which one: its report describes that machine instead of the 2 cores."""
    return store / "machine.json"


def step_cost_path(store: Path, relation: str) -> Path:
    return store / "step_cost" / f"{relation}.json"


def time_steps(lm: LanguageModel, engine: Engine, relation: Relation, templates: Sequence[str], batch: int,
               repeats: int) -> dict[str, Any]:
    """Seconds of one training step (forward and backward over ``batch`` train facts) against the number of
    prompts K, for the full mixture and for sparse posteriors, each method timed in turn within every repeat
    so that load on the machine falls on all alike; medians over the repeats."""
    encoders, sources, _ = encode_prompt_set(templates, lm)
    whole = MixturePrompt(encoders, "soft", "template", 0, False, sources)
    rows = []
    for size in sorted({k for k in STEP_SIZES if k < len(whole)} | {len(whole)}):
        mixture = whole.subset(range(size))
        items = encode_mixture_data(relation, mixture, {"train": batch}).splits["train"]
        methods = {"full": (None, None, "top")} | {sparse_method(*s): s for s in STEP_SPARSE if s[0] < size}
        seconds: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeats):
            for name, (k, m, draw) in methods.items():
                objective = MixtureObjective(engine, mixture, items, [], sparse_k=k, sparse_m=m, sparse_draw=draw)
                objective.start_epoch(1)
                mixture.zero_grad()
                start = time.perf_counter()
                objective.backward(list(range(len(items))))
                seconds[name].append(time.perf_counter() - start)
        rows.append({"K": size, "seconds": {name: sorted(t)[len(t) // 2] for name, t in seconds.items()}})
        print(f"step cost K={size:2}  " + "  ".join(f"{n} {t:.2f}s" for n, t in rows[-1]["seconds"].items()),
              flush=True)
    return {"batch": len(items), "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows,
            "rows_grouped_by_length": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--relations", nargs="*", default=list(TREX10))
    parser.add_argument("--units", nargs="*", metavar="NAME",
                        help="run only these configurations of the chosen experiments (e.g. min-soft ran-soft)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--store", metavar="NAME",
                        help="results folder under benchmarks/results/mixtures/<model>/ (default: the profile's "
                             "name); runs on another kind of machine keep their own, e.g. --device cuda --store "
                             "cpu-cuda, so that a report never mixes them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                        help="train each configuration with each of these seeds (0 is the profile's; the others "
                             "are published as <name>-seed<S>), so that differences can be set against the "
                             "spread between seeds")
    parser.add_argument("--max-rows", type=int, default=512)
    parser.add_argument("--render-only", action="store_true", help="only rewrite the report from the published records")
    parser.add_argument("--step-cost", action="store_true",
                        help="time training steps of the full and the sparse-posterior mixture against K (min. "
                             "prompts, first relation given) instead of running configurations")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_ray_options(parser)
    args = parser.parse_args()
    shared = shared_data_dir(default=SHARED_DEFAULT)
    if shared is None:
        sys.exit("needs ../shared/data (or SOFTPROMPT_SHARED_DATA)")
    profile = PROFILES[args.profile]
    model_dir = re.sub(r"[^\w.-]", "_", args.model)
    args.store = args.store or args.profile
    cache = ROOT / "cache" / "mixtures" / model_dir / args.store
    store = ROOT / "results" / "mixtures" / model_dir / args.store
    # Relation by relation: a stopped run leaves every table complete on the relations it reached.
    todo = [(with_seed(u, seed), r) for r in args.relations for seed in args.seeds for e in args.experiments
            for u in units(e) if not args.units or u.name in args.units]
    known = {u.name for e in args.experiments for u in units(e)}
    if unknown := sorted(set(args.units or ()) - known):
        sys.exit(f"unknown --units {' '.join(unknown)}; the chosen experiments have {' '.join(sorted(known))}")
    lm = load_model(args.model, device=args.device)
    if lm.device.type == "cuda" and not args.render_only:
        write_text(machine_path(store), json.dumps({
            "device": torch.cuda.get_device_name(lm.device), "torch": torch.__version__,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}, sort_keys=True, indent=1) + "\n")
    for unit, rel in todo:  # runs that finished before they could be published
        out, record = run_dir(cache, unit, rel), record_path(store, unit, rel)
        if not is_current(record, profile, unit) and (out / "metrics.json").is_file() and trained_with(
                json.loads((out / "config.json").read_text()), profile, unit.seed):
            publish(out, record)
    failed: list[str] = []  # the units that failed, one line each
    if args.step_cost:
        rel = args.relations[0]
        cost = time_steps(lm, Engine(lm), trex_relation(shared, "trex_original", rel),
                          prompt_set("min", rel, shared).templates, profile.config.batch_size, repeats=3)
        write_text(step_cost_path(store, rel), json.dumps(cost, sort_keys=True, indent=1) + "\n")
    elif not args.render_only:
        engine = Engine(lm)
        jobs, copies, identities = [], [], set()
        for unit, rel in todo:
            out, record = run_dir(cache, unit, rel), record_path(store, unit, rel)
            if is_current(record, profile, unit):
                continue
            relation = trex_relation(shared, unit.split, rel)
            pset = prompt_set(unit.prompts, rel, shared)
            top_k = profile.top_k if unit.top_k == "profile" else unit.top_k
            settings = MixtureSettings(pset.name, pset.templates, pset.init, unit.mode, unit.method, unit.tune,
                                       unit.data_dependent, top_k, max_rows=args.max_rows,
                                       selection=unit.selection, prune_after=unit.prune_after,
                                       sparse_k=unit.sparse_k, sparse_m=unit.sparse_m,
                                       sparse_draw=unit.sparse_draw)
            config = replace(profile.config, seed=unit.seed)
            identity = mixture_settings(lm, relation, settings, config, profile.limits)
            label = f"{unit.split:13} {rel:6} {unit.name:22}"
            if copy_identical_record(record, identity):
                print(f"{label} copied from an identical run", flush=True)
            elif digest(identity) in identities:  # queued under another name: copied once that has run
                copies.append((label, record, identity))
            else:
                identities.add(digest(identity))
                jobs.append((label, args.model, args.device, relation, settings, config, profile.limits, out, record,
                             int(args.unit_cpus)))
        gpus = args.unit_gpus if args.unit_gpus is not None else float(lm.device.type == "cuda")
        failed = run_on_ray(jobs, train_unit, args.unit_cpus, gpus, args.num_cpus, args.address)
        for label, record, identity in copies:
            if copy_identical_record(record, identity):
                print(f"{label} copied from an identical run", flush=True)
        full = full_mixture()
        for rel in args.relations if "scaling" in args.experiments else ():
            run, record, out = run_dir(cache, full, rel), record_path(store, full, rel), heaviest_path(store, rel)
            if not (is_current(record, profile, full) and (run / "prompt.safetensors").is_file()):
                continue
            identity = json.loads(record.read_text())["identity"]
            if out.is_file() and json.loads(out.read_text())["of"] == identity:
                continue
            publish_heaviest(run, identity, out, lm, engine, trex_relation(shared, full.split, rel), args.max_rows)
            print(f"{full.split:13} {rel:6} {full.name:22} cut to its heaviest prompts", flush=True)
    write_text(args.out, Report(cache, store, args, profile, lm).render())
    print(f"wrote {args.out}")
    if failed:
        sys.exit(f"{len(failed)} unit(s) failed:\n" + "\n".join(failed))


def train_unit(label: str, model: str, device: str | None, relation: Relation, settings: MixtureSettings,
               config: TrainConfig, limits: dict[str, int], out: Path, record: Path, threads: int) -> str:
    """One unit, as a Ray task: train (or resume) the mixture in its run directory, publish its record, and return
    the line that reports it."""
    torch.set_num_threads(max(1, threads))  # what the task declared, not every core of the node
    lm = worker_model(model, device)
    start = time.perf_counter()
    doc = run_mixture(lm, relation, settings, out, config, limits, resume=True, progress=False, engine=Engine(lm))
    publish(out, record)
    t = doc["test"]
    return (f"{label} K={doc['num_prompts']:2}  P@1 {100 * t['p@1']:5.1f}  P@10 {100 * t['p@10']:5.1f}  "
            f"MRR {100 * t['mrr']:5.1f}  2^H {doc['effective_prompts']:5.2f}  {time.perf_counter() - start:5.0f}s")


def trained_with(settings: dict[str, Any], profile: Profile, seed: int) -> bool:
    """Whether a record's or a run's config (its "train" and "limits") is ``profile`` as it is now, with
    ``seed``."""
    return (settings.get("train") == asdict(replace(profile.config, seed=seed))
            and settings.get("limits") == profile.limits)


def is_current(record: Path, profile: Profile, unit: Unit) -> bool:
    return record.is_file() and trained_with(json.loads(record.read_text()), profile, unit.seed)


def copy_identical_record(record: Path, identity: dict[str, Any]) -> bool:
    """Copy a sibling record whose configuration equals ``identity`` to ``record``; False if none."""
    wanted = digest(identity)
    for other in sorted(record.parent.glob("*.json")) if record.parent.is_dir() else []:
        if other != record and json.loads(other.read_text())["identity"] == wanted:
            write_text(record, other.read_text())
            return True
    return False


def mean_sd(values: Sequence[float], sign: bool = False) -> str:
    """Mean ± sample standard deviation, as the seed tables print them."""
    return f"{statistics.mean(values):{'+' if sign else ''}.1f} ± {statistics.stdev(values):.1f}"


def fact_rows(ranked: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-fact rows for the paired tests from records' (fact_ids, ranks) per relation: a fact is its position
    in the test split plus its hash, so two records only pair if they ranked the same facts in the same order."""
    return [{"relation": r, "subject": str(i), "answer": fact, "rank": rank}
            for r, doc in ranked.items()
            for i, (fact, rank) in enumerate(zip(doc["fact_ids"], doc["ranks"], strict=True))]


def p_value(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], metric: str) -> float:
    paired = pair_runs(a, b, metric)
    return paired_permutation_test(paired.a, paired.b, paired.groups, permutations=10000)


def best_epochs(docs: dict[str, dict[str, Any]]) -> str:
    """The epochs whose prompts were kept (0: training never beat the initial prompts on dev); – if untrained."""
    epochs = [d["best_epoch"] for d in docs.values() if "best_epoch" in d]
    return " ".join(map(str, epochs)) or "–"


class Report:
    """docs/results/mixtures.md from the published records. Each table covers the relations on which all of
    its configurations have finished (named under it), so partial progress is reported, never mixed."""

    def __init__(self, cache: Path, store: Path, args: argparse.Namespace, profile: Profile,
                 lm: LanguageModel) -> None:
        self.cache, self.store, self.args, self.profile, self.lm = cache, store, args, profile, lm
        self.relations = list(args.relations)
        self.missing: dict[str, str] = {}
        self._records: dict[Path, dict[str, Any]] = {}

    def done(self, unit: Unit) -> list[str]:
        return [r for r in self.relations if record_path(self.store, unit, r).is_file()
                and trained_with(self.record(unit, r), self.profile, unit.seed)]

    def common(self, group: list[Unit]) -> list[str]:
        """Relations on which every unit of ``group`` has finished; the others are noted as missing."""
        for unit in group:
            done = self.done(unit)
            if len(done) < len(self.relations):
                self.missing[unit.name] = f"{unit.name} ({len(done)}/{len(self.relations)} relations)"
        return [r for r in self.relations if all(r in self.done(u) for u in group)]

    def record(self, unit: Unit, relation: str) -> dict[str, Any]:
        path = record_path(self.store, unit, relation)
        if path not in self._records:
            self._records[path] = json.loads(path.read_text())
        return self._records[path]

    def docs(self, unit: Unit, relations: list[str]) -> dict[str, dict[str, Any]]:
        return {r: self.record(unit, r)["metrics"] for r in relations}

    def rows(self, unit: Unit, relations: list[str]) -> list[dict[str, Any]]:
        return fact_rows({r: self.record(unit, r) for r in relations})

    def threads(self) -> list[int]:
        records = (json.loads(p.read_text()) for p in self.store.rglob("*.json"))
        return sorted({r["metrics"]["threads"] for r in records
                       if trained_with(r, self.profile, r.get("train", {}).get("seed", 0))})

    def p_value(self, a: Unit, b: Unit, metric: str, relations: list[str]) -> float:
        return p_value(self.rows(a, relations), self.rows(b, relations), metric)

    def macro(self, unit: Unit, relations: list[str]) -> dict[str, float]:
        return macro_average({r: d["test"] for r, d in self.docs(unit, relations).items()})

    def render(self) -> str:
        p = self.profile
        lines = [
            "# Mixtures of soft prompts on T-REx-10 (Qin & Eisner Tables 4, 5, 9, 10 analogues)",
            "",
            f"Model `{self.args.model}` (causal), profile `{self.args.profile}`: Adam lr {p.config.lr}, batch "
            f"{p.config.batch_size}, at most {p.config.max_epochs} epochs, patience {p.config.patience}, seed "
            f"{p.config.seed}; facts per split {p.limits} (first N single-token facts); mixtures "
            + (f"pruned to the {p.top_k} prompts with the highest EM-fitted weight on the initial dev "
               "likelihoods (then uniformly weighted at init)" if p.top_k else "of every prompt in the set")
            + ". Ranking over the full vocabulary; all numbers ×100, macro-averaged over the relations named "
            "under each table (those on which all of its configurations have finished).",
            "",
            f"Reproduce: `{self.reproduce_command()}` "
            f"(resumable; finished runs are published under `{self.store.relative_to(ROOT.parent)}`, and "
            "`--render-only` rewrites this file from those records). " + self.machine_note(),
            "",
            "Answer-first templates (most LPAQA mined prompts) are reordered to end in [Y] for the causal LM "
            "(`[Y] native [X] .` → `native [X] . [Y]`); the prompt-set table says how many.",
            "",
        ]
        lines += self.findings()
        # Only the chosen experiments' tables, so that a store holding one experiment (another machine's) reports
        # that experiment instead of empty tables and a list of everything else as not yet run.
        sections = [("main", self.main_table), ("main", self.prompt_set_table), ("ablation", self.ablation_table),
                    ("extras", self.extras_table), ("scaling", self.scaling_table),
                    ("scaling", self.against_full_table),
                    ("scaling", self.over_seeds_table), ("scaling", self.step_cost_table),
                    ("scaling", self.heaviest_table), ("scaling", self.across_machines_table),
                    ("scaling", self.figure), ("main", self.entropy_table),
                    ("distinct", self.distinct_table)]
        lines += [line for experiment, section in sections if experiment in self.args.experiments
                  for line in section()]
        chosen = {u.name for e in self.args.experiments for u in units(e)}
        if missing := [m for name, m in self.missing.items() if name in chosen]:
            lines += ["## Not yet run", "", *[f"- {m}" for m in missing], ""]
        return "\n".join(lines) + "\n"

    @functools.cached_property
    def gpu(self) -> dict[str, Any] | None:
        """The GPU that made this store's runs (None: the 2-core CPU machine)."""
        path = machine_path(self.store)
        return json.loads(path.read_text()) if path.is_file() else None

    def reproduce_command(self) -> str:
        command = ".venv/bin/python benchmarks/mixtures.py"
        if self.gpu and self.gpu["tf32_matmul"]:
            command = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 " + command
        command += f" --profile {self.args.profile}"
        if self.args.seeds != [0]:
            command += f" --seeds {' '.join(map(str, self.args.seeds))}"
        if set(self.args.experiments) != set(EXPERIMENTS):
            command += f" --experiments {' '.join(self.args.experiments)}"
        if self.args.store != self.args.profile:
            command += (" --device cuda" if self.gpu else "") + f" --store {self.args.store}"
        out = self.args.out.resolve()
        if out != DEFAULT_OUT:
            command += f" --out {out.relative_to(ROOT.parent) if out.is_relative_to(ROOT.parent) else out}"
        return command

    def machine_note(self) -> str:
        if self.gpu:
            return (f"Times are wall-clock seconds on one {self.gpu['device']} (torch {self.gpu['torch']}, TF32 "
                    f"matrix products {'on' if self.gpu['tf32_matmul'] else 'off'}), which six benchmark "
                    "processes of 2 CPU threads each shared: compare times within a table, not with the CPU runs.")
        return ("Times are wall-clock seconds on a 2-core "
                f"machine with {' or '.join(map(str, self.threads()))} PyTorch thread(s) per process (with one thread, "
                "two benchmark processes shared the cores, and three or four while the sparse-posterior and "
                "step-cost runs went on, which slowed the runs of P101, P138 and P407 by up to 2.5×, and three "
                "for part of the P36 full, warm-up and drawn-fact runs and P37's drawn-fact run: compare times "
                "within a table, not across sessions). Runs published with `rows_grouped_by_length` in their "
                "record scored each step's rows in groups of similar length; the earlier ones padded them to the "
                "step's longest prompt, which made a step of 29 mined prompts about 1.8× slower "
                "(`benchmarks/mixture_step.py`): on the relations where the two kinds meet, compare times only "
                "between runs of the same kind.")

    def findings(self) -> list[str]:
        """The paper's four claims, each checked on the relations where its runs exist (macro P@1)."""
        main = {u.name: u for u in units("main")}

        def compare(a: str, b: str) -> tuple[float, float, int] | None:
            rels = [r for r in self.relations if r in self.done(main[a]) and r in self.done(main[b])]
            if not rels:
                return None
            return 100 * self.macro(main[a], rels)["p@1"], 100 * self.macro(main[b], rels)["p@1"], len(rels)

        lines = ["## Findings (macro P@1; n = number of relations compared)", ""]
        gains = [(s, compare(f"{s}-init", f"{s}-soft")) for s in SETS]
        if any(g for _, g in gains):
            lines.append("- Tuning over every initialisation (init → soft): " + "; ".join(
                f"{s}. {a:.1f} → {b:.1f} (n={n})" for s, (a, b, n) in ((s, g) for s, g in gains if g)) + ".")
        ran = compare("min-soft", "ran-soft")
        if ran:
            lines.append(f"- Random initialisation against mined prompts, both tuned: min. {ran[0]:.1f}, ran. "
                         f"{ran[1]:.1f} (n={ran[2]}).")
        mixtures = [(s, compare("sin-soft", f"{s}-soft")) for s in ("par", "min", "ran")]
        if any(m for _, m in mixtures):
            lines.append("- Mixtures against the single tuned manual prompt: " + "; ".join(
                f"sin. {a:.1f} vs {s}. {b:.1f} (n={n})" for s, (a, b, n) in ((s, m) for s, m in mixtures if m)) + ".")
        context = {}
        for s in SETS:
            rels = self.done(main[f"{s}-soft"])
            words = [n for r in rels for n in self.record(main[f"{s}-soft"], r)["words_before_subject"]]
            if words:
                context[s] = (sum(words) / len(words), len(rels))
        if context:
            lines.append("- Left context of the subject for the causal LM (mean words before [X] in the trained "
                         "prompts): " + "; ".join(f"{s}. {w:.1f} (n={n})" for s, (w, n) in context.items()) + ".")
        deep = [(s, compare(f"{s}-soft", f"{s}-deep")) for s in SETS]
        if any(d for _, d in deep):
            lines.append("- Deep over soft: " + "; ".join(
                f"{s}. {b - a:+.1f} (n={n})" for s, (a, b, n) in ((s, d) for s, d in deep if d)) + ".")
        ablation = self.ablation_units()
        if rels := [r for r in self.relations if all(r in self.done(u) for _, u in ablation)]:
            lines.append("- What is tuned (Table 4; the paper: each helps, the vectors most): " + "; ".join(
                f"{label} {100 * self.macro(u, rels)['p@1']:.1f}" for label, u in ablation) + f" (n={len(rels)}).")
        distinct = {u.name.removeprefix("distinct-"): u for u in units("distinct")}
        if rels := [r for r in self.relations if all(r in self.done(u) for u in distinct.values())]:
            lines.append("- Soft prompts when no answer recurs across splits (Table 9; the paper: still some "
                         "benefit): " + "; ".join(
                             f"{s}. " + " → ".join(f"{100 * self.macro(distinct[f'{s}-{stage}'], rels)['p@1']:.1f}"
                                                   for stage in ("init", "soft")) for s in ("sin", "min"))
                         + f" (n={len(rels)}).")
        against = self.against_full
        if against:
            shown = [row for row in against if row["low"] >= -WITHIN]
            close = [row for row in against if row["difference"] >= -WITHIN]
            lines.append(
                "- Sub-linear cost (table \"Cheaper training against the full mixture\"): "
                + (f"within {WITHIN:g} point of the full mixture's P@1 with {CONFIDENCE:.0%} confidence: "
                   + ", ".join(row["label"] for row in shown) if shown else
                   f"no cheaper configuration is shown within {WITHIN:g} point of the full mixture's P@1 with "
                   f"{CONFIDENCE:.0%} confidence")
                + f"; within {WITHIN:g} point on the mean difference: "
                + ("; ".join(f"{row['label']}, {row['difference']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}] "
                             f"(n={row['n']})" for row in close) if close else "none")
                + ".")
        for row in self.over_seeds:
            lines.append(f"- Over seeds {' '.join(map(str, self.args.seeds))} ({' '.join(row['relations'])}): "
                         f"{row['label']} {mean_sd(row['differences'], sign=True)} P@1 against the full mixture.")
        if self.across_machines:
            lines.append(f"- The same configuration and seed here and in the `{self.args.profile}` store (table \"The "
                         "same runs on two machines\"): " + "; ".join(
                             f"{row['label']} {row['difference']:+.1f} (n={row['n']}, up to {row['largest']:+.1f} on "
                             "one relation)" for row in self.across_machines) + ".")
        if len(lines) == 2:
            lines.append("- Not enough runs yet.")
        return [*lines, ""]

    def main_table(self) -> list[str]:
        lines = ["## Initial → soft → deep, per prompt set (Table 5)", "",
                 "Within each prompt set, the best value and all not significantly worse (paired permutation "
                 f"test, p < {ALPHA}) are bold; ↑ marks a change from init that is significant.", "",
                 "| prompts | stage | relations | K | P@1 | P@10 | MRR | train+test s |",
                 "|---|---|---|---|---|---|---|---|"]
        for s in SETS:
            block = [u for u in units("main") if u.prompts == s]
            rels = self.common(block)
            if not rels:
                continue
            macros = {u.name: self.macro(u, rels) for u in block}
            for u in block:
                cells = []
                for m in ("p@1", "p@10", "mrr"):
                    value = f"{100 * macros[u.name][m]:.1f}"
                    best = max(block, key=lambda b: macros[b.name][m])
                    if u is best or self.p_value(u, best, m, rels) >= ALPHA:
                        value = f"**{value}**"
                    if u is not block[0]:
                        change = 100 * (macros[u.name][m] - macros[block[0].name][m])
                        mark = "↑" if change > 0 and self.p_value(block[0], u, m, rels) < ALPHA else ""
                        value += f" ({change:+.1f}{mark})"
                    cells.append(value)
                docs = self.docs(u, rels)
                k = sum(d["num_prompts"] for d in docs.values()) / len(rels)
                secs = sum(d["seconds"]["total"] for d in docs.values())
                lines.append(f"| {s}. | {u.name.split('-')[1]} | {' '.join(rels)} | {k:.1f} | " + " | ".join(cells)
                             + f" | {secs:.0f} |")
        return [*lines, ""]

    def prompt_set_table(self) -> list[str]:
        lines = ["## What the prompt sets became for the causal LM", "",
                 "Summed over the relations; \"distinct\" is what a full mixture would hold, before any pruning. "
                 "The last column is the mean number of words before [X] in the prompts the mixture kept (after "
                 "reordering): all the context a causal LM has when it reads the subject.", "",
                 "| prompts | relations | templates | reordered (answer-first) | duplicates | distinct | "
                 "words before [X] |",
                 "|---|---|---|---|---|---|---|"]
        for s in SETS:
            unit = next(u for u in units("main") if u.name == f"{s}-init")
            rels = self.common([unit])
            if not rels:
                continue
            keys = ("total", "reordered", "duplicates", "kept")
            total = [sum(d["prompt_set"][k] for d in self.docs(unit, rels).values()) for k in keys]
            words = [n for r in rels for n in self.record(unit, r)["words_before_subject"]]
            lines.append(f"| {s}. | {' '.join(rels)} | " + " | ".join(map(str, total))
                         + f" | {sum(words) / len(words):.1f} |")
        return [*lines, ""]

    def _simple_table(self, title: str, intro: str, named: list[tuple[str, Unit]]) -> list[str]:
        rels = self.common([u for _, u in named])
        if not rels:
            return []
        lines = [f"## {title}", "", *([intro, ""] if intro else []), f"Relations: {' '.join(rels)}.", "",
                 "| configuration | K | P@1 | P@10 | MRR | 2^H | best epoch | train+test s |",
                 "|---|---|---|---|---|---|---|---|"]
        for label, unit in named:
            docs = self.docs(unit, rels)
            m = self.macro(unit, rels)
            k = sum(d["num_prompts"] for d in docs.values()) / len(rels)
            eff = sum(d["effective_prompts"] for d in docs.values()) / len(rels)
            secs = sum(d["seconds"]["total"] for d in docs.values())
            lines.append(f"| {label} | {k:.1f} | {100 * m['p@1']:.1f} | {100 * m['p@10']:.1f} | "
                         f"{100 * m['mrr']:.1f} | {eff:.2f} | {best_epochs(docs)} | {secs:.0f} |")
        return [*lines, ""]

    @staticmethod
    def ablation_units() -> list[tuple[str, Unit]]:
        """Table 4's rows: the ablation experiment between main's untuned and fully tuned min. mixtures."""
        named = {u.name: u for e in ("main", "ablation") for u in units(e)}
        return [(label, named[name]) for label, name in (
            ("neither (initial mixture)", "min-init"), ("mixture weights only", "min-soft-weights"),
            ("token vectors only", "min-soft-prompts"), ("both", "min-soft"))]

    def ablation_table(self) -> list[str]:
        named = self.ablation_units()
        table = self._simple_table("Ablation: what is tuned (Table 4, min. prompts)", "", named)
        if not table:
            return table
        rels = self.common([u for _, u in named])
        (_, init), *tuned = named

        def test(a: Unit, b: Unit) -> str:
            gain = 100 * (self.macro(b, rels)["p@1"] - self.macro(a, rels)["p@1"])
            return f"{gain:+.1f} (p = {self.p_value(a, b, 'p@1', rels):.2f})"

        return [*table[:-1], "", "P@1, paired permutation test: against the initial mixture, " + "; ".join(
            f"{label} {test(init, u)}" for label, u in tuned) + f"; both against token vectors only, "
            f"{test(tuned[1][1], tuned[2][1])}.", ""]

    def extras_table(self) -> list[str]:
        named = [("gradient (main)", Unit("min-soft", "min")), ("EM", Unit("min-soft-em", "min", method="em")),
                 ("data-dependent", Unit("min-soft-datadep", "min", data_dependent=True))]
        self.common([u for _, u in named])  # records what has not run yet
        shown = [(label, u) for label, u in named if self.done(u)] or named
        table = self._simple_table(
            "Training method and data-dependent weights (min. prompts, soft)",
            "EM: posteriors once per epoch, gradient M steps. Data-dependent: p(t | r, x) ∝ p(t | r) p(x | t)^(1/T); "
            "for a causal LM p(x | t) only depends on prompt tokens before [X].", shown)
        rels = self.common([u for _, u in shown])
        if table and len(shown) > 1:
            base = shown[0][1]
            tests = [f"{label} {100 * (self.macro(u, rels)['p@1'] - self.macro(base, rels)['p@1']):+.1f} "
                     f"(p = {self.p_value(u, base, 'p@1', rels):.2f})" for label, u in shown[1:]]
            table[-1:] = ["", f"P@1 against gradient training, paired permutation test: {'; '.join(tests)}.", ""]
        return table

    @staticmethod
    def scaling_label(u: Unit) -> str:
        if u.is_sparse:
            return "all prompts, gradient through " + sparse_label(u.sparse_k, u.sparse_m, u.sparse_draw)
        if u.top_k is None:
            return "all prompts"
        warm = f" after {u.prune_after} epoch{'s' * (u.prune_after > 1)} of all" if u.prune_after else ""
        return f"top {u.top_k}" + (", greedy" if u.selection == "greedy" else "") + warm

    def scaling_table(self) -> list[str]:
        # Plain top-k by k, then the other ways of choosing, then sparse posteriors, then the full mixture they
        # are all measured against.
        order = sorted(units("scaling"), key=lambda u: (u.is_full_mixture, u.is_sparse,
                                                         bool(u.selection != "weight" or u.prune_after),
                                                         u.top_k or 0, u.prune_after, u.sparse_m or 0,
                                                         -(u.sparse_k or 0), u.sparse_draw != "top"))
        named = [(self.scaling_label(u), u) for u in order]
        self.common([u for _, u in named])  # records what has not run yet
        named = [(label, u) for label, u in named if self.done(u)] or named
        table = self._simple_table(
            "Cost versus number of prompts K (min. prompts, soft)",
            "The prompts are chosen before training by their EM-fitted mixture weight on the initial dev "
            "likelihoods (\"greedy\": by forward selection, adding the prompt that most raises the initial "
            "mixture's dev likelihood); training cost grows with the number kept, not with the set's size. "
            "The time includes choosing the prompts (one inference pass of all K prompts over dev). \"After n "
            "epochs of all\" trains the whole mixture for n epochs first and chooses on the tuned prompts' dev "
            "likelihoods: those epochs' cost grows with K, the remaining epochs' with k. \"Gradient through each "
            "fact's top k\" trains all K prompts but backpropagates, for each fact, only through its k prompts of "
            "highest posterior (found by a pass without gradients over all K): the objective and the mixture "
            "weights' gradient are exact; \"each prompt's top m facts\" adds each prompt's m facts of highest "
            "posterior in the batch, and \"drawn by posterior\" draws them instead, importance-weighted, so that "
            "each prompt's gradient is an unbiased estimate of its gradient in the full mixture." + self.sharing_note(),
            named)
        rels = self.common([u for _, u in named])
        if table and rels and named[-1][0] == "all prompts":
            full = named[-1][1]
            tests = [f"{label} {100 * (self.macro(u, rels)['p@1'] - self.macro(full, rels)['p@1']):+.1f} "
                     f"(p = {self.p_value(u, full, 'p@1', rels):.2f})" for label, u in named[:-1]]
            table[-1:] = ["", f"P@1 against all prompts, paired permutation test: {'; '.join(tests)}.", ""]
        return table

    def sharing_note(self) -> str:
        if self.gpu:
            return " All of them ran as six processes sharing the GPU, so their times compare only roughly."
        return (" Run times compare only runs that shared the cores alike: the sparse-posterior runs shared them "
                "with two or three other benchmark processes, the others with one; the step-cost table below "
                "compares the methods within one process.")

    @functools.cached_property
    def against_full(self) -> list[dict[str, Any]]:
        """Each cheaper way of training against the full mixture, on the relations where both have run
        (cached: the findings and the table both read it, and each row resamples 10000 times)."""
        full = full_mixture()
        rows = []
        for unit in units("scaling"):
            rels = [r for r in self.done(full) if r in self.done(unit)]
            if unit.is_full_mixture or not rels:
                continue
            paired = pair_runs(self.rows(full, rels), self.rows(unit, rels), "p@1")
            low, high = paired_bootstrap_interval(paired.a, paired.b, paired.groups, CONFIDENCE, 10000)
            seconds = [sum(d["seconds"]["total"] for d in self.docs(u, rels).values()) for u in (unit, full)]
            p1, full_p1 = (100 * self.macro(u, rels)["p@1"] for u in (unit, full))
            rows.append({"label": self.scaling_label(unit), "n": len(rels), "relations": rels,
                         "p@1": p1, "full": full_p1, "difference": p1 - full_p1, "low": 100 * low,
                         "high": 100 * high,
                         "p": paired_permutation_test(paired.a, paired.b, paired.groups, permutations=10000),
                         "time": seconds[0] / seconds[1], "step": self.step_ratio(unit, rels)})
        return rows

    def against_full_table(self) -> list[str]:
        rows = self.against_full
        if not rows:
            return []
        lines = ["## Cheaper training against the full mixture (P@1, min. prompts, soft)", "",
                 f"Each configuration of the table above against the full mixture on every relation where both "
                 f"have run (so rows may cover different relations). The interval is a paired bootstrap "
                 f"({CONFIDENCE:.0%}, facts resampled within each relation) of the macro P@1 difference: the "
                 f"goal, P@1 within {WITHIN:g} point of the full mixture, is shown only when its lower end is "
                 f"above -{WITHIN:g}; a p-value above 0.02 alone only says the difference is not significant. "
                 "Time: the configuration's train+test seconds over the full mixture's (see above on what "
                 "shared the machine); per step: the step-cost table's ratio at the whole set's K, on the relations it "
                 "timed.", "",
                 "| configuration | relations | P@1 | full | difference | interval | p | within 1 point | time | "
                 "per step |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            step = f"{row['step'][0]:.2f}× ({' '.join(row['step'][1])})" if row["step"] else "–"
            verdict = "shown" if row["low"] >= -WITHIN else "not shown"
            lines.append(f"| {row['label']} | {' '.join(row['relations'])} | {row['p@1']:.1f} | {row['full']:.1f} | "
                         f"{row['difference']:+.1f} | [{row['low']:+.1f}, {row['high']:+.1f}] | {row['p']:.2f} | "
                         f"{verdict} | {row['time']:.2f}× | {step} |")
        return [*lines, ""]

    @functools.cached_property
    def over_seeds(self) -> list[dict[str, Any]]:
        """Each cheaper configuration against the full mixture seed by seed (--seeds), on the relations where
        every seed of both has run: the spread over seeds is the training noise one run per configuration hides."""
        if len(self.args.seeds) < 2:
            return []
        full, rows = full_mixture(), []
        for unit in (u for u in units("scaling") if not u.is_full_mixture):
            pairs = [(with_seed(unit, seed), with_seed(full, seed)) for seed in self.args.seeds]
            rels = [r for r in self.relations if all(r in self.done(u) for pair in pairs for u in pair)]
            if not rels:
                continue
            cheap, whole = ([100 * self.macro(pair[i], rels)["p@1"] for pair in pairs] for i in (0, 1))
            rows.append({"label": self.scaling_label(unit), "relations": rels, "cheap": cheap, "full": whole,
                         "differences": [a - b for a, b in zip(cheap, whole, strict=True)]})
        return rows

    def over_seeds_table(self) -> list[str]:
        if not self.over_seeds:
            return []
        lines = [f"## Cheaper training against the full mixture over seeds {' '.join(map(str, self.args.seeds))} "
                 "(P@1, min. prompts, soft)", "",
                 "Each configuration and the full mixture trained once per seed (the order of the training facts "
                 "and the posterior draws change; the initial prompts do not), on the relations where every seed "
                 "of both has run: macro P@1 as mean ± standard deviation over seeds, and the difference seed "
                 "by seed. Unlike the intervals above, the spread here includes the noise of training.", "",
                 "| configuration | relations | P@1 | full | difference per seed | difference |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {row['label']} | {' '.join(row['relations'])} | {mean_sd(row['cheap'])} | {mean_sd(row['full'])} "
                  f"| {' '.join(f'{d:+.1f}' for d in row['differences'])} | {mean_sd(row['differences'], sign=True)} |"
                  for row in self.over_seeds]
        return [*lines, ""]

    @functools.cached_property
    def across_machines(self) -> list[dict[str, Any]]:
        """Each configuration of this store (another machine's) against the same configuration in the profile's
        own store: same settings and seed, so they differ only by floating-point rounding, which sends training
        down another path. The spread is the noise floor of comparing two configurations by one run each."""
        other = self.store.parent / self.args.profile
        if other == self.store:
            return []
        rows = []
        for unit in (u for e in self.args.experiments for u in units(e)):
            rels = [r for r in self.done(unit) if is_current(record_path(other, unit, r), self.profile, unit)]
            if not rels:
                continue
            theirs = {r: json.loads(record_path(other, unit, r).read_text()) for r in rels}
            paired = pair_runs(fact_rows(theirs), self.rows(unit, rels), "p@1")
            low, high = paired_bootstrap_interval(paired.a, paired.b, paired.groups, CONFIDENCE, 10000)
            gaps = [self.record(unit, r)["metrics"]["test"]["p@1"] - theirs[r]["metrics"]["test"]["p@1"]
                    for r in rels]
            here = 100 * self.macro(unit, rels)["p@1"]
            there = 100 * macro_average({r: d["metrics"]["test"] for r, d in theirs.items()})["p@1"]
            rows.append({"label": unit.name, "relations": rels, "n": len(rels), "here": here, "there": there,
                         "difference": here - there, "low": 100 * low, "high": 100 * high,
                         "p": paired_permutation_test(paired.a, paired.b, paired.groups, permutations=10000),
                         "largest": 100 * max(gaps, key=abs)})
        return rows

    def across_machines_table(self) -> list[str]:
        rows = self.across_machines
        if not rows:
            return []
        lines = [f"## The same runs on two machines (P@1: this store against `{self.args.profile}`)", "",
                 "Each configuration here against the same configuration, settings and seed in the "
                 f"`{self.args.profile}` store (the 2-core CPU, `docs/results/mixtures.md`), on the relations "
                 "both ran. Only floating-point rounding differs, yet it changes the path training takes: the "
                 "differences below are what a single run per configuration cannot tell apart from a real "
                 "effect. Interval: paired bootstrap over test facts, as above; it does not include this "
                 "training noise.", "",
                 "| configuration | relations | here | there | difference | interval | p | largest on one relation |",
                 "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row['label']} | {' '.join(row['relations'])} | {row['here']:.1f} | {row['there']:.1f} | "
                  f"{row['difference']:+.1f} | [{row['low']:+.1f}, {row['high']:+.1f}] | {row['p']:.2f} | "
                  f"{row['largest']:+.1f} |" for row in rows]
        return [*lines, ""]

    def step_ratio(self, unit: Unit, relations: list[str]) -> tuple[float, list[str]] | None:
        """A sparse-posterior unit's step time over the full mixture's at the whole set's K, averaged over those
        of ``relations`` that --step-cost timed (wall-clock run times depend on what else shared the cores)."""
        timed = {}
        for r in relations:
            path = step_cost_path(self.store, r)
            seconds = json.loads(path.read_text())["rows"][-1]["seconds"] if path.is_file() else {}
            if unit.step_method in seconds:
                timed[r] = seconds[unit.step_method] / seconds["full"]
        return (sum(timed.values()) / len(timed), list(timed)) if timed else None

    def step_cost_table(self) -> list[str]:
        paths = sorted((self.store / "step_cost").glob("*.json")) if (self.store / "step_cost").is_dir() else []
        lines = []
        for path in paths:
            doc = json.loads(path.read_text())
            names = list(doc["rows"][-1]["seconds"])
            sparse = [n for n in names if n != "full"]
            lines += [f"## Seconds per training step versus K ({path.stem}, min. prompts)", "",
                      f"One training step (forward and backward, batch of {doc['batch']} facts) of a soft mixture of "
                      f"the first K mined prompts; median of {doc['repeats']} repeats, the methods timed in turn "
                      f"within each repeat, {doc['threads']} thread(s) (other benchmark processes shared the "
                      "cores, so compare the columns, not the absolute times). Reproduce: `.venv/bin/python "
                      f"benchmarks/mixtures.py --step-cost --relations {path.stem}`."
                      + ("" if doc.get("rows_grouped_by_length") else
                         " Timed before a step's rows were grouped by length (each step was one batch padded to "
                         "its longest prompt), so the absolute times are those of the older code; "
                         "`benchmarks/mixture_step.py` measures what the grouping saves."), "",
                      "| K | full | " + " | ".join(sparse_label(*parse_sparse_method(n)) for n in sparse)
                      + " | " + " | ".join(f"{n.removeprefix('sparse')} / full" for n in sparse) + " |",
                      "|---|" + "---|" * (1 + 2 * len(sparse))]
            for row in doc["rows"]:
                t = row["seconds"]
                cells = [f"{t[n]:.2f}" if n in t else "–" for n in names]
                ratios = [f"{t[n] / t['full']:.2f}" if n in t else "–" for n in sparse]
                lines.append(f"| {row['K']} | " + " | ".join(cells + ratios) + " |")
            lines.append("")
        return lines

    def heaviest_table(self) -> list[str]:
        full = full_mixture()
        cuts = {}
        for r in self.done(full):
            path = heaviest_path(self.store, r)
            if path.is_file() and (doc := json.loads(path.read_text()))["of"] == self.record(full, r)["identity"]:
                cuts[r] = doc["k"]
        if not cuts:
            return []
        rels = list(cuts)
        base = self.macro(full, rels)
        lines = ["## Pruning the trained full mixture instead (inference cost)", "",
                 "The full mixture above, after training, restricted to its k heaviest prompts (weights "
                 "renormalised) and tested again: pruning after training costs the full mixture's training but "
                 "only k/K of its inference. Compare with the pruning before (or early in) training above.", "",
                 f"Relations: {' '.join(rels)}.", "",
                 "| prompts kept | weight kept | P@1 | P@10 | MRR | P@1 against all prompts |",
                 "|---|---|---|---|---|---|"]
        for k in (str(k) for k in HEAVIEST):
            if not all(k in cuts[r] for r in rels):
                continue
            m = macro_average({r: cuts[r][k]["test"] for r in rels})
            kept = sum(cuts[r][k]["weight_kept"] for r in rels) / len(rels)
            p = p_value(fact_rows({r: cuts[r][k] for r in rels}), self.rows(full, rels), "p@1")
            lines.append(f"| {k} | {kept:.2f} | {100 * m['p@1']:.1f} | {100 * m['p@10']:.1f} | {100 * m['mrr']:.1f} "
                         f"| {100 * (m['p@1'] - base['p@1']):+.1f} (p = {p:.2f}) |")
        lines.append(f"| all | 1.00 | {100 * base['p@1']:.1f} | {100 * base['p@10']:.1f} | {100 * base['mrr']:.1f} "
                     "| |")
        return [*lines, ""]

    def figure(self) -> list[str]:
        """Figure 1 analogue for the largest trained mixture of mined prompts that exists."""
        for name in ("min-soft-all", "min-soft-top8", "min-soft"):
            unit = next(u for e in ("scaling", "main") for u in units(e) if u.name == name)
            done = self.done(unit)
            for relation in done:
                run = run_dir(self.cache, unit, relation)
                store = "" if self.args.store == self.args.profile else f"{self.args.store}-"
                figure = self.args.out.parent / "figures" / f"mixture-{store}{relation}-{name}.png"
                title = f"{relation} {name}"
                if (run / "prompt.safetensors").is_file():
                    save_png(read_mixture(load_prompt(run / "prompt.safetensors", self.lm)), figure, title, top=8)
                elif not figure.is_file():
                    continue  # drawn from the prompt file, which only the cache of the machine that trained it has
                rel = figure.relative_to(self.args.out.parent)
                return ["## A trained mixture (Figure 1 analogue)", "",
                        f"`softprompt mixture show {run.relative_to(ROOT.parent)}` for {relation}, {name}: the "
                        "8 heaviest prompts with their weights; in each cell the original word (grey) over the "
                        "nearest vocabulary word of the tuned vector by p(w | v), shaded by ‖v‖/‖v0‖.", "",
                        f"![{title}]({rel})", ""]
        return []

    def entropy_table(self) -> list[str]:
        lines = ["## Effective number of prompts 2^H after training (Table 10)", "",
                 "| prompts | stage | relations | K | min | mean | max |", "|---|---|---|---|---|---|---|"]
        for s in SETS[1:]:
            for stage in ("soft", "deep"):
                unit = next(u for u in units("main") if u.name == f"{s}-{stage}")
                rels = self.common([unit])
                if not rels:
                    continue
                docs = self.docs(unit, rels).values()
                eff = [d["effective_prompts"] for d in docs]
                k = sum(d["num_prompts"] for d in docs) / len(rels)
                lines.append(f"| {s}. | {stage} | {' '.join(rels)} | {k:.1f} | {min(eff):.2f} | "
                             f"{sum(eff) / len(eff):.2f} | {max(eff):.2f} |")
        return [*lines, ""] if len(lines) > 4 else []

    def distinct_table(self) -> list[str]:
        named = [(u.name.removeprefix("distinct-"), u) for u in units("distinct")]
        table = self._simple_table(
            "Distinct answers across splits (Table 9, trex_distinct)",
            "No object is shared between train, dev and test: the prompt cannot win by learning frequent answers.",
            named)
        if not table:
            return table
        rels = self.common([u for _, u in named])
        by_name, main = dict(named), {u.name: u for u in units("main")}

        def p1(unit: Unit, relation: str) -> float:
            return 100 * self.record(unit, relation)["metrics"]["test"]["p@1"]

        sizes = {r: self.record(by_name["sin-init"], r)["metrics"]["test"]["n"] for r in rels}
        total = sum(sizes.values())
        tests, pooled = [], []
        for s in ("sin", "min"):
            init, soft = by_name[f"{s}-init"], by_name[f"{s}-soft"]
            gain = 100 * (self.macro(soft, rels)["p@1"] - self.macro(init, rels)["p@1"])
            tests.append(f"{s}. {gain:+.1f} (p = {self.p_value(init, soft, 'p@1', rels):.2f})")
            pooled.append(f"{s}. " + " → ".join(f"{sum(sizes[r] * p1(u, r) for r in rels) / total:.1f}"
                                                for u in (init, soft)))
        lines = [
            *table[:-1], "",
            f"P@1 of soft over init, paired permutation test: {'; '.join(tests)}. The test splits are small and "
            f"uneven ({min(sizes.values())}–{max(sizes.values())} single-token facts), so the macro average weighs "
            f"a relation's few facts as much as another's many; pooled over all {total} facts instead: "
            f"{'; '.join(pooled)}.", "",
            "Per relation (P@1, init → soft), next to the same configurations on the original split, where answers "
            "recur across splits:", "",
            "| relation | test facts | sin. | min. | original: sin. | original: min. |", "|---|---|---|---|---|---|"]
        for r in rels:
            cells = [f"{p1(by_name[f'{s}-init'], r):.1f} → {p1(by_name[f'{s}-soft'], r):.1f}" for s in ("sin", "min")]
            cells += [" → ".join(f"{p1(u, r):.1f}" for u in (main[f"{s}-init"], main[f"{s}-soft"])
                                 if r in self.done(u)) or "–" for s in ("sin", "min")]
            lines.append(f"| {r} | {sizes[r]} | " + " | ".join(cells) + " |")
        return [*lines, ""]


if __name__ == "__main__":
    main()
