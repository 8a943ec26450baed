"""One analysis over a set of trained task-prompt runs: everything the report shows, in analysis.json.

Runs are directories written by ``softprompt task train`` (prompt.safetensors + metrics.json). Every
expensive unit (one prompt's faithfulness, one transfer cell, one prompt's neuron pattern) is cached
under OUT/cache/<settings hash>/, so an interrupted analysis resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.analysis.faithfulness import faithfulness
from softprompt.analysis.geometry import (
    HIGHER_IS_SIMILAR,
    SIMILARITIES,
    group_mean,
    pairwise,
    stochasticity,
    tsne_map,
)
from softprompt.analysis.neurons import POSITIONS, mean_activations, neuron_overlap
from softprompt.analysis.readings import METRICS, nearest_tokens, prompt_vectors
from softprompt.analysis.transfer import similarity_vs_transfer, transfer_matrix
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_json
from softprompt.models import LanguageModel
from softprompt.prompts import load_prompt
from softprompt.prompts.task import TaskPrompt
from softprompt.runs import RunDir
from softprompt.tasks.run import TaskSettings, predict, task_metrics
from softprompt.tasks.sampling import sample_record, stratified_sample
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE
from softprompt.tasks.task import Task, TaskExample

log = logging.getLogger(__name__)

PARTS = ("readings", "faithfulness", "stochasticity", "similarity", "transfer")
FORMAT = "softprompt.analysis/1"


@dataclass
class Run:
    path: Path
    label: str
    task: str
    prompt: TaskPrompt
    doc: dict[str, Any]

    @property
    def vectors(self) -> torch.Tensor:
        return prompt_vectors(self.prompt).cpu()


@dataclass(frozen=True)
class AnalysisConfig:
    parts: tuple[str, ...] = PARTS
    top_k: int = 3
    eval_limit: int = 100  # a stratified sample of evaluation examples per task for faithfulness and transfer
    probe_size: int = 8  # probe inputs per task for neuron overlap
    batch_size: int = CHOICE_BATCH_SIZE
    seed: int = 0  # t-SNE
    eval_seed: int = 0  # the eval_limit sample, drawn as task runs draw theirs

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise SoftpromptError(f"unknown analysis part(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                                  f"choose from: {', '.join(PARTS)}")
        for name in ("top_k", "eval_limit", "probe_size", "batch_size"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {getattr(self, name)}")


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories (prompt.safetensors and metrics.json) at or below each path, in sorted order."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise SoftpromptError(f"{path} does not exist")
        runs = sorted({p.parent for p in path.rglob("metrics.json") if (p.parent / "prompt.safetensors").is_file()})
        if (path / "metrics.json").is_file() and (path / "prompt.safetensors").is_file():
            runs = [path]
        if not runs:
            raise SoftpromptError(f"{path} holds no prompt runs (directories with prompt.safetensors and "
                                  "metrics.json, as `softprompt task train` writes)")
        found += [r for r in runs if r not in found]
    return found


def load_runs(paths: Sequence[Path], lm: LanguageModel) -> list[Run]:
    dirs = [d.resolve() for d in find_runs(paths)]
    root = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    runs = []
    for d in dirs:
        prompt = load_prompt(d / "prompt.safetensors", lm)
        if not isinstance(prompt, TaskPrompt) or prompt.length == 0:
            raise SoftpromptError(f"{d}: analysis reads trained task prompts; this run holds "
                                  f"{'a prompt without vectors' if isinstance(prompt, TaskPrompt) else prompt.kind}")
        doc = RunDir(d).metrics()  # refuses a directory whose files belong to two runs
        task = doc.get("task")
        if not isinstance(task, str):
            raise SoftpromptError(f"{d / 'metrics.json'}: not a task run's metrics (no task name); retrain the run")
        prompt.requires_grad_(False)
        runs.append(Run(d, str(d.relative_to(root)) if d != root else d.name, task, prompt, doc))
    return runs


@dataclass
class Analysis:
    """Inputs of one analysis: the model, runs, and each task's evaluation examples."""

    lm: LanguageModel
    runs: list[Run]
    tasks: Mapping[str, Task]
    examples: Mapping[str, Sequence[TaskExample]]
    config: AnalysisConfig = field(default_factory=AnalysisConfig)
    reference: LanguageModel | None = None

    def __post_init__(self) -> None:
        missing = sorted({r.task for r in self.runs} - set(self.tasks))
        if missing:
            raise SoftpromptError(f"no task definition for {', '.join(missing)}; give them with --task")
        self.engine = Engine(self.lm)

    def key(self) -> str:
        settings = {**asdict(self.config), "parts": None, "model": self.lm.name,
                    "reference": None if self.reference is None else self.reference.name}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def eval_indices(self, task: str) -> list[int]:
        """The evaluation sample of ``task``: seeded and stratified, as ``task eval --eval-limit`` draws it."""
        return stratified_sample([e.label for e in self.examples[task]], self.config.eval_limit, self.config.eval_seed)

    def eval_set(self, task: str) -> list[TaskExample]:
        return [self.examples[task][i] for i in self.eval_indices(task)]

    def samples(self) -> dict[str, dict[str, Any]]:
        """Each task's evaluation sample as analysis.json records it."""
        return {t: sample_record(self.eval_indices(t), len(self.examples[t]), self.config.eval_seed, True)
                for t in dict.fromkeys(r.task for r in self.runs) if t in self.examples}


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """A unit's result from its cache file, computed and written first if there is none (or it is unreadable)."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # a damaged unit is computed again
    value = compute()
    write_json(path, value)
    return value


def _safe(name: str) -> str:
    """A file name for a label or task name taken from run files or YAML: its harmless characters (for people
    reading the cache) and a hash of the whole name, so that no name can reach outside the cache directory
    ("x/../../y") and two names never share a file."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")[:40]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def analyse(a: Analysis, out: Path) -> dict[str, Any]:
    """Run the configured parts, write OUT/analysis.json, and return its content."""
    cache = out / "cache" / a.key()
    lm, runs = a.lm, a.runs
    result: dict[str, Any] = {
        "format": FORMAT, "model": lm.name, "config": asdict(a.config),
        "reference": None if a.reference is None else a.reference.name,
        "runs": [{"label": r.label, "task": r.task, "path": str(r.path), "length": r.prompt.length,
                  "kind": r.prompt.tuning, "layout": r.prompt.layout, "init": r.prompt.init,
                  "metrics": r.doc.get("metrics", {}), "norm": float(r.vectors.norm())} for r in runs],
        "samples": a.samples(),
    }
    parts = a.config.parts
    if "readings" in parts:
        log.info("nearest tokens")
        result["readings"] = {r.label: readings(lm, r.prompt, a.config.top_k) for r in runs}
    if "faithfulness" in parts:
        result["faithfulness"] = {}
        for r in runs:
            log.info(f"faithfulness {r.label}")
            result["faithfulness"][r.label] = cached(cache / "faithfulness" / f"{_safe(r.label)}.json", lambda r=r: (
                faithfulness(a.engine, r.prompt, a.tasks[r.task], a.eval_set(r.task), reference=a.reference,
                             batch_size=a.config.batch_size).to_dict()))
    if "stochasticity" in parts:
        log.info("stochasticity")
        result["stochasticity"] = stochasticity_part(runs, a.config.seed)
    similarities = None
    if "similarity" in parts:
        similarities = similarity_part(a, cache)
        result["similarity"] = similarities
    if "transfer" in parts:
        result["transfer"] = transfer_part(a, cache, similarities)
    write_json(out / "analysis.json", result)
    return result


def readings(lm: LanguageModel, prompt: TaskPrompt, k: int) -> dict[str, Any]:
    vectors = prompt_vectors(prompt)
    out: dict[str, Any] = {}
    for metric in METRICS:
        n = nearest_tokens(lm, vectors, k, metric)
        out[metric] = {"tokens": n.tokens(lm), "scores": [[round(s, 4) for s in row] for row in n.scores.tolist()]}
        if metric == "euclidean":
            out["unembedded"] = lm.tokenizer.decode(n.ids[:, 0].tolist())  # f_U(P) as text
    if prompt.init == "text":
        ids = lm.tokenizer(prompt.init_text, add_special_tokens=False)["input_ids"]
        ids = (ids * (prompt.length // max(len(ids), 1) + 1))[: prompt.length]
        out["initial"] = [lm.tokenizer.decode([i]) for i in ids]
    return out


def group_key(run: Run, mixed_lengths: bool) -> str:
    return f"{run.task} ({run.prompt.length})" if mixed_lengths else run.task


def stochasticity_part(runs: Sequence[Run], seed: int) -> dict[str, Any]:
    mixed = len({r.prompt.length for r in runs}) > 1
    groups: dict[str, list[torch.Tensor]] = {}
    for r in runs:
        groups.setdefault(group_key(r, mixed), []).append(r.vectors)
    out: dict[str, Any] = {"tasks": {k: v.to_dict() for k, v in stochasticity(groups).items()}}
    # The map takes the most common shape: t-SNE needs one vector length.
    lengths = [r.prompt.length for r in runs]
    common = max(set(lengths), key=lengths.count)
    shown = [r for r in runs if r.prompt.length == common]
    if len(shown) >= 3:
        coords = tsne_map([r.vectors for r in shown], seed)
        out["tsne"] = {"labels": [r.label for r in shown], "tasks": [r.task for r in shown], "points": coords,
                       "length": common}
    return out


def similarity_part(a: Analysis, cache: Path) -> dict[str, Any]:
    runs = a.runs
    vectors = [r.vectors for r in runs]
    matrices = {name: pairwise(vectors, fn) for name, fn in SIMILARITIES.items()}
    probes = {t: list(a.examples[t])[: a.config.probe_size] for t in dict.fromkeys(r.task for r in runs)}
    # A pattern averages over every task's probes, so it is only reusable with the same set of tasks.
    probe_key = hashlib.sha256(" ".join(sorted(probes)).encode()).hexdigest()[:8]
    for positions in POSITIONS:
        patterns = []
        for r in runs:
            log.info(f"neurons ({positions}) {r.label}")

            def compute(r: Run = r, positions: str = positions) -> list:
                acts = [mean_activations(a.engine, r.prompt, a.tasks[t], ex, positions, a.config.batch_size)
                        for t, ex in probes.items()]
                return (torch.stack(acts).mean(0) > 0).to(torch.uint8).tolist()

            patterns.append(torch.tensor(cached(cache / f"neurons-{positions}-{probe_key}" / f"{_safe(r.label)}.json",
                                                compute), dtype=torch.bool))
        name = "neuron_overlap" if positions == "prompt" else "neuron_overlap_answer"
        matrices[name] = pairwise(patterns, neuron_overlap)
    groups = [r.task for r in runs]
    return {"labels": [r.label for r in runs], "tasks": groups, "probe_size": a.config.probe_size,
            "prompts": matrices, "task_level": {n: group_mean(m, groups) for n, m in matrices.items()}}


def transfer_part(a: Analysis, cache: Path, similarities: dict[str, Any] | None) -> dict[str, Any]:
    runs = a.runs
    targets = list(dict.fromkeys(r.task for r in runs))

    def evaluate(i: int | None, target: str) -> float:
        label = "no-prompt" if i is None else _safe(runs[i].label)
        log.info(f"transfer {label} -> {target}")

        def compute() -> float | None:
            task, examples = a.tasks[target], a.eval_set(target)
            scores = predict(a.engine, None if i is None else runs[i].prompt, task, examples, TaskSettings(),
                             a.config.batch_size)
            return task_metrics(task, scores, [e.label for e in examples])[task.metrics[0]]

        value = cached(cache / "transfer" / f"{label}__{_safe(target)}.json", compute)
        return math.nan if value is None else value  # undefined on the sample: NaN through the means, null in JSON

    matrix = transfer_matrix([(r.label, r.task) for r in runs], targets, evaluate)
    out: dict[str, Any] = {**matrix.to_dict(), "metrics": {t: a.tasks[t].metrics[0] for t in targets},
                           "task_scores": matrix.task_scores(), "own": matrix.own(),
                           "change_vs_no_prompt": matrix.change_vs_no_prompt(),
                           "change_vs_own": matrix.change_vs_own()}
    if similarities is not None:
        indicators = {**HIGHER_IS_SIMILAR, "neuron_overlap_answer": True}
        correlations, points = similarity_vs_transfer(matrix, similarities["prompts"], indicators)
        out["correlations"] = [asdict(c) for c in correlations]
        out["points"] = points
    return out
