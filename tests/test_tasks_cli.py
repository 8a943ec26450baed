"""The ``softprompt task ...`` commands on a user-written task and a tiny local model."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from test_cli import assert_user_error, invoke

from softprompt.prompts import read_prompt_file

COUNTRIES = [("France", "a"), ("Germany", "b"), ("Japan", "a"), ("Italy", "b"), ("Spain", "a"), ("Peru", "b")]
TASK = """name: capital
description: the capital of a country
data: {train: train.jsonl, validation: dev.jsonl}
template: "the capital of {{c}} is"
target: "{{label}}"
labels: {a: Paris, b: Berlin}
metrics: [accuracy, macro_f1, roc_auc]
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "task"
    d.mkdir()
    (d / "capital.yaml").write_text(TASK)
    for split, n in (("train", 30), ("dev", 12)):
        rows = [{"c": c, "label": y} for c, y in (COUNTRIES * n)[:n]]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def train(task_dir: Path, model: Path, out: Path, *extra: object) -> object:
    return invoke("task", "train", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model, "--out", out,
                  "--length", 3, "--init", "vocab", "--epochs", 2, "--quiet", *extra)


def test_train_eval_predict_export(task_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = model_dirs["causal"]
    result = train(task_dir, model, tmp_path / "run", "--seed", 0, "--seed", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["metrics"]) == {"accuracy", "macro_f1", "roc_auc"}
    runs = [json.loads((tmp_path / "run" / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    mean = sum(r["metrics"]["accuracy"] for r in runs) / 2
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(mean)
    assert read_prompt_file(tmp_path / "run" / "seed-0" / "prompt.safetensors")[0]["kind"] == "task"

    prompt = tmp_path / "run" / "seed-0" / "prompt.safetensors"
    result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model,
                    "--prompt", prompt, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert evaluated["accuracy"] == pytest.approx(runs[0]["metrics"]["accuracy"])

    inputs = tmp_path / "new.jsonl"
    inputs.write_text('{"c": "France"}\n{"c": "Peru", "prompt": 1}\n')
    result = invoke("task", "predict", task_dir / "capital.yaml", "--model", model, "--input", inputs,
                    "--output", tmp_path / "pred.jsonl", "--prompt", prompt,
                    "--prompt", tmp_path / "run" / "seed-1" / "prompt.safetensors")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [0, 1] and all(r["prediction"] in ("a", "b") for r in rows)

    result = invoke("task", "export-peft", prompt, "--model", model, "--out", tmp_path / "adapter")
    assert result.exit_code == 0, result.output
    result = invoke("task", "import-peft", tmp_path / "adapter", "--model", model, "--out", tmp_path / "back.st")
    assert result.exit_code == 0, result.output
    assert read_prompt_file(tmp_path / "back.st")[1]["weight"].equal(read_prompt_file(prompt)[1]["weight"])


def test_zero_shot_eval_needs_no_training(task_dir: Path, model_dirs: dict[str, Path]) -> None:
    result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model_dirs["causal"],
                    "--layout", "hybrid-hard", "--calibrate")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output


def test_user_errors(task_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TASK.replace("labels:", "lables:"))
    result = invoke("task", "train", bad, "--model", model_dirs["causal"], "--out", tmp_path / "out")
    assert_user_error(result, str(bad), "unknown field(s) lables")
    assert not (tmp_path / "out").exists()

    result = train(task_dir, model_dirs["causal"], tmp_path / "hard", "--layout", "manual")
    assert_user_error(result, "has no [P] positions to train")

    (task_dir / "dev.jsonl").write_text('{"c": "France", "label": "a"}\n{"c": "Peru", "label": "c"}\n')
    result = train(task_dir, model_dirs["causal"], tmp_path / "out")
    assert_user_error(result, "dev.jsonl:2", "target 'c' is not one of")
    assert not (tmp_path / "out").exists()

    result = invoke("task", "eval", "nosuchtask", "--model", model_dirs["causal"])
    assert_user_error(result, "unknown task 'nosuchtask'", "sst2")



# --- samples, undefined metrics, recorded settings and warnings ------------------------------------------------


def write_labels(path: Path, labels: str) -> Path:
    """A data file with one row per character of ``labels`` ("aaabbb": sorted by label, as staged files often are)."""
    rows = [{"c": COUNTRIES[i % len(COUNTRIES)][0], "label": y} for i, y in enumerate(labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labels_of(path: Path) -> list[str]:
    return [json.loads(line)["label"] for line in path.read_text().splitlines()]


def test_eval_limit_takes_a_seeded_stratified_sample_and_the_run_records_it(task_dir: Path,
                                                                            model_dirs: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    dev = write_labels(task_dir / "dev.jsonl", "a" * 8 + "b" * 8)  # the first 4 rows are all class a

    def evaluate(out: Path, *extra: object) -> dict:
        result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
                        model_dirs["causal"], "--eval-limit", 4, "--calibrate", "--out", out, *extra)
        assert result.exit_code == 0, result.output
        assert "4 of 16 examples" in result.output
        return json.loads((out / "metrics.json").read_text())

    doc = evaluate(tmp_path / "e0")
    sample = doc["sample"]
    assert sorted(labels_of(dev)[i] for i in sample["indices"]) == ["a", "a", "b", "b"]
    assert doc["metrics"]["roc_auc"] is not None and doc["warnings"] == []
    assert (sample["seed"], sample["size"], sample["of"]) == (0, 4, 16)
    assert evaluate(tmp_path / "again")["sample"] == sample
    assert evaluate(tmp_path / "e1", "--eval-seed", 1)["sample"]["indices"] != sample["indices"]
    # Every setting that changes a number is in both run files; no prompt file is null, not "None".
    config = json.loads((tmp_path / "e0" / "config.json").read_text())
    for record in (doc, config):
        assert record["prompt"] is None and record["layout"] == "{input}" and record["kind"] == "hard"
        assert (record["calibrate"], record["normalise"], record["eval_limit"]) == (True, False, 4)
        assert record["data"] == {"validation": str(dev)} and record["sample"] == sample
    rows = [json.loads(line) for line in (tmp_path / "e0" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == sample["indices"]


def test_a_metric_undefined_on_the_evaluation_data_is_null_not_a_crash(task_dir: Path, model_dirs: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    write_labels(task_dir / "dev.jsonl", "a" * 12)  # ROC-AUC needs both classes
    result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
                    model_dirs["causal"], "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "warning: roc_auc is undefined" in result.output and "–" in result.output
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["metrics"]["roc_auc"] is None and doc["metrics"]["accuracy"] is not None
    assert doc["warnings"] == ["roc_auc is undefined (null in metrics.json): ROC-AUC needs examples of both classes, "
                               "and the 12 evaluation examples are of class a only"]

    result = train(task_dir, model_dirs["causal"], tmp_path / "train", "--seed", 0, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "warning: roc_auc is undefined" in result.output
    for seed in (0, 1):
        doc = json.loads((tmp_path / "train" / f"seed-{seed}" / "metrics.json").read_text())
        assert doc["metrics"]["roc_auc"] is None and doc["warnings"][0].startswith("roc_auc is undefined")
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())["metrics"]
    assert summary["roc_auc"] == {"mean": None, "std": None, "seeds": 0} and summary["accuracy"]["seeds"] == 2


def test_dev_size_sets_the_held_out_examples_and_is_recorded(task_dir: Path, model_dirs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    docs = {}
    for name, extra in (("default", ()), ("three", ("--dev-size", 3))):
        result = train(task_dir, model_dirs["causal"], tmp_path / name, "--epochs", 1, *extra)
        assert result.exit_code == 0, result.output
        docs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert docs["default"]["dev_examples"] == 6  # 200 by default, but at most a fifth of the 30 training rows
    assert docs["three"]["dev_examples"] == docs["three"]["samples"]["dev"]["size"] == 3
    assert docs["three"]["train_examples"] == 27 and docs["three"]["settings"]["dev_size"] == 3
    config = json.loads((tmp_path / "three" / "config.json").read_text())
    assert config["settings"]["dev_size"] == 3 and config["samples"]["dev"] == docs["three"]["samples"]["dev"]
    assert config["data"] == {"train": str(task_dir / "train.jsonl"), "validation": str(task_dir / "dev.jsonl")}
    shown = invoke("task", "train", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model_dirs["causal"],
                   "--out", tmp_path / "shown", "--length", 3, "--epochs", 1, "--dev-size", 4)
    assert "training on 26 examples (a 13, b 13), 4 held out for early stopping (--dev-size 4" in shown.output


def test_warnings_for_a_best_last_epoch_and_a_skewed_training_prior(task_dir: Path, model_dirs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """Every training answer is "b" and the evaluation is balanced; dev loss falls steeply in the only epoch."""
    write_labels(task_dir / "train.jsonl", "b" * 30)
    result = train(task_dir, model_dirs["causal"], tmp_path / "run", "--epochs", 1, "--lr", 0.1)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["best_epoch"] == 1 and len(doc["warnings"]) == 2
    prior, last = doc["warnings"]
    assert prior.startswith("the training labels (a 0%, b 100%) differ from the evaluation's (a 50%, b 50%) by 50 "
                            "points for a class (more than 15)") and "--balance" in prior
    assert last.startswith("the best dev loss came at the last epoch (1)")
    # Shown even with --quiet, and the prior before training, which ends with the last-epoch warning.
    assert result.output.index(f"warning: {prior}") < result.output.index(f"warning: {last}")


def test_balance_trains_on_equally_many_examples_per_class(task_dir: Path, model_dirs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    train_file = write_labels(task_dir / "train.jsonl", "a" * 24 + "b" * 6)
    labels = labels_of(train_file)
    docs = {}
    for name, extra in (("plain", ()), ("balanced", ("--balance",)), ("limited", ("--balance", "--train-limit", 8))):
        result = train(task_dir, model_dirs["causal"], tmp_path / name, "--epochs", 1, *extra)
        assert result.exit_code == 0, result.output
        docs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    plain, balanced = docs["plain"], docs["balanced"]
    assert plain["samples"]["dev"] == balanced["samples"]["dev"]  # the dev hold-out is drawn as without --balance
    dev = set(balanced["samples"]["dev"]["indices"])
    b_left = sum(labels[i] == "b" for i in range(30) if i not in dev)
    assert balanced["train_examples"] == 2 * b_left and plain["train_examples"] == 24
    assert balanced["settings"]["balance"] is True and "balance" not in plain["settings"]
    assert any(w.startswith("the training labels") for w in plain["warnings"])
    assert not any(w.startswith("the training labels") for w in balanced["warnings"])
    # A limit draws its stratified sample from the balanced subset, and lists it.
    limited = docs["limited"]["samples"]["train"]
    assert sorted(labels[i] for i in limited["indices"]) == ["a"] * 4 + ["b"] * 4 and limited["size"] == 8


def test_task_list_shows_every_builtin_with_its_cluster() -> None:
    result = invoke("task", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, cluster in (("mrpc", "paraphrase"), ("sst5", "sentiment"), ("rte", "nli")):
        assert any(line.split("│")[1:3] and line.split("│")[1].strip() == name and
                   line.split("│")[2].strip() == cluster for line in lines), (name, result.output)
