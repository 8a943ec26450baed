"""Hyperparameter sweeps on Ray Tune: ``softprompt sweep SWEEP.yaml --out DIR``.

A sweep file names one kind of run (``task``: a task prompt, ``probe``: a prompt for one relation), the settings
every trial shares (``fixed``), a search space over those same settings (``search``: grid, choice, uniform,
loguniform), the dev metric that picks the best trial and, optionally, ASHA early stopping. Every trial is an
ordinary run directory, ``DIR/trials/<trial>``, written by the run pipeline itself (``run_task``, ``run_probe``):
it resumes, evaluates and compares like any run. ``DIR/summary.json`` ranks the trials, best first.

Ray does the scheduling: trials are function trainables, run as many at a time as the CPUs (locally,
``ray.init(num_cpus=N)``) or the cluster (``--address``) allow. A trial reports after every epoch (through
``observe_epochs``, after the epoch's checkpoint is written) with a small Ray checkpoint, so ASHA can stop it
between epochs and ``Tuner.restore`` can continue an interrupted sweep: finished trials are not run again, an
interrupted one resumes its own run directory from its last checkpoint (``tune.get_checkpoint()`` says that it
was interrupted). Selection uses the dev data held out from training (early stopping's), never the evaluation
split: the evaluation score of the chosen trial is then an honest estimate.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import excerpt, one_line, write_json
from softprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from softprompt.optimizers import TrainConfig
from softprompt.optimizers.gradient import observe_epochs
from softprompt.paths import shared_data_dir
from softprompt.probing import Relation, encode_relation, evaluate, geo_relation, load_relation, run_probe
from softprompt.prompts import load_prompt
from softprompt.prompts.soft import INITS as PROBE_INITS
from softprompt.runs import CHECKPOINT, PROMPT
from softprompt.tasks import TaskSettings, load_task, predict, run_task, task_metrics
from softprompt.tasks.run import load_split, split_data
from softprompt.tasks.task import Task, TaskExample

TRIALS = "trials"  # DIR/trials/<trial>: the trials' run directories
EXPERIMENT = "ray"  # DIR/ray: Ray Tune's experiment state (what Tuner.restore reads)
RECORD = "sweep.json"  # the sweep as started: a resume must be the same sweep
SUMMARY = "summary.json"
BEST_DEV_LOSS = "best_dev_loss"  # known after every epoch, so the one metric ASHA can act on
DOMAINS = ("grid", "choice", "uniform", "loguniform")
TOP_KEYS = {"task", "probe", "model", "data_dir", "template", "fixed", "search", "metric", "samples", "scheduler",
            "resources", "concurrent", "search_seed"}
PROBE_METRICS = ("p@1", "p@10", "mrr")
MAX_SWEEP_BYTES = 64_000
MAX_YAML_DEPTH = 8


@dataclass(frozen=True)
class ProbeSettings:
    """A probing trial's settings besides the optimiser's (``probe train``'s options of the same names)."""

    mode: str = "soft"
    init: str = "template"
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "deep"):
            raise SoftpromptError(f"mode must be soft or deep (a hard prompt has nothing to tune), got {self.mode!r}")
        if self.init not in PROBE_INITS:
            raise SoftpromptError(f"unknown init {self.init!r}; choose one of: {', '.join(PROBE_INITS)}")
        for name in ("max_train", "max_dev", "max_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SoftpromptError(f"{name} must be at least 1, got {value}")

    def limits(self) -> dict[str, int]:
        caps = {"train": self.max_train, "dev": self.max_dev, "test": self.max_test}
        return {split: cap for split, cap in caps.items() if cap is not None}


SETTINGS: dict[str, type] = {"task": TaskSettings, "probe": ProbeSettings}


@dataclass(frozen=True)
class Domain:
    """One searched setting: ``grid`` runs every value (in every combination with the other grids), ``choice``
    draws one of the values, ``uniform`` and ``loguniform`` draw a real number between the two bounds."""

    kind: str
    values: tuple[Any, ...]

    def tune(self) -> Any:
        """The Ray Tune search-space object."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return (tune.uniform if self.kind == "uniform" else tune.loguniform)(*self.values)

    def record(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class Asha:
    """ASHA early stopping (Li et al. 2020): at each rung (grace_period epochs, then times reduction_factor), a
    trial continues only if its best dev loss so far is in the top 1/reduction_factor of the trials that reached
    the rung. Its stopped trials keep their run directory, interrupted (a checkpoint, no metrics.json)."""

    grace_period: int = 1
    reduction_factor: float = 4  # Ray's default


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file. Paths are absolute, so that trials find them from any working directory."""

    source: str  # the sweep file, for messages
    run: str  # "task" or "probe"
    target: str  # the task (a built-in name or a YAML file), or the probe's facts (geo:NAME, a directory, a file)
    model: str = DEFAULT_MODEL
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Domain] = field(default_factory=dict)
    metric: str = BEST_DEV_LOSS
    samples: int = 1  # times the grid is run (with its other settings drawn anew), or draws without a grid
    scheduler: Asha | None = None
    cpus: float = 1.0  # per trial; also its torch threads
    gpus: float = 0.0  # per trial; a trial with a GPU runs its model there
    concurrent: int | None = None  # trials at once (None: as many as the resources allow)
    search_seed: int = 0  # of the draws of choice/uniform/loguniform, so a sweep file always means one set of trials
    data_dir: str | None = None  # the task's data directory
    template: str | None = None  # the probe's template (default: the relation's own)
    train_defaults: TrainConfig = field(default_factory=TrainConfig)  # what fixed and search leave unset

    @property
    def mode(self) -> str:
        return "min" if self.metric == BEST_DEV_LOSS else "max"

    def max_epochs(self) -> int:
        """The most epochs a trial trains (ASHA's last rung)."""
        if "max_epochs" in self.space:
            return max(self.space["max_epochs"].values)
        return self.fixed.get("max_epochs", self.train_defaults.max_epochs)

    def settings(self, sampled: Mapping[str, Any]) -> tuple[Any, TrainConfig]:
        """A trial's run settings and TrainConfig: the defaults, then ``fixed``, then its ``sampled`` values."""
        values = {**self.fixed, **sampled}
        train = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
        own = {k: v for k, v in values.items() if k not in TRAIN_FIELDS}
        return SETTINGS[self.run](**own), replace(self.train_defaults, **train)

    def record(self) -> dict[str, Any]:
        """The sweep as JSON (DIR/sweep.json): what a resumed sweep must equal."""
        return {"source": self.source, "run": self.run, "target": self.target, "model": self.model,
                "fixed": self.fixed, "search": {k: d.record() for k, d in self.space.items()}, "metric": self.metric,
                "mode": self.mode, "samples": self.samples,
                "scheduler": None if self.scheduler is None else asdict(self.scheduler),
                "resources": {"cpu": self.cpus, "gpu": self.gpus}, "concurrent": self.concurrent,
                "search_seed": self.search_seed, "data_dir": self.data_dir, "template": self.template,
                "train_defaults": asdict(self.train_defaults)}


TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}


def run_fields(run: str) -> dict[str, Any]:
    """The settings a sweep of ``run`` may fix or search: the run's own, then TrainConfig's."""
    return {f.name: f for f in fields(SETTINGS[run])} | TRAIN_FIELDS


# --- reading a sweep file ------------------------------------------------------------------------------------


class _SweepLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases, and with nesting bounded: a sweep file needs neither, and an alias
    lets a few lines expand to billions of nodes once the sweep is written out as JSON."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"found the alias *{self.peek_event().anchor}: aliases "
                                              "are not allowed in a sweep file; write the value out",
                                              self.peek_event().start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_sweep_file(path: Path) -> dict[str, Any]:
    """The sweep file's mapping; anything else (missing, too large, not UTF-8, not YAML) is one line."""
    if not path.is_file():
        raise SoftpromptError(f"sweep file not found: {path}")
    if path.stat().st_size > MAX_SWEEP_BYTES:
        raise SoftpromptError(f"{path}: a sweep file of over {MAX_SWEEP_BYTES // 1000} kB; it only names the runs")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SoftpromptError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        doc = yaml.load(text, Loader=_SweepLoader)  # a SafeLoader: it builds only plain data
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SoftpromptError(f"{path}{line}: not valid YAML ({one_line(getattr(err, 'problem', None) or err)})") \
            from err
    except Exception as err:  # PyYAML's constructors: ValueError for 2024-13-01, ...
        raise SoftpromptError(f"{path}: not valid YAML ({one_line(err)})") from err
    if not isinstance(doc, dict):
        raise SoftpromptError(f"{path}: a sweep file is a mapping (task or probe, fixed, search, metric, ...)")
    return doc


def coerce(where: str, name: str, spec: Any, value: Any) -> Any:
    """``value`` as the dataclass field ``spec`` takes it, or one line naming the field. A float field also takes
    a number written as text: YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    kinds = {part.strip() for part in str(spec.type).split("|")}
    if "float" in kinds and isinstance(value, str):
        with suppress(ValueError):
            value = float(value)
    ok = ((value is None and "None" in kinds) or (isinstance(value, bool) and "bool" in kinds)
          or (not isinstance(value, bool) and ((isinstance(value, int) and kinds & {"int", "float"})
                                               or (isinstance(value, float) and "float" in kinds)
                                               or (isinstance(value, str) and "str" in kinds))))
    if not ok:
        wanted = " or ".join(sorted(kinds - {"None"})) + (" or null" if "None" in kinds else "")
        raise SoftpromptError(f"{where}: field '{name}' takes {wanted}, got {excerpt(value)}")
    return float(value) if kinds == {"float"} else value


def check_values(where: str, run: str, values: Mapping[str, Any], base: TrainConfig) -> None:
    """Build the run's settings from ``values`` to let their own checks speak, naming the field(s)."""
    train = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
    own = {k: v for k, v in values.items() if k not in TRAIN_FIELDS}
    try:
        settings = SETTINGS[run](**own)
        replace(base, **train)
    except SoftpromptError as err:
        raise SoftpromptError(f"{where}: {err}") from None
    if run == "task" and settings.kind == "hard":
        raise SoftpromptError(f"{where}: kind hard has nothing to train; a sweep tunes soft or deep prompts")


def parse_domain(where: str, name: str, spec: Any, raw: Any) -> Domain:
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in DOMAINS):
        raise SoftpromptError(f"{where}: give one of {', '.join(DOMAINS)}, e.g. {{grid: [0.001, 0.01]}}, got "
                              f"{excerpt(raw)}")
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise SoftpromptError(f"{where}: {kind} needs a list of values, got {excerpt(values)}")
    values = [coerce(where, name, spec, v) for v in values]
    if kind in ("uniform", "loguniform"):
        if "float" not in str(spec.type):
            raise SoftpromptError(f"{where}: {kind} draws a real number between two bounds [low, high]; field "
                                  f"'{name}' takes {spec.type} (use grid or choice)")
        if len(values) != 2 or None in values:
            raise SoftpromptError(f"{where}: {kind} needs two bounds [low, high], got {excerpt(values)}")
        low, high = values
        if not low < high or (kind == "loguniform" and low <= 0):
            raise SoftpromptError(f"{where}: {kind} needs {'0 < ' if kind == 'loguniform' else ''}low < high, got "
                                  f"{excerpt(values)}")
    elif len(set(map(json.dumps, values))) < len(values):
        raise SoftpromptError(f"{where}: {kind} lists a value twice: {excerpt(values)}")
    return Domain(kind, tuple(values))


def load_sweep(path: Path, task_defaults: TrainConfig | None = None, data_dir: Path | None = None) -> Sweep:
    """Read and check a sweep file: every field, every searched value and the metric, before any trial runs.
    ``task_defaults`` is the TrainConfig a task trial starts from (the command line's task defaults), ``data_dir``
    where a task's data is when the file does not say."""
    doc = read_sweep_file(path)
    here = path.resolve().parent
    src = str(path)
    if unknown := sorted(set(doc) - TOP_KEYS, key=str):
        raise SoftpromptError(f"{src}: unknown field(s) {', '.join(map(str, unknown))}; known: "
                              f"{', '.join(sorted(TOP_KEYS))}")
    runs = [r for r in SETTINGS if r in doc]
    if len(runs) != 1:
        raise SoftpromptError(f"{src}: give exactly one of 'task' (a task name or YAML file) or 'probe' (the facts: "
                              "geo:NAME, a split directory or a JSONL file)")
    run = runs[0]
    target = doc[run]
    if not isinstance(target, str) or not target:
        raise SoftpromptError(f"{src}: field '{run}' must be a non-empty string, got {excerpt(target)}")
    # A task is a built-in name or a YAML file; the facts are geo:NAME or a path. Paths are the sweep file's.
    is_path = (target.endswith((".yaml", ".yml")) or (here / target).exists() if run == "task"
               else not target.startswith("geo:"))
    if is_path:
        target = str(here / target)
    for key, only in (("data_dir", "task"), ("template", "probe")):
        if key in doc and run != only:
            raise SoftpromptError(f"{src}: field '{key}' belongs to a {only} sweep")
        if key in doc and not (isinstance(doc[key], str) and doc[key]):
            raise SoftpromptError(f"{src}: field '{key}' must be a non-empty string, got {excerpt(doc[key])}")
    model = doc.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise SoftpromptError(f"{src}: field 'model' must be a non-empty string, got {excerpt(model)}")
    if (here / model).exists():
        model = str(here / model)

    base = task_defaults or TrainConfig() if run == "task" else TrainConfig()
    known = run_fields(run)
    fixed_raw, search_raw = doc.get("fixed") or {}, doc.get("search")
    for key, raw in (("fixed", fixed_raw), ("search", search_raw)):
        if not isinstance(raw, dict) or (key == "search" and not raw):
            raise SoftpromptError(f"{src}: field '{key}' must map settings to "
                                  + ("values" if key == "fixed" else "search domains, e.g. lr: {loguniform: "
                                                                     "[0.001, 0.1]}") + f", got {excerpt(raw)}")
        if unknown := sorted(set(raw) - set(known), key=str):
            raise SoftpromptError(f"{src}: {key}: unknown setting(s) {', '.join(map(str, unknown))} for a {run} "
                                  f"sweep; known: {', '.join(known)}")
    if both := sorted(set(fixed_raw) & set(search_raw)):
        raise SoftpromptError(f"{src}: {', '.join(both)} both fixed and searched; keep one")
    fixed = {k: coerce(f"{src}: fixed.{k}", k, known[k], v) for k, v in fixed_raw.items()}
    check_values(f"{src}: fixed", run, fixed, base)
    space = {k: parse_domain(f"{src}: search.{k}", k, known[k], v) for k, v in search_raw.items()}
    for name, domain in space.items():
        for value in domain.values:
            check_values(f"{src}: search.{name}", run, fixed | {name: value}, base)

    if "data_dir" in doc:
        data_dir = here / doc["data_dir"]
    sweep = Sweep(src, run, target, model, fixed, space, train_defaults=base, **options(src, doc, run, target),
                  data_dir=str(data_dir) if data_dir is not None and run == "task" else None,
                  template=doc.get("template"))
    if sweep.scheduler is not None and sweep.scheduler.grace_period > sweep.max_epochs():
        raise SoftpromptError(f"{src}: scheduler.grace_period {sweep.scheduler.grace_period} is more than the "
                              f"{sweep.max_epochs()} epochs a trial trains at most")
    return sweep


def options(src: str, doc: dict[str, Any], run: str, target: str) -> dict[str, Any]:
    """The sweep-level fields: metric, samples, scheduler, resources, concurrent, search_seed."""
    out: dict[str, Any] = {}
    metric = doc.get("metric", BEST_DEV_LOSS)
    metrics = [BEST_DEV_LOSS, *(f"dev_{m}" for m in (load_task(target).metrics if run == "task" else PROBE_METRICS))]
    if metric not in metrics:
        hint = (f"; {metric} is measured on the evaluation split, which would then no longer estimate the chosen "
                f"trial's score: select on dev_{metric.partition('_')[2]}"
                if isinstance(metric, str) and metric.startswith(("eval_", "test_")) else "")
        raise SoftpromptError(f"{src}: unknown metric {excerpt(metric)}; choose one of: {', '.join(metrics)}{hint}")
    out["metric"] = metric
    for key, low in (("samples", 1), ("concurrent", 1), ("search_seed", 0)):
        if key in doc:
            out[key] = whole_number(f"{src}: field '{key}'", doc[key], low)
    resources = doc.get("resources", {})
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"} or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in resources.values()):
        raise SoftpromptError(f"{src}: field 'resources' maps cpu and gpu to what one trial needs, e.g. {{cpu: 2, "
                              f"gpu: 0.5}}, got {excerpt(resources)}")
    out["cpus"], out["gpus"] = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    if out["cpus"] <= 0:
        raise SoftpromptError(f"{src}: resources.cpu must be more than 0, got {resources['cpu']}")
    if "scheduler" in doc:
        out["scheduler"] = scheduler(src, doc["scheduler"], metric)
    return out


def whole_number(what: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SoftpromptError(f"{what} must be a whole number of at least {low}, got {excerpt(value)}")
    return value


def scheduler(src: str, raw: Any, metric: str) -> Asha:
    """``scheduler: asha``, or ``scheduler: {name: asha, grace_period: 2, reduction_factor: 3}``."""
    spec = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, dict) or spec.get("name") != "asha":
        raise SoftpromptError(f"{src}: field 'scheduler' must be asha, or {{name: asha, grace_period: N, "
                              f"reduction_factor: F}}, got {excerpt(raw)}")
    if unknown := sorted(set(spec) - {"name", "grace_period", "reduction_factor"}, key=str):
        raise SoftpromptError(f"{src}: scheduler: unknown field(s) {', '.join(map(str, unknown))}; known: name, "
                              "grace_period, reduction_factor")
    if metric != BEST_DEV_LOSS:
        raise SoftpromptError(f"{src}: ASHA stops trials between epochs by a metric known after every epoch: "
                              f"select on {BEST_DEV_LOSS}, or drop the scheduler to select on {metric}")
    grace = whole_number(f"{src}: scheduler.grace_period (epochs)", spec.get("grace_period", Asha.grace_period), 1)
    factor = spec.get("reduction_factor", Asha.reduction_factor)
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 1:
        raise SoftpromptError(f"{src}: scheduler.reduction_factor must be a number above 1, got {excerpt(factor)}")
    return Asha(grace, float(factor))


# --- the trials ----------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """What every task trial reads: the task and its splits, loaded once by the driver and shipped through Ray's
    object store, so that the nodes of a cluster need not see the data files."""

    task: Task
    train: list[TaskExample]
    evaluation: list[TaskExample]
    sources: dict[str, str]


def load_data(sweep: Sweep) -> TaskData | Relation:
    """The task and its splits, or the probe's relation, as the trials will use them (errors before any trial)."""
    if sweep.run == "task":
        task = load_task(sweep.target)
        data_dir = sweep.data_dir if sweep.data_dir is not None else shared_data_dir()
        train, train_source = load_split(task, "train", data_dir)
        evaluation, eval_source = load_split(task, "validation", data_dir)
        return TaskData(task, train, evaluation, {"train": train_source, "validation": eval_source})
    if sweep.target.startswith("geo:"):
        relation = geo_relation(sweep.target.removeprefix("geo:"))
        return relation if sweep.template is None else replace(relation, template=sweep.template)
    return load_relation(sweep.target, sweep.template)


def run_trial(sweep: Sweep, data: TaskData | Relation, lm: LanguageModel, settings: Any, config: TrainConfig,
              out: Path, resume: bool) -> dict[str, Any]:
    """Run one trial's run pipeline into ``out``; return what it reports at the end: the epochs trained, the best
    dev loss, the dev metrics (of the trained prompt on the held-out dev data) and the evaluation metrics."""
    engine = Engine(lm)
    if isinstance(data, TaskData):
        doc = run_task(lm, data.task, settings, config, out, data.train, data.evaluation, resume=resume,
                       progress=False, engine=engine, sources=data.sources)
        dev = split_data(data.task, data.train, settings, config.seed)[1]
        scores = predict(engine, load_prompt(out / PROMPT, lm), data.task, dev, settings, config.eval_batch_size)
        dev_metrics = task_metrics(data.task, scores, [e.label for e in dev])
        evaluation = {f"eval_{m}": doc["metrics"][m] for m in data.task.metrics}
    else:
        encoded = encode_relation(data, lm, settings.limits())
        doc = run_probe(lm, data, out, settings.mode, settings.init, config, settings.limits(), resume=resume,
                        progress=False, engine=engine, data=encoded)
        dev_metrics = evaluate(engine, load_prompt(out / PROMPT, lm), encoded, "dev", config.eval_batch_size)[0]
        evaluation = {f"test_{m}": doc["test"][m] for m in PROBE_METRICS}
    dev = {f"dev_{m}": nan_if_none(dev_metrics[m]) for m in dev_metrics if m != "n"}
    return {"epoch": doc["history"][-1]["epoch"], "best_epoch": doc["best_epoch"],
            BEST_DEV_LOSS: doc[BEST_DEV_LOSS], **dev, **{k: nan_if_none(v) for k, v in evaluation.items()}}


def nan_if_none(value: float | None) -> float:
    """A metric the data leave undefined, as Ray can rank it (NaN: never the best)."""
    return math.nan if value is None else float(value)


@functools.lru_cache(maxsize=1)
def worker_model(spec: str, device: str | None) -> LanguageModel:
    """A model loaded once per Ray worker process (a sweep's trials, a benchmark grid's units): Ray gives a worker
    one trial or unit after another, and the model is frozen, so they can share it (a real one takes seconds to
    load). Importable by name, so that a task sent by value still finds the worker's one cache."""
    return load_model(spec, device=device)


def trainable(config: dict[str, Any], sweep: Sweep, data: TaskData | Relation, out: str) -> None:
    """Ray Tune's function trainable: one trial, reporting after every epoch (when the metric is known then) and
    at the end, each report with a Ray checkpoint that marks the run directory as resumable."""
    from ray import tune

    name = tune.get_context().get_trial_name()
    run_dir = Path(out) / TRIALS / name
    # Restored with a Ray checkpoint: the trial reported epochs before the sweep stopped, so its run directory
    # holds its training checkpoint. That checkpoint may also be one epoch ahead of what Ray saw (written just
    # before a report that never arrived), or Ray may have seen none yet: it is this trial's own either way.
    resume = tune.get_checkpoint() is not None or (run_dir / CHECKPOINT).is_file()
    # Ray starts each trial in a process of its own; torch would take every core in each of them.
    torch.set_num_threads(max(1, int(sweep.cpus)))
    # Ray shows every worker's output on the driver's terminal: transformers' loading bars would bury the sweep's.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    settings, config = sweep.settings(config)
    lm = worker_model(sweep.model, "cuda" if sweep.gpus > 0 else None)

    def report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            write_json(Path(folder) / "trial.json", {"run": str(run_dir), "epoch": metrics["epoch"]})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    per_epoch = observe_epochs(lambda r: report({k: r[k] for k in ("epoch", "train_loss", "dev_loss",
                                                                   BEST_DEV_LOSS)}))
    with per_epoch if sweep.metric == BEST_DEV_LOSS else nullcontext():
        final = run_trial(sweep, data, lm, settings, config, run_dir, resume)
    report(final)


def trial_name(trial: Any) -> str:
    """Trials (and their run directories) are named by Ray's trial id: unique, and kept across restores."""
    return f"trial-{trial.trial_id}"


# --- the sweep -------------------------------------------------------------------------------------------------


@contextmanager
def ray_session(num_cpus: int | None, address: str | None, verbose: bool) -> Iterator[None]:
    """Ray as the caller asked: an existing cluster (``address``) or a local one of ``num_cpus`` CPUs; one that
    is already initialised (a caller's, a test's) is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address is not None and num_cpus is not None:
        raise SoftpromptError("give --num-cpus for a local Ray, or --address for an existing cluster, not both")
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose,
             configure_logging=verbose, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def run_sweep(sweep: Sweep, out: Path, num_cpus: int | None = None, address: str | None = None,
              resume: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run (or with ``resume`` continue) ``sweep`` into ``out``; write and return the summary. ``resume`` also
    retries trials that failed; a directory holding another sweep is refused either way."""
    try:
        from ray import tune
    except ImportError as err:
        raise SoftpromptError(f"sweeps run on Ray Tune, which is not installed ({err.name}); install it with pip "
                              "install 'softprompt[ray]'") from None
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise SoftpromptError(f"--out {out} is a file; a sweep writes a directory")
    record, experiment = sweep.record(), out / EXPERIMENT
    started = (out / RECORD).is_file()
    if started and not resume:
        raise SoftpromptError(f"{out} already holds a sweep; continue it with --resume, or choose another --out")
    stored = json.loads((out / RECORD).read_text(encoding="utf-8")) if started else record
    # The same sweep, wherever its file is now and however the command names it.
    if changed := sorted(k for k in record if k != "source" and stored.get(k) != record[k]):
        raise SoftpromptError(f"{out} holds a sweep of another sweep file ({', '.join(changed)} differ); resume it "
                              "with the same file, or choose another --out")
    if num_cpus is not None and sweep.cpus > num_cpus:
        raise SoftpromptError(f"a trial needs {sweep.cpus:g} CPUs (resources.cpu in {sweep.source}), more than "
                              f"--num-cpus {num_cpus}: no trial could start")
    data = load_data(sweep)
    with ray_session(num_cpus, address, verbose):
        fn = tune.with_resources(tune.with_parameters(trainable, sweep=sweep, data=data, out=str(out)),
                                 {"cpu": sweep.cpus, "gpu": sweep.gpus})
        if resume and tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), fn, resume_errored=True)
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / RECORD, record)
            tuner = tune.Tuner(fn, param_space={k: d.tune() for k, d in sweep.space.items()},
                               tune_config=tune_config(sweep), run_config=tune.RunConfig(
                                   name=EXPERIMENT, storage_path=str(out), verbose=1 if verbose else 0))
        grid = tuner.fit()
        # The trials as Ray saved them, as Tuner.restore will read them: an interrupted sweep's stopped trials are
        # saved unfinished (pending, running) even where the ResultGrid of the interrupted fit calls them ended.
        saved = {trial_name(t): t for t in tune.ExperimentAnalysis(str(experiment)).trials}
    summary = summarise(sweep, grid, saved)
    write_json(out / SUMMARY, summary)
    return summary


def tune_config(sweep: Sweep) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    scheduler = None
    if sweep.scheduler is not None:
        # ASHA stops every trial that reaches max_t: one epoch more than any trial trains leaves the last
        # epoch's rung to decide, and the trial that passes it its evaluation and final report.
        scheduler = ASHAScheduler(time_attr="epoch", max_t=sweep.max_epochs() + 1,
                                  grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    return tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.samples, scheduler=scheduler,
                           search_alg=BasicVariantGenerator(max_concurrent=sweep.concurrent or 0,
                                                            random_state=sweep.search_seed),
                           reuse_actors=True, trial_name_creator=trial_name,
                           trial_dirname_creator=trial_name)


def summarise(sweep: Sweep, grid: Any, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The trials, best first: finished ones by the metric, then those ASHA stopped, then unfinished (an
    interrupted sweep's) and failed ones. ``best`` is the best finished trial (whose run directory holds the
    trained prompt); ``complete`` says whether Tuner.restore would have any trial left to run (failed ones
    aside)."""
    rows = []
    for result in grid:
        metrics, name = result.metrics or {}, Path(result.path).name
        value = metrics.get(sweep.metric)
        finished = any(k.startswith(("eval_", "test_")) for k in metrics)  # only the final report has these
        if result.error is not None:
            status = "failed"
        elif finished:
            status = "finished"
        elif saved[name].status == "TERMINATED":
            status = "stopped"  # ended by ASHA between epochs
        else:
            status = "unfinished"
        row = {"trial": name, "status": status, "run": str(Path(TRIALS) / name),
               "config": {k: saved[name].config.get(k) for k in sweep.space},
               "metric": None if value is None or math.isnan(value) else value, "epoch": metrics.get("epoch")}
        if finished:
            row["metrics"] = {k: v for k, v in metrics.items()
                              if k == BEST_DEV_LOSS or k.startswith(("dev_", "eval_", "test_"))}
        if result.error is not None:
            row["error"] = one_line(getattr(result.error, "cause", None) or result.error)
        rows.append(row)
    order = {"finished": 0, "stopped": 1, "unfinished": 2, "failed": 3}
    sign = 1 if sweep.mode == "min" else -1
    rows.sort(key=lambda r: (order[r["status"]], r["metric"] is None, sign * (r["metric"] or 0), r["trial"]))
    best = rows[0]["trial"] if rows and rows[0]["status"] == "finished" and rows[0]["metric"] is not None else None
    return {"sweep": sweep.source, "metric": sweep.metric, "mode": sweep.mode, "best": best,
            "complete": all(t.status in ("TERMINATED", "ERROR") for t in saved.values()), "trials": rows}
