"""Tests for prompt-set loading and the mixture commands (``softprompt mixture train/show``, ``compare``)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from test_cli import assert_user_error, invoke

from softprompt.errors import SoftpromptError
from softprompt.probing.prompt_sets import prompt_set, prompt_set_from_file, read_template_list
from softprompt.prompts import read_prompt_file

EURO = ["France", "Germany", "Italy", "Spain"]
YEN = ["Japan", "Peru", "Chile", "Egypt"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def relation_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "P38"
    seconds = {"train": ["Mozart", "Einstein", "Curie"], "dev": ["Bach"], "test": ["Newton", "city"]}
    for split, words in seconds.items():
        write_jsonl(directory / f"{split}.jsonl", [{"sub": f"{a} {b}", "obj": "euro" if a in EURO else "yen"}
                                                   for a in EURO + YEN for b in words])
    return directory


@pytest.fixture
def prompt_root(tmp_path: Path) -> Path:
    """A miniature of the staged data's layout, for relation P38."""
    root = tmp_path / "shared"
    write_jsonl(root / "qin_eisner_soft_prompts/prompts/trex/P38.jsonl",
                [{"template": "[X] is [Y] ."}, {"template": "[X] speaks [Y] ."}])
    write_jsonl(root / "lpaqa/prompt/mine/P38.jsonl",
                [{"template": "[Y] native [X] .", "weight": 0.1}, {"template": "[X] is [Y] .", "weight": 0.9}])
    write_jsonl(root / "pararel/patterns/P38.jsonl", [{"pattern": "[X] speaks [Y].", "lemma": "speak"}])
    return root


def test_prompt_sets_from_the_staged_layout(prompt_root: Path) -> None:
    assert prompt_set("sin", "P38", prompt_root).templates == ("[X] is [Y] .",)  # the manual one only
    mined = prompt_set("min", "P38", prompt_root)
    assert mined.templates == ("[Y] native [X] .", "[X] is [Y] .") and mined.init == "template"
    assert prompt_set("ran", "P38", prompt_root).init == "random"
    assert prompt_set("pararel", "P38", prompt_root).templates == ("[X] speaks [Y].",)
    with pytest.raises(SoftpromptError, match="no 'par' prompts for relation 'P38'"):
        prompt_set("par", "P38", prompt_root)
    with pytest.raises(SoftpromptError, match="unknown prompt source 'best'"):
        prompt_set("best", "P38", prompt_root)
    with pytest.raises(SoftpromptError, match="no 'pararel' prompts for dataset 'google_re'"):
        prompt_set("pararel", "place_of_birth", prompt_root, dataset="google_re")


def test_template_files_and_their_errors(tmp_path: Path) -> None:
    text = tmp_path / "P19.txt"
    text.write_text("[X] was born in [Y] .\n\n[X] is from [Y] .\n", encoding="utf-8")
    assert read_template_list(text) == ["[X] was born in [Y] .", "[X] is from [Y] ."]
    assert prompt_set_from_file(text, "random").init == "random"
    bad = tmp_path / "bad.txt"
    bad.write_text("[X] was born in [Y] .\n[X] was born .\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"bad.txt, line 2: the template '\[X\] was born .' lacks \[Y\]"):
        read_template_list(bad)
    no_key = write_jsonl(tmp_path / "k.jsonl", [{"template": "[X] is [Y] ."}, {"prompt": "[X] is [Y] ."}])
    with pytest.raises(SoftpromptError, match=r'k\.jsonl, line 2: no "template"'):
        read_template_list(no_key)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match="no templates in"):
        read_template_list(empty)


@pytest.mark.parametrize("command", [["mixture"], ["mixture", "train"], ["mixture", "show"], ["compare"]])
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_show_and_compare(relation_dir, prompt_root, model_dirs, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_SHARED_DATA", str(prompt_root))
    common = ["--data", relation_dir, "--model", model_dirs["causal"], "--epochs", 2, "--batch-size", 8, "--quiet"]
    init = invoke("mixture", "train", *common, "--prompts", "min", "--mode", "hard", "--tune", "none",
                  "--out", tmp_path / "init")
    assert init.exit_code == 0, init.output
    assert "1 reordered to end in [Y]" in init.output
    tuned = invoke("mixture", "train", *common, "--prompts", "min", "--method", "em", "--data-dependent",
                   "--sparse-k", 1, "--sparse-m", 2, "--out", tmp_path / "soft")
    assert tuned.exit_code == 0, tuned.output
    config = json.loads((tmp_path / "soft" / "config.json").read_text())["mixture"]
    assert (config["sparse_k"], config["sparse_m"]) == (1, 2)
    metrics = json.loads((tmp_path / "soft" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16 and metrics["num_prompts"] == 2 and metrics["method"] == "em"
    meta, _ = read_prompt_file(tmp_path / "soft")
    assert meta["kind"] == "mixture" and meta["sources"] == ["[Y] native [X] .", "[X] is [Y] ."]
    assert meta["templates"] == ["native [X] . [Y]", "[X] is [Y] ."]

    shown = invoke("mixture", "show", tmp_path / "soft", "--model", model_dirs["causal"])
    assert shown.exit_code == 0, shown.output
    assert (tmp_path / "soft" / "mixture.png").read_bytes()[:4] == b"\x89PNG"
    fragment = (tmp_path / "soft" / "mixture.html").read_text()
    assert fragment.count("<table>") == 2 and "[Y] native [X] ." in fragment and "native [X] . [Y]" in fragment
    assert "<td>[X]</td>" in fragment and "<td>[Y]</td>" in fragment

    # The report shows the mixture's weights and readings; the model comes from the prompt file by default.
    reported = invoke("report", tmp_path / "soft", "--model", model_dirs["causal"], "-o", tmp_path / "r.html")
    assert reported.exit_code == 0, reported.output
    page = (tmp_path / "r.html").read_text()
    assert "mixture weights" in page and "[Y] native [X] ." in page and page.count("<img src='data:image/png") == 1

    compared = invoke("compare", tmp_path / "init", tmp_path / "soft", "--permutations", 200,
                      "--json", tmp_path / "cmp.json")
    assert compared.exit_code == 0, compared.output
    assert json.loads((tmp_path / "cmp.json").read_text())["metrics"][0]["n_examples"] == 16

    again = invoke("mixture", "train", *common, "--prompts", "min", "--out", tmp_path / "soft")
    assert_user_error(again, "already holds a finished run")


def test_user_errors(relation_dir, prompt_root, model_dirs, tmp_path, monkeypatch) -> None:
    common = ["--data", relation_dir, "--model", model_dirs["causal"], "--out", tmp_path / "run", "--quiet"]
    monkeypatch.setenv("SOFTPROMPT_SHARED_DATA", str(tmp_path / "nowhere"))
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min"), "no 'min' prompts", "P38")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"template": "[X] is [Y] ."}\n{"template": \n', encoding="utf-8")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", bad), "bad.jsonl, line 2", "malformed")
    monkeypatch.setenv("SOFTPROMPT_SHARED_DATA", str(prompt_root))
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--mode", "hard", "--tune", "prompts"),
                      "no vectors to tune")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--answer-first", "error"),
                      "puts the answer [Y] before the subject")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--prune-after", 1), "give --top-k")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--top-k", 1, "--prune-after", 2,
                             "--epochs", 2), "--prune-after 2 leaves no epoch")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--mode", "hard", "--sparse-k", 1),
                      "--sparse-k chooses which prompts' vectors get gradients")
    assert_user_error(invoke("mixture", "train", *common, "--prompts", "min", "--method", "em", "--sparse-m", 1,
                             "--sparse-draw", "sample"), "use --method gradient")
    assert not (tmp_path / "run").exists()  # nothing written for refused input
    single = tmp_path / "single"
    assert invoke("probe", "train", "--data", relation_dir, "--template", "[X] is [Y] .", "--model",
                  model_dirs["causal"], "--out", single, "--epochs", 1, "--quiet").exit_code == 0
    assert_user_error(invoke("mixture", "show", single, "--model", model_dirs["causal"]), "not a mixture")


def test_drops_and_reorderings_are_shown_before_training(relation_dir, prompt_root, model_dirs, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_SHARED_DATA", str(prompt_root))
    with (relation_dir / "train.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"sub": "Kenya", "obj": "Nairobi"}) + "\n")  # not a single token for the tiny models
    out = tmp_path / "run"
    result = invoke("mixture", "train", "--data", relation_dir, "--model", model_dirs["causal"], "--epochs", 1,
                    "--batch-size", 8, "--prompts", "min", "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def line_of(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    training = line_of("epoch 1: train loss")
    assert line_of("dropped because their answer is not a single token: train 1, dev 0, test 0") < training
    assert line_of("reordered to end in [Y]: '[Y] native [X] .' -> 'native [X] . [Y]'") < training
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert dropped == [{"split": "train", "subject": "Kenya", "answer": "Nairobi",
                        "reason": "the answer is not a single token for this model"}]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompt_set"]["reorderings"] == [["[Y] native [X] .", "native [X] . [Y]"]]
    assert metrics["dropped_multi_token"] == {"train": 1, "dev": 0, "test": 0} and "warnings" in metrics
