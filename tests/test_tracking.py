"""Experiment tracking (--tracker): TensorBoard event files and an MLflow run (its local SQLite store) hold a run's
settings, per-epoch metrics, final metrics and prompt file, read back with TensorBoard's EventAccumulator and
MLflow's client; an interrupted run resumed with --resume goes on in the same MLflow run; a search's evaluations are
logged by step; a missing library is refused in one line before any work. Each library's tests skip without it
(``pip install 'softprompt[track]'``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import softprompt.probing.objective as objective_module
from softprompt.cli import app
from softprompt.tracking import EpochLog, Tracker, metric_name, numbers

TEMPLATE = "the capital of [X] is [Y] ."
FACTS = {"train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome")],
         "dev": [("Spain", "Madrid"), ("Egypt", "Cairo")], "test": [("Peru", "Lima"), ("Chile", "Lima")]}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "capital"
    folder.mkdir()
    for split, pairs in FACTS.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in pairs))
    return folder


def train(data: Path, model: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["probe", "train", "--data", str(data), "--template", TEMPLATE, "--model",
                                    str(model), "--out", str(out), "--epochs", "3", "--patience", "3",
                                    "--batch-size", "2", "--lr", "0.05", "--quiet", *extra])


def test_tensorboard_event_files_hold_the_run(data: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    result = train(data, model_dirs["causal"], out, "--tracker", "tensorboard")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    logdir = out / "tracking" / "tensorboard" / "run"
    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    for key in ("train_loss", "dev_loss"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (h["epoch"], pytest.approx(h[key])) for h in metrics["history"][1:]]
    assert [e.value for e in events.Scalars("test/p_at_1")] == [pytest.approx(metrics["test"]["p@1"])]
    assert [e.step for e in events.Scalars("best_dev_loss")][-1] == 3
    assert "config/text_summary" in events.Tags()["tensors"]
    assert (logdir / "prompt.safetensors").read_bytes() == (out / "prompt.safetensors").read_bytes()
    assert json.loads((logdir / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_mlflow_run_holds_the_run_and_a_resume_continues_it(data: Path, model_dirs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    tracking = pytest.importorskip("mlflow.tracking")
    out, store = tmp_path / "run", tmp_path / "store"
    real, calls = objective_module.backward_answer_loss, []

    def interrupted(*args: object) -> float:
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2 (two steps an epoch)
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(objective_module, "backward_answer_loss", interrupted)
    first = train(data, model_dirs["causal"], out, "--tracker", "mlflow", "--tracking-dir", str(store))
    assert first.exit_code == 130, first.output
    monkeypatch.undo()
    client = tracking.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("softprompt")
    [killed] = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "KILLED" and killed.info.run_name == "run"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "dev_loss")] == [1]

    second = train(data, model_dirs["causal"], out, "--tracker", "mlflow", "--tracking-dir", str(store), "--resume")
    assert second.exit_code == 0, second.output
    metrics = json.loads((out / "metrics.json").read_text())
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "dev_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(h["epoch"], pytest.approx(h["dev_loss"]))
                                                    for h in metrics["history"][1:]]
    assert run.data.metrics["test/p_at_1"] == pytest.approx(metrics["test"]["p@1"])
    config = json.loads((out / "config.json").read_text())
    assert run.data.params["model"] == config["model"] and run.data.params["train.lr"] == "0.05"
    assert run.data.params["processes"] == "1" and run.data.params["run_id"] == config["run_id"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"prompt.safetensors", "config.json",
                                                                        "metrics.json"}
    copy = Path(client.download_artifacts(run.info.run_id, "prompt.safetensors", str(tmp_path)))
    assert copy.read_bytes() == (out / "prompt.safetensors").read_bytes()


def test_a_search_logs_its_evaluations_by_step(data: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "pez"
    result = CliRunner().invoke(app, ["search", "pez", "--data", str(data), "--template", "[T] [X] is [Y] .",
                                      "--model", str(model_dirs["causal"]), "--out", str(out), "--steps", "4",
                                      "--eval-every", "2", "--batch-size", "2", "--quiet", "--tracker", "tensorboard"])
    assert result.exit_code == 0, result.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    events = event_accumulator.EventAccumulator(str(out / "tracking" / "tensorboard" / "pez"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("dev_accuracy")] == [
        (h["step"], pytest.approx(h["dev_accuracy"])) for h in history]
    assert [h["step"] for h in history] == [0, 2, 4]


def test_a_missing_library_is_one_line_before_any_work(data: Path, model_dirs: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what find_spec reports for a package that is not installed
    result = train(data, model_dirs["causal"], tmp_path / "run", "--tracker", "mlflow")
    assert result.exit_code == 2
    assert "--tracker mlflow needs the mlflow package: pip install 'softprompt[track]'" in result.output
    assert not (tmp_path / "run").exists()


class Recorder(Tracker):
    resumed = False

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_params(self, params: object) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def log_file(self, path: Path) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


def test_a_second_fit_goes_on_counting_epochs() -> None:
    """A mixture's pruned fit starts again at epoch 1 after its warm-up: its epochs follow the warm-up's, also in a
    run resumed during it (``offset``)."""
    recorder = Recorder()
    log = EpochLog(lambda: recorder)
    for epoch in (1, 2, 1, 2, 3):
        log({"epoch": epoch, "dev_loss": 1.0 / epoch, "best_epoch": 1})
    assert [step for step, _ in recorder.logged] == [1, 2, 3, 4, 5]
    assert recorder.logged[0][1] == {"dev_loss": 1.0, "best_epoch": 1.0}
    resumed, log = Recorder(), None
    log = EpochLog(lambda: resumed, offset=2)
    for epoch in (2, 3):
        log({"epoch": epoch, "dev_loss": 0.5})
    assert [step for step, _ in resumed.logged] == [4, 5]


def test_metrics_json_as_scalars() -> None:
    doc = {"test": {"p@1": 0.5, "n": 3, "per": [1, 2]}, "best_epoch": 2, "warnings": ["x"], "flag": True,
           "seconds": {"fit": 1.5}, "nan": float("nan")}
    assert numbers(doc) == {"test/p_at_1": 0.5, "test/n": 3.0, "best_epoch": 2.0, "seconds/fit": 1.5}
    assert metric_name("a b/c-d.e@f(g)") == "a b/c-d.e_at_f_g_"
