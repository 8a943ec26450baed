"""Tests for the command line (softprompt.cli) and the demo (softprompt.probing.demo), on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner, Result

import softprompt.probing.demo
from softprompt.cli import app
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.probing import Fact, Relation
from softprompt.probing.demo import run_demo
from softprompt.probing.probe import MULTI_TOKEN
from softprompt.prompts import read_prompt_file

TEMPLATE = "the capital of [X] is [Y] ."
# Subjects and answers are words of the tiny tokenizers (conftest.WORDS), so answers are single tokens;
# Kenya -> Nairobi is the exception, to be dropped.
CAPITALS = {
    "train": [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Kenya", "Nairobi")],
    "dev": [("Italy", "Rome"), ("Spain", "Madrid")],
    "test": [("Peru", "Lima"), ("Egypt", "Cairo"), ("Chile", "Lima")],
}

LANGUAGES = {
    "train": [("France", "French"), ("Germany", "German")],
    "dev": [("Japan", "Japanese")],
    "test": [("Italy", "Italian"), ("Spain", "Spanish")],
}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    # An unknown model name must fail at once instead of retrying the Hub for ~20 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "capital"
    directory.mkdir()
    for split, pairs in CAPITALS.items():
        write_jsonl(directory / f"{split}.jsonl", [{"sub": s, "obj": o} for s, o in pairs])
    (directory / "template.txt").write_text(TEMPLATE + "\n", encoding="utf-8")
    return directory


def invoke(*args: object) -> Result:
    result = runner.invoke(app, [str(a) for a in args])
    # The runner keeps an escaped exception in result.exception (it never prints a traceback): only the
    # SystemExit of an exit code may end a command.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit code 2 and one red line on stderr naming each fragment."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.strip().count("\n") == 0, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def train(data: Path | str, model: Path | str, out: Path, *extra: object) -> Result:
    return invoke("probe", "train", "--data", data, "--model", model, "--out", out, "--epochs", 2, "--quiet",
                  *extra)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("command", [[], ["probe"], ["probe", "train"], ["probe", "eval"], ["demo"]])
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("mode", ["soft", "deep"])
def test_train_then_eval_reproduces_metrics(
    mode: str, data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = train(data_dir, model_dirs["causal"], run, "--mode", mode)
    assert result.exit_code == 0, result.output
    assert "train 1, dev 0, test 0" in result.output  # Nairobi is not a single token
    assert "P@10" in result.output and str(run) in result.output
    for name in ("config.json", "metrics.json", "predictions.jsonl", "prompt.safetensors"):
        assert (run / name).is_file(), name
    meta, _ = read_prompt_file(run / "prompt.safetensors")
    assert meta["model"] == str(model_dirs["causal"])
    assert (meta["hidden_size"], meta["num_layers"]) == (32, 2)
    assert (meta["template"], meta["init"], meta["kind"]) == (TEMPLATE, "template", mode)
    trained = read_json(run / "metrics.json")
    assert trained["test"]["n"] == 3

    evaluated = tmp_path / "eval"
    result = invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal"], "--prompt", run,
                    "--out", evaluated)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in evaluated.iterdir()) == [".lock", "config.json", "dropped.jsonl", "metrics.json",
                                                           "predictions.jsonl"]
    nairobi = {"split": "train", "subject": "Kenya", "answer": "Nairobi", "reason": MULTI_TOKEN}
    for directory in (run, evaluated):
        assert [json.loads(line) for line in (directory / "dropped.jsonl").read_text().splitlines()] == [nairobi]
    assert read_json(evaluated / "metrics.json")["test"] == trained["test"]
    assert (evaluated / "predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()


def test_eval_without_prompt_scores_the_hard_template(
    data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "hard"
    result = invoke("probe", "eval", "--data", data_dir / "test.jsonl", "--template", TEMPLATE,
                    "--model", model_dirs["masked"], "--out", out)
    assert result.exit_code == 0, result.output
    metrics = read_json(out / "metrics.json")
    assert metrics["mode"] == "hard" and metrics["test"]["n"] == 3
    assert read_json(out / "config.json")["prompt"] is None
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3


def test_train_on_a_geo_relation(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "geo"
    result = train("geo:continent", model_dirs["causal"], out, "--max-train", 8, "--max-dev", 4,
                   "--max-test", 4, "--epochs", 1)
    assert result.exit_code == 0, result.output
    config = read_json(out / "config.json")
    assert config["template"] == "[X] is a country in [Y] ."
    assert config["examples"] == {"train": 8, "dev": 4, "test": 4}


def test_refuses_to_overwrite_a_finished_run(
    data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert train(data_dir, model_dirs["causal"], run).exit_code == 0
    before = (run / "metrics.json").read_text()
    assert_user_error(train(data_dir, model_dirs["causal"], run, "--mode", "deep"), str(run), "--force")
    assert_user_error(invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal"],
                             "--out", run), "finished run")
    assert (run / "metrics.json").read_text() == before
    # Resuming a finished run with other settings would mix two runs.
    assert_user_error(train(data_dir, model_dirs["causal"], run, "--resume", "--lr", 0.01), "train")
    assert train(data_dir, model_dirs["causal"], run, "--resume").exit_code == 0
    assert (run / "metrics.json").read_text() == before
    assert train(data_dir, model_dirs["causal"], run, "--force", "--mode", "deep").exit_code == 0
    assert read_json(run / "metrics.json")["mode"] == "deep"


def test_interrupted_run_is_resumed_not_overwritten(
    data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert train(data_dir, model_dirs["causal"], run).exit_code == 0
    finished = (run / "metrics.json").read_text()
    (run / "metrics.json").unlink()  # as if stopped after the last checkpoint
    assert_user_error(train(data_dir, model_dirs["causal"], run), "interrupted", "--resume")
    assert train(data_dir, model_dirs["causal"], run, "--resume").exit_code == 0
    assert (run / "metrics.json").read_text() == finished


def test_user_errors_in_data_and_templates(
    data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = model_dirs["causal"]
    out = tmp_path / "out"
    assert_user_error(train(data_dir, model, out, "--template", "the capital is [Y] ."), "[X]")
    assert_user_error(train(data_dir, model, out, "--template", "the capital of [X] ."), "[Y]")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(train(empty, model, out, "--template", TEMPLATE), str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"sub": "France", "obj": "Paris"}\n{"sub": "Japan", "obj": \n')
    assert_user_error(train(broken, model, out, "--template", TEMPLATE), str(broken), "line 2")
    assert_user_error(train(data_dir, model, out, "--template", "[Y] is the capital of [X] ."), "before")
    assert_user_error(train(data_dir / "test.jsonl", model, out, "--template", TEMPLATE), "train split")
    assert_user_error(train(tmp_path / "missing", model, out), "missing")
    assert_user_error(train("geo:atlantis", model, out), "atlantis", "capital")
    assert not out.exists()  # nothing is written before the inputs are validated


def test_user_errors_in_models_and_prompts(
    data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert_user_error(train(data_dir, "no-such-model-xyz", out), "no-such-model-xyz")
    run = tmp_path / "run"
    assert train(data_dir, model_dirs["causal"], run).exit_code == 0
    result = invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal64"], "--prompt", run,
                    "--out", out)
    assert_user_error(result, "hidden size")
    result = invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal"], "--prompt", run,
                    "--template", "[X] is a city in [Y] .", "--out", out)
    assert_user_error(result, "template")
    result = invoke("probe", "eval", "--data", data_dir, "--model", model_dirs["causal"],
                    "--prompt", tmp_path / "nothing.safetensors", "--out", out)
    assert_user_error(result, "nothing.safetensors")
    assert not out.exists()


@pytest.mark.parametrize("args", [["--mode", "hard"], ["--epochs", "0"], ["--resume", "--force"], []])
def test_invalid_options_exit_2(
    args: list[str], data_dir: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    extra = ["--out", tmp_path / "out"] if args else []  # [] leaves out the required --out
    result = invoke("probe", "train", "--data", data_dir, "--model", model_dirs["causal"], *extra, *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()


def tiny_relation(name: str, pairs: dict[str, list[tuple[str, str]]], template: str) -> Relation:
    return Relation(name, template, {split: [Fact(s, o) for s, o in facts] for split, facts in pairs.items()})


def test_demo_runs_resumes_and_summarises(causal_lm: LanguageModel, tmp_path: Path) -> None:
    relations = [
        tiny_relation("capital", CAPITALS, TEMPLATE),
        tiny_relation("language", LANGUAGES, "[X] speaks [Y] ."),
    ]
    config = TrainConfig(max_epochs=2)
    results = run_demo(causal_lm, tmp_path, relations, config=config, limits={})
    assert set(results) == {"capital", "language"}
    assert set(results["capital"]) == {"manual", "soft", "deep"}
    summary = (tmp_path / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| relation"))
    for column in ("manual P@1", "soft P@10", "deep MRR"):
        assert column in header
    assert "| capital | 3 |" in summary and "| language | 2 |" in summary and "**macro-average**" in summary
    for run in ("capital/manual", "language/deep"):
        assert (tmp_path / run / "metrics.json").is_file()

    # A rerun reuses finished runs; one with other settings is refused unless forced.
    stamp = (tmp_path / "capital/soft/metrics.json").stat().st_mtime_ns
    assert run_demo(causal_lm, tmp_path, relations, config=config, limits={}) == results
    assert (tmp_path / "capital/soft/metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(SoftpromptError, match="other settings"):
        run_demo(causal_lm, tmp_path, relations, config=TrainConfig(max_epochs=1), limits={})
    run_demo(causal_lm, tmp_path, relations, config=TrainConfig(max_epochs=1), limits={}, force=True)
    assert read_json(tmp_path / "capital/soft/config.json")["train"]["max_epochs"] == 1


def test_demo_command(model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relations = [tiny_relation("capital", CAPITALS, TEMPLATE),
                 tiny_relation("language", LANGUAGES, "[X] speaks [Y] .")]
    monkeypatch.setattr(softprompt.probing.demo, "geo_relations", lambda: relations)
    result = invoke("demo", "--model", model_dirs["causal"], "--quick", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "macro-average" in result.output and "language" in result.output
    assert "| relation | n | manual P@1 |" in (tmp_path / "summary.md").read_text()
    assert_user_error(invoke("demo", "--model", model_dirs["causal"], "--out", tmp_path), "other settings")


def test_demo_table_fits_80_columns() -> None:
    """The worst case (every metric 100.0, the longest names) stays one line per row in an 80-column terminal."""
    from rich.console import Console

    from softprompt.probing.demo import summary_table

    perfect = {"p@1": 1.0, "p@10": 1.0, "mrr": 1.0, "n": 1000}
    results = {r: {c: perfect for c in ("manual", "soft", "deep")} for r in ("capital", "city_country")}
    console = Console(width=80, record=True)
    console.print(summary_table(results, title="smollm2-135m: test metrics (×100)"))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert sum(line.startswith(("capital", "city_country", "macro-average")) for line in lines) == 3
    assert len(lines) == 8  # title, two header lines, rule, two relations, a blank section line, the average


def test_demo_in_candidate_mode_keeps_multi_token_answers(causal_lm: LanguageModel, tmp_path: Path) -> None:
    """Candidate mode ranks every answer, Nairobi (several tokens) too; switching modes is a change of
    settings, never a reuse of the other mode's runs."""
    from softprompt.probing.candidates import CandidateOptions

    relations = [tiny_relation("capital", CAPITALS, TEMPLATE)]
    config = TrainConfig(max_epochs=1)
    results = run_demo(causal_lm, tmp_path, relations, config=config, limits={}, candidates=CandidateOptions())
    assert results["capital"]["manual"]["n"] == 3 and "candidate mode" in (tmp_path / "summary.md").read_text()
    metrics = read_json(tmp_path / "capital/soft/metrics.json")
    assert metrics["test"]["p@10"] == 1.0  # every answer is among the 10 best of the relation's 6 candidates
    assert read_json(tmp_path / "capital/soft/config.json")["train"]["max_epochs"] == 1
    with pytest.raises(SoftpromptError, match="other settings"):
        run_demo(causal_lm, tmp_path, relations, config=config, limits={})
