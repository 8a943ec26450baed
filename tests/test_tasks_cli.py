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

