"""Experiment tracking: a run's settings, its per-epoch (or per-evaluation) metrics, its final metrics and its
files, in TensorBoard event files or an MLflow store on local disk; nothing needs a server.

A tracker knows nothing of prompts or optimizers: the command line opens one per run directory and feeds it what
the run reports (``GradientDescent``'s epochs through ``optimizers.gradient.observe_epochs``, a search's
evaluations from its history). TensorBoard and MLflow are optional (``pip install 'softprompt[track]'``) and
imported only when a run asks for one, so a run without a tracker never loads them.

Layouts, under the tracking directory: ``tensorboard/NAME/`` (event files, and copies of the run's files, since
TensorBoard has no artefacts) and ``mlflow.db`` + ``mlflow-artifacts/`` (MLflow's SQLite store, the local store
MLflow now recommends over its plain-file one: ``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, get_args

from softprompt.errors import SoftpromptError

TrackerKind = Literal["tensorboard", "mlflow"]
TRACKERS: tuple[str, ...] = get_args(TrackerKind)
INSTALL = "pip install 'softprompt[track]'"
EXPERIMENT = "softprompt"
RUN_TAG = "softprompt.run"  # an MLflow run's run directory (absolute): what --resume finds it by
PARAM_CHARS = 500  # MLflow refuses longer parameter values (older versions' limit)


class Tracker(ABC):
    """One tracked run; ``resumed``: it continues a run tracked before (whose settings are already logged)."""

    resumed: bool

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    @abstractmethod
    def log_file(self, path: Path) -> None: ...

    @abstractmethod
    def close(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None: ...


class TensorBoardTracker(Tracker):
    """Event files in ``DIR/tensorboard/NAME``: metrics as scalars, the settings as a text summary, files copied in.
    A new (not resumed) run replaces the directory of an earlier one of the same name, whose curves would otherwise
    overlap its own."""

    def __init__(self, directory: Path, name: str, run: Path, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = directory / "tensorboard" / name
        self.resumed = resume and self.logdir.is_dir()
        if not resume:
            shutil.rmtree(self.logdir, ignore_errors=True)
        self.writer = SummaryWriter(str(self.logdir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(dict(params), indent=1, default=str) + "\n```")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_file(self, path: Path) -> None:
        shutil.copy2(path, self.logdir / path.name)

    def close(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """A run in the MLflow store ``sqlite:///DIR/mlflow.db`` (experiment "softprompt"), named NAME and tagged with
    the run directory, so that ``--resume`` continues the same MLflow run; its artefacts go to DIR/mlflow-artifacts."""

    def __init__(self, directory: Path, name: str, run: Path, resume: bool) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        directory.mkdir(parents=True, exist_ok=True)
        for name_ in ("mlflow", "alembic"):  # the store's schema creation logs every migration
            logging.getLogger(name_).setLevel(logging.WARNING)
        with warnings.catch_warnings():  # SQLAlchemy's deprecation notices about MLflow's own queries
            warnings.simplefilter("ignore")
            self.client = MlflowClient(tracking_uri=f"sqlite:///{directory.resolve() / 'mlflow.db'}")
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (experiment.experiment_id if experiment is not None else self.client.create_experiment(
                EXPERIMENT, artifact_location=(directory.resolve() / "mlflow-artifacts").as_uri()))
            tag = str(run.resolve())
            earlier = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{escape(tag)}'",
                                              order_by=["attributes.start_time DESC"], max_results=1) if resume else []
        self.resumed = bool(earlier)
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags={RUN_TAG: tag}).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[self._param(key, str(value)[:PARAM_CHARS])
                                                   for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(key, value, now, step)
                                                    for key, value in metrics.items()])

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def escape(text: str) -> str:
    """``text`` inside a single-quoted MLflow filter string."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def require(kind: TrackerKind) -> None:
    """Refuse, in one line, a tracker whose library is not installed: before a run's work, not at its first epoch."""
    if kind not in TRACKERS:
        raise SoftpromptError(f"unknown tracker {kind!r}; choose one of: {', '.join(TRACKERS)}")
    if find_spec(kind) is None:  # the packages are named as the trackers
        raise SoftpromptError(f"--tracker {kind} needs the {kind} package: {INSTALL}")


def open_tracker(kind: TrackerKind, directory: Path, name: str, run: Path, resume: bool) -> Tracker:
    """A tracker of ``kind`` for the run directory ``run``, named ``name``, writing under ``directory``; with
    ``resume``, the tracked run an interrupted one left is continued."""
    require(kind)
    return (TensorBoardTracker if kind == "tensorboard" else MLflowTracker)(directory, name, run, resume)


def metric_name(key: str) -> str:
    """A name both libraries take (MLflow allows letters, digits, ``_ - . /`` and spaces): ``test/p@1`` becomes
    ``test/p_at_1``."""
    return re.sub(r"[^\w.\- /]", "_", key.replace("@", "_at_"))


def numbers(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a JSON document's objects (not of its lists), named by their path: what a run's
    metrics.json says in scalars (``test/p_at_1``, ``best_dev_loss``, ``seconds/fit``)."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{metric_name(str(key))}"
        if isinstance(value, Mapping):
            out |= numbers(value, name + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of ``a.b`` names (MLflow's parameters are flat)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out |= flat_params(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


class EpochLog:
    """Logs each epoch record (``observe_epochs``: the history line plus the best so far) at step = its epoch.
    A run that fits twice (a mixture's warm-up, then the pruned mixture from epoch 1 again) goes on counting
    from where the first fit stopped; ``offset`` starts it there for a run resumed in its second fit."""

    def __init__(self, tracker: Callable[[], Tracker], offset: int = 0) -> None:
        self.tracker, self.offset, self.last = tracker, offset, 0

    def __call__(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        if epoch <= self.last:
            self.offset += self.last
        self.last = epoch
        metrics = {metric_name(k): float(v) for k, v in record.items() if k != "epoch"}
        self.tracker().log_metrics(metrics, self.offset + epoch)


def history_steps(history: list[Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, float]]]:
    """A finished run's history as (step, metrics): a search's evaluations (by step) or a training's epochs."""
    for line in history:
        step = int(line.get("step", line.get("epoch", 0)))
        yield step, {metric_name(k): float(v) for k, v in line.items()
                     if k not in ("step", "epoch") and isinstance(v, int | float) and not isinstance(v, bool)}
