"""``softprompt search ...`` on a tiny local model: a searched prompt is a hard prompt that the task and probing
commands load and score exactly as the search run did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import assert_user_error, data_dir, invoke  # noqa: F401 (data_dir is a fixture)
from test_tasks_cli import _isolated, task_dir  # noqa: F401 (fixtures)

from softprompt.prompts import read_prompt_file


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", ["pez", "autoprompt", "rlprompt"])
def test_a_task_search_finds_a_hard_prompt_that_task_eval_scores_the_same(
        method: str, task_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    result = invoke("search", method, "--task", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
                    model_dirs["causal"], "--out", run, "--layout", "{input} [P*3] so", "--steps", 4,
                    "--eval-every", 2, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert len(metrics["token_ids"]) == 3 and metrics["prompt_text"] in result.output.replace("\n", "")
    assert [h["step"] for h in metrics["history"]] == [0, 2, 4]
    meta, _ = read_prompt_file(run / "prompt.safetensors")
    assert (meta["kind"], meta["tuning"], meta["token_ids"]) == ("task", "hard", metrics["token_ids"])
    assert read_json(run / "config.json")["search"]["method"] == method
    evaluated = tmp_path / "eval"
    result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model_dirs["causal"],
                    "--prompt", run / "prompt.safetensors", "--out", evaluated)
    assert result.exit_code == 0, result.output
    assert read_json(evaluated / "metrics.json")["metrics"] == metrics["metrics"]


def test_a_relation_search_fills_the_triggers_and_probe_eval_scores_the_same(
        data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    args = ("search", "autoprompt", "--data", data_dir, "--template", "[X] [T] [T] is [Y] .", "--model",
            model_dirs["causal"], "--out", run, "--steps", 2, "--eval-every", 1, "--quiet")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    meta, _ = read_prompt_file(run / "prompt.safetensors")
    assert meta["kind"] == "hard" and len(meta["token_ids"]) == 3  # two triggers and " is"
    assert meta["token_ids"][2] == meta["prompt_token_ids"][2]  # the kept word
    evaluated = tmp_path / "eval"
    result = invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal"], "--prompt", run,
                    "--out", evaluated)
    assert result.exit_code == 0, result.output
    assert read_json(evaluated / "metrics.json")["test"] == read_json(run / "metrics.json")["test"]
    assert_user_error(invoke(*args), "already holds a finished run")


def test_a_search_needs_exactly_one_target(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    assert_user_error(invoke("search", "pez", "--model", model_dirs["causal"], "--out", tmp_path / "r"),
                      "give --task (a task's [P] positions) or --data (a relation's template), one of them")


def test_analyze_reads_a_searched_prompt_as_faithful_by_construction(
        task_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "runs" / "pez"
    result = invoke("search", "pez", "--task", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
                    model_dirs["causal"], "--out", run, "--length", 3, "--steps", 2, "--eval-every", 1, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("analyze", "run", run, "--out", tmp_path / "analysis", "--model", model_dirs["causal"],
                    "--task", task_dir / "capital.yaml", "--data-dir", task_dir, "--parts", "readings,faithfulness",
                    "--eval-limit", 6, "--quiet")
    assert result.exit_code == 0, result.output
    doc = read_json(tmp_path / "analysis" / "analysis.json")
    (faithfulness,) = doc["faithfulness"].values()
    assert faithfulness["tokens"] == read_json(run / "metrics.json")["token_ids"]
    assert faithfulness["distance"] == 0 and faithfulness["performance"] == 0
    assert faithfulness["perplexity"] == pytest.approx(read_json(run / "metrics.json")["perplexity"], rel=1e-5)
    assert doc["runs"][0]["kind"] == "hard"


def test_gps_evolves_prompts_that_task_eval_scores_the_same(task_dir: Path, model_dirs: dict[str, Path],  # noqa: F811
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("search", "gps", "--task", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
            model_dirs["causal"], "--out", run, "--iterations", 1, "--top-k", 2, "--children", 2, "--prompt",
            "Capital?\n{input}", "--prompt", "Options: {options}\n{input}", "--quiet")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    metrics = read_json(run / "metrics.json")
    lineage = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    assert [row["text"] for row in lineage[:2]] == ["Capital?\n{input}", "Options: {options}\n{input}"]
    assert {row["mutator"] for row in lineage[2:]} <= {"paraphrase", "infill"}
    assert metrics["prompt_text"] == metrics["final"][0]["text"] and len(metrics["final"]) == 2
    assert read_json(run / "config.json")["search"]["initial"] == ["Capital?\n{input}", "Options: {options}\n{input}"]
    evaluated = tmp_path / "eval"
    result = invoke("task", "eval", task_dir / "capital.yaml", "--data-dir", task_dir, "--model", model_dirs["causal"],
                    "--prompt", run / "prompt.safetensors", "--out", evaluated)
    assert result.exit_code == 0, result.output
    assert read_json(evaluated / "metrics.json")["metrics"] == metrics["metrics"]
    assert_user_error(invoke(*args), "already holds a finished run")


@pytest.mark.parametrize("extra, message", [
    (("--prompt", "no slot here"), "initial prompt 'no slot here' must contain the input slot {input} exactly once"),
    (("--mutator", "crossover"), "unknown mutator 'crossover'; choose from: paraphrase, infill, backtranslate"),
    (("--mutator", "backtranslate"), "back-translation needs --mutator backtranslate with both --translate-with"),
])
def test_gps_refuses_bad_options_in_one_line(extra: tuple[str, ...], message: str, task_dir: Path,  # noqa: F811
                                             model_dirs: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("search", "gps", "--task", task_dir / "capital.yaml", "--data-dir", task_dir, "--model",
                    model_dirs["causal"], "--out", tmp_path / "run", "--iterations", 1, "--quiet", *extra)
    assert_user_error(result, message)
    assert not (tmp_path / "run" / "metrics.json").exists()
