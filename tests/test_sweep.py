"""Sweeps on Ray Tune (``softprompt sweep``) and the per-epoch observer they report through."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import pytest
from safetensors import safe_open
from test_cli import assert_user_error, invoke

from softprompt.optimizers import TrainConfig
from softprompt.optimizers.gradient import observe_epochs
from softprompt.probing import Fact, Relation, run_probe
from softprompt.probing.mixture import MixtureSettings
from softprompt.prompts import read_prompt_file
from softprompt.runs import RunDir

FACTS = {"train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome")],
         "dev": [("Spain", "Madrid"), ("Egypt", "Cairo")], "test": [("Peru", "Lima"), ("Kenya", "Europe")]}


def test_observers_see_every_epoch_after_its_checkpoint(causal_lm, tmp_path: Path) -> None:
    """Each finished epoch reaches the observers with the run's history entry and best-so-far, after the epoch's
    checkpoint is on disk; outside the block nothing is observed."""
    relation = Relation("capital", "the capital of [X] is [Y] .",
                        {split: [Fact(*fact) for fact in facts] for split, facts in FACTS.items()})
    out = tmp_path / "run"
    seen: list[dict] = []

    def observe(record: dict) -> None:
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            stored = json.loads(f.metadata()["softprompt.checkpoint"])["state"]
        seen.append(record | {"checkpointed": stored["epoch"]})

    config = TrainConfig(lr=0.05, batch_size=2, max_epochs=3, patience=3)
    with observe_epochs(observe), observe_epochs(lambda record: seen.append({"inner": record["epoch"]})):
        doc = run_probe(causal_lm, relation, out, config=config, progress=False)
    run_probe(causal_lm, relation, tmp_path / "unobserved", config=config, progress=False)
    inner = [s for s in seen if "inner" in s]
    outer = [s for s in seen if "inner" not in s]
    assert [s["inner"] for s in inner] == [1, 2, 3]
    history = doc["history"][1:]
    assert [{k: s[k] for k in ("epoch", "train_loss", "dev_loss")} for s in outer] == history
    assert [s["checkpointed"] for s in outer] == [1, 2, 3]
    assert outer[-1]["best_dev_loss"] == doc["best_dev_loss"] and outer[-1]["best_epoch"] == doc["best_epoch"]
    assert all(s["best_dev_loss"] == min(h["dev_loss"] for h in doc["history"][: s["epoch"] + 1]) for s in outer)


# --- softprompt sweep -------------------------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"
# Two thirds of one label: a prompt can learn the prior, so that the dev loss tells learning rates apart.
COUNTRIES = [("France", "a"), ("Germany", "a"), ("Japan", "b"), ("Italy", "a"), ("Spain", "a"), ("Peru", "b")]
TASK = """name: capital
description: the capital of a country
data: {train: train.jsonl, validation: dev.jsonl}
template: "the capital of {{c}} is"
target: "{{label}}"
labels: {a: Paris, b: Berlin}
metrics: [accuracy, macro_f1]
"""
# Four trials, one at a time (so that an interrupt finds some finished and some not), on two CPUs.
SWEEP = """task: capital.yaml
data_dir: .
model: {model}
fixed: {{length: 3, init: vocab, max_epochs: 2, patience: 2, batch_size: 8}}
search:
  lr: {{grid: [0.003, 0.03]}}
  seed: {{choice: [0, 1, 2]}}
samples: 2
concurrent: 1
metric: best_dev_loss
"""


@pytest.fixture
def sweep_dir(tmp_path: Path, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A task, its data and a four-trial sweep file in one directory."""
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "capital.yaml").write_text(TASK)
    for split, n in (("train", 30), ("dev", 12)):
        rows = [{"c": c, "label": y} for c, y in (COUNTRIES * n)[:n]]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(model=model_dirs["causal"]))
    return tmp_path


@pytest.fixture(scope="module")
def ray() -> Iterator[None]:
    """A local Ray of two CPUs for the module's in-process sweeps (which use a Ray already initialised as it
    is), shut down afterwards; started once, since each start costs seconds."""
    ray = pytest.importorskip("ray", reason="softprompt sweep needs Ray Tune (pip install 'softprompt[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# On the interrupted command's path (so in its Ray workers too): each epoch ends half a second later, so that the
# interrupt lands in the middle of a trial.
SLOW_EPOCHS = """import time
import softprompt.optimizers.gradient as g
real = g.save_checkpoint
def slow(*args, **kwargs):
    real(*args, **kwargs)
    time.sleep(0.5)
g.save_checkpoint = slow
"""


def start_sweep(root: Path, *args: str) -> subprocess.Popen:
    """``softprompt sweep`` in a new process whose epochs are slowed down."""
    hooks = root / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_EPOCHS)
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{SRC}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from softprompt.launch import main; main()", "sweep", str(root / "sweep.yaml"),
               "--out", str(root / "out"), "--num-cpus", "2", "--quiet", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reports(trial: Path) -> list[dict]:
    """The reports Ray recorded for a trial (its per-epoch ones, then the final one, with evaluation metrics)."""
    results = trial / "result.json"
    return [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []


@pytest.mark.usefixtures("ray")
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_dir: Path) -> None:
    from ray.tune import ExperimentAnalysis

    out = sweep_dir / "out"
    process = start_sweep(sweep_dir)
    deadline = time.monotonic() + 150

    def midway() -> bool:  # a trial finished, and another one is training
        runs = list((out / "trials").glob("trial-*"))
        return (any((r / "metrics.json").is_file() for r in runs)
                and any((r / "checkpoint.safetensors").is_file() and not (r / "metrics.json").is_file() for r in runs))

    while not midway():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no trial got that far in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # Ctrl-C: Ray Tune stops the trials and saves the experiment's state
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in err, err
    # What Tuner.restore will read: the trials Ray saw finish, and the others.
    done = {f"trial-{t.trial_id}" for t in ExperimentAnalysis(str(out / "ray")).trials if t.status == "TERMINATED"}
    cut = [r.name for r in (out / "trials").glob("trial-*") if r.name not in done]
    assert done and cut and len(done) < 4
    before = {name: ((out / "trials" / name / "metrics.json").stat().st_mtime_ns,
                     (out / "ray" / name / "result.json").read_text()) for name in done}
    epochs_before = {name: [r["epoch"] for r in reports(out / "ray" / name)] for name in cut}
    run_ids = {name: json.loads((out / "trials" / name / "config.json").read_text())["run_id"] for name in cut
               if (out / "trials" / name / "checkpoint.safetensors").is_file()}
    assert run_ids  # at least one trial was cut off after an epoch

    result = invoke("sweep", sweep_dir / "sweep.yaml", "--out", out, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    # Not run again: neither their run directory nor Ray's record of them changed.
    assert {name: ((out / "trials" / name / "metrics.json").stat().st_mtime_ns,
                   (out / "ray" / name / "result.json").read_text()) for name in done} == before
    # A trial cut off after an epoch went on from its run's checkpoint (the same run, no epoch reported twice),
    # where a restart would have begun a new run at epoch 1.
    for name, run_id in run_ids.items():
        epochs = [r["epoch"] for r in reports(out / "ray" / name)]
        assert epochs[: len(epochs_before[name])] == epochs_before[name] and epochs[-1] == 2
        assert epochs[:-1] == sorted(set(epochs[:-1])) and "eval_accuracy" in reports(out / "ray" / name)[-1]
        assert json.loads((out / "trials" / name / "metrics.json").read_text())["run_id"] == run_id
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and len(summary["trials"]) == 4
    runs = {}
    for row in summary["trials"]:
        run = RunDir(out / row["run"])
        run.check_complete()  # finished, config.json and metrics.json of one run
        metrics, config = run.metrics(), json.loads((run.path / "config.json").read_text())
        assert row["status"] == "finished" and config["config"]["lr"] == row["config"]["lr"]
        assert config["config"]["seed"] == row["config"]["seed"] and config["config"]["max_epochs"] == 2
        assert read_prompt_file(run.path / "prompt.safetensors")[0]["kind"] == "task"
        assert row["metric"] == metrics["best_dev_loss"]
        runs[row["trial"]] = metrics["best_dev_loss"]
    assert sorted(runs) == sorted(p.name for p in (out / "trials").iterdir())
    assert summary["best"] == min(runs, key=runs.get) == summary["trials"][0]["trial"]
    assert [row["metric"] for row in summary["trials"]] == sorted(runs.values())
    assert summary["best"] in result.output

    # ... and ended as `task train` with the same settings does, bit for bit.
    name = next(iter(run_ids))
    config = json.loads((out / "trials" / name / "config.json").read_text())["config"]
    result = invoke("task", "train", sweep_dir / "capital.yaml", "--data-dir", sweep_dir, "--model",
                    json.loads((out / "sweep.json").read_text())["model"], "--out", sweep_dir / "single", "--length", 3,
                    "--init", "vocab", "--epochs", 2, "--patience", 2, "--batch-size", 8, "--lr", config["lr"],
                    "--seed", config["seed"], "--quiet")
    assert result.exit_code == 0, result.output
    trial, single = outcome(out / "trials" / name), outcome(sweep_dir / "single")
    assert trial[0].keys() == single[0].keys() and all(trial[0][k].equal(single[0][k]) for k in trial[0])
    assert trial[1:] == single[1:]


def outcome(run: Path) -> tuple[dict, list, dict]:
    """A run's prompt tensors, training history and evaluation metrics."""
    metrics = json.loads((run / "metrics.json").read_text())
    return read_prompt_file(run / "prompt.safetensors")[1], metrics["history"], metrics["metrics"]


@pytest.mark.usefixtures("ray")
def test_asha_stops_trials_that_fall_behind_between_epochs(sweep_dir: Path) -> None:
    """One trial at a time: the first (a learning rate that learns) sets the bar at the first epoch's rung, and
    the three that barely move fall below it (below the top quarter: Ray's reduction factor 4) and stop there,
    their runs left resumable (no metrics.json)."""
    path = sweep_dir / "sweep.yaml"
    path.write_text(path.read_text().replace("max_epochs: 2, patience: 2", "max_epochs: 3, patience: 3")
                    .replace("batch_size: 8", "batch_size: 4")
                    .replace("lr: {grid: [0.003, 0.03]}", "lr: {grid: [0.03, 1.0e-7, 2.0e-7, 3.0e-7]}")
                    .replace("seed: {choice: [0, 1, 2]}", "seed: {choice: [0]}").replace("samples: 2", "")
                    + "scheduler: asha\n")
    out = sweep_dir / "out"
    result = invoke("sweep", path, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["config"]["lr"]: row for row in summary["trials"]}
    assert summary["complete"] and summary["best"] == rows[0.03]["trial"] == summary["trials"][0]["trial"]
    assert rows[0.03]["status"] == "finished" and rows[0.03]["epoch"] == 3
    RunDir(out / rows[0.03]["run"]).check_complete()
    for lr in (1e-7, 2e-7, 3e-7):
        run = out / rows[lr]["run"]
        assert rows[lr]["status"] == "stopped" and rows[lr]["epoch"] == 1
        assert (run / "checkpoint.safetensors").is_file() and not (run / "metrics.json").exists()
        assert [r["epoch"] for r in reports(out / "ray" / rows[lr]["trial"])] == [1]
        assert rows[lr]["metric"] > rows[0.03]["metric"]


@pytest.mark.parametrize(("edit", "fragments"), [
    (lambda s: s.replace("lr: {grid: [0.003, 0.03]}", "lr: {loguniform: [0, 0.1]}"),
     ["search.lr", "loguniform needs 0 < low < high"]),
    (lambda s: s.replace("length: 3", "lenght: 3"), ["fixed: unknown setting(s) lenght"]),
    (lambda s: s.replace("metric: best_dev_loss", "metric: eval_accuracy"), ["select on dev_accuracy"]),
    (lambda s: s.replace("seed: {choice: [0, 1, 2]}", "seed: {uniform: [0, 2]}"),
     ["search.seed", "field 'seed' takes int"]),
    (lambda s: s + "scheduler: asha\nmetric2: 1\n", ["unknown field(s) metric2"]),
    (lambda s: s.replace("length: 3", "length: -1"), ["fixed", "prompt length must be at least 0"]),
    (lambda s: s.replace("lr: {grid: [0.003, 0.03]}", "lr: {grid: [0.003, 0.03]\n"), ["sweep.yaml:", "not valid YAML"]),
    (lambda s: s.replace("task: capital.yaml\n", ""), ["give exactly one of 'task'"]),
    (lambda s: s + "scheduler: {name: asha, grace_period: 3}\n", ["grace_period 3 is more than the 2 epochs"]),
])
def test_a_bad_sweep_file_is_one_line(sweep_dir: Path, edit, fragments: list[str]) -> None:
    path = sweep_dir / "sweep.yaml"
    path.write_text(edit(path.read_text()))
    result = invoke("sweep", path, "--out", sweep_dir / "out")
    assert_user_error(result, str(path), *fragments)
    assert not (sweep_dir / "out").exists()


# --- benchmark grids on Ray (benchmarks/grid.py, mixtures.py) ---------------------------------------------------


@pytest.fixture
def mixtures_benchmark() -> Iterator[ModuleType]:
    """benchmarks/mixtures.py as a module, sent to Ray workers by value (they cannot import it by name)."""
    from ray import cloudpickle

    benchmarks = str(SRC.parent / "benchmarks")
    sys.path.insert(0, benchmarks)  # where the scripts find their shared module (grid.py), as when run
    spec = importlib.util.spec_from_file_location("bench_mixtures", SRC.parent / "benchmarks" / "mixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)
        yield module
        cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[spec.name]
        sys.path.remove(benchmarks)


@pytest.mark.usefixtures("ray")
def test_benchmark_units_run_as_ray_tasks(mixtures_benchmark: ModuleType, model_dirs: dict[str, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each unit is one Ray task with the resources it declares; a real (tiny) unit trains its mixture and writes
    its record as the queue always did, a failing one is reported in one line and stops nothing else."""

    def stub(label: str, record: Path, fail: bool) -> str:
        import ray

        if fail:
            raise ValueError(f"{label} broke\nbadly")
        record.write_text(json.dumps(ray.get_runtime_context().get_assigned_resources()))
        return f"{label} done"

    jobs = [(f"stub{i}", tmp_path / f"stub{i}.json", i == 1) for i in range(3)]
    assert mixtures_benchmark.run_on_ray(jobs, stub, cpus=1, gpus=0) == ["stub1 failed: ValueError: stub1 broke badly"]
    assert {json.loads((tmp_path / f"stub{i}.json").read_text())["CPU"] for i in (0, 2)} == {1.0}
    assert not (tmp_path / "stub1.json").exists()
    assert {"stub0 done", "stub2 done", "stub1 failed: ValueError: stub1 broke badly"} <= set(
        capsys.readouterr().out.splitlines())

    relation = Relation("capital", "the capital of [X] is [Y] .",
                        {split: [Fact(*fact) for fact in facts] for split, facts in FACTS.items()})
    templates = ("the capital of [X] is [Y] .", "[X] has the capital [Y] .")
    settings = MixtureSettings("two", templates)
    config = TrainConfig(lr=0.05, batch_size=2, max_epochs=1)
    run, record = tmp_path / "cache" / "unit", tmp_path / "results" / "unit.json"
    job = ("unit", str(model_dirs["causal"]), None, relation, settings, config, {}, run, record, 1)
    assert mixtures_benchmark.run_on_ray([job], mixtures_benchmark.train_unit, cpus=1, gpus=0) == []
    published = json.loads(record.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert published["metrics"]["test"] == metrics["test"] and published["ranks"] == [
        row["rank"] for row in map(json.loads, (run / "predictions.jsonl").read_text().splitlines())]
    assert "templates" not in published["metrics"] and published["train"] == asdict(config)
