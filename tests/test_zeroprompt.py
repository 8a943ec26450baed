"""ZeroPrompt's multitask training (softprompt.zeroprompt) on tiny random models: mixed-task batches, the capped
mixture, the saved model, unseen-task prompts, resume, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import tiny_causal, tiny_masked
from safetensors import safe_open
from test_cli import assert_user_error, invoke

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.prompts import load_prompt
from softprompt.tasks.run import TaskSettings, predict
from softprompt.tasks.scoring import choice_loss, choice_scores, example_rows, row_scores
from softprompt.tasks.task import Task, TaskExample, task_from_dict
from softprompt.zeroprompt import (
    MultitaskSettings,
    eval_multitask,
    load_multitask,
    mixture_sample,
    new_multitask,
    task_feature,
    train_multitask,
    unseen_prompt,
)
from softprompt.zeroprompt import train as train_module
from softprompt.zeroprompt.multitask import ARTEFACT
from softprompt.zeroprompt.train import given_up, multitask_objective
from softprompt.zeroprompt.unseen import feature_texts

COUNTRIES = ["France", "Germany", "Japan", "Italy", "Spain", "Peru"]
# Two tasks that differ in choices: one-token verbalizers shared by one row per example, and three labels with a
# two-word verbalizer (one row per choice).
CAPITAL = {"name": "capital", "description": "the capital", "template": "the capital of {{c}} is",
           "labels": {"a": "Paris", "b": "Berlin"}}
LANGUAGE = {"name": "language", "description": "the language", "template": "in {{c}} one speaks",
            "labels": {"a": "French city", "b": "German", "c": "Japanese"}}
TINY = TrainConfig(lr=0.05, batch_size=4, max_epochs=3, patience=3, seed=1, eval_batch_size=8)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def task(doc: dict, **changes: object) -> Task:
    return task_from_dict(doc | changes, f"{doc['name']}.yaml")


def examples(t: Task, n: int, offset: int = 0) -> list[TaskExample]:
    labels = list(t.labels)
    return [t.render({"c": COUNTRIES[(i + offset) % 6], "label": labels[i % len(labels)]}) for i in range(n)]


def settings(**changes: object) -> MultitaskSettings:
    return MultitaskSettings(**{"length": 3, "cap": 6, "dev_size": 3, "feature_inputs": 4, "lora_rank": 2} | changes)


def perturbed(model: torch.nn.Module, seed: int = 7) -> None:
    """Move every trainable tensor away from its init, so that tests see trained-looking values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def test_the_mixture_honours_the_cap_and_replays_per_seed() -> None:
    sizes = [3, 12, 5, 0]
    items = mixture_sample(sizes, cap=5, seed=0)
    counts = [sum(t == task for t, _ in items) for task in range(4)]
    assert counts == [3, 5, 5, 0]  # min(size, cap) each
    assert sorted(e for t, e in items if t == 0) == [0, 1, 2]  # under the cap: every example
    assert len({e for t, e in items if t == 1}) == 5 and all(0 <= e < 12 for t, e in items if t == 1)
    assert mixture_sample(sizes, 5, 0) == items
    assert any(mixture_sample(sizes, 5, s) != items for s in (1, 2, 3))  # another epoch, another draw
    assert mixture_sample(sizes, 100, 0) == [(t, e) for t, n in enumerate(sizes) for e in range(n)]


@pytest.mark.parametrize(("make", "shared"), [(tiny_causal, "deep"), (tiny_masked, "deep"), (tiny_causal, "lora")])
def test_a_mixed_task_batch_equals_each_task_alone(make, shared: str) -> None:
    """One forward pass over rows of two tasks (different choice sets) gives the loss and gradients of scoring each
    task's examples alone and weighting their losses by their share of the batch; and the stacked table scores a
    task as its standalone task prompt does."""
    lm = make()
    engine = Engine(lm)
    tasks = [task(CAPITAL), task(LANGUAGE)]
    model = new_multitask(lm, tasks, settings(shared=shared), seed=0)
    perturbed(model)
    train = [examples(tasks[0], 6), examples(tasks[1], 6)]
    objective = multitask_objective(engine, model, tasks, train, train, settings(normalise=True, cap=4), TINY)
    objective.start_epoch(1)  # the epoch's mixture: 4 of each task's 6 examples
    assert [sum(t == task for t, _ in objective.sample) for task in (0, 1)] == [4, 4] and len(objective.items) == 8
    objective.sample = [(0, 0), (1, 2), (0, 3), (1, 0), (1, 4)]
    params = [model.prompts, *model.shared_parameters()]

    objective.backward(list(range(5)))
    mixed = [p.grad.clone() for p in params]
    with model.applied():
        loss = objective.batch_loss(list(range(5)))
    model.zero_grad()

    with model.applied():
        vectors, deltas = model.table()
        alone = torch.zeros(())
        for t, chosen in ((0, [0, 3]), (1, [2, 0, 4])):
            encoded = objective.train[t]
            scores = row_scores(engine, encoded, example_rows(encoded, chosen), vectors, deltas).view(len(chosen), -1)
            alone = alone + len(chosen) / 5 * choice_loss(scores, encoded.labels[chosen],
                                                          encoded.choice_lengths[chosen])
        alone.backward()
    assert torch.allclose(loss, alone, rtol=1e-6, atol=1e-7)
    for got, want in zip(mixed, [p.grad for p in params], strict=True):
        assert want.abs().sum() > 0
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)

    # Task 1's rows point at rows n..2n-1 of the table; its own prompt (E_1 + shared) scores them alike.
    with model.applied(), torch.no_grad():
        stacked = choice_scores(engine, objective.dev[1], *model.table())
        own = predict(engine, model.task_prompt(model.prompts[1]), tasks[1], train[1], TaskSettings())
    assert torch.allclose(stacked, own, atol=1e-5)


@pytest.mark.parametrize("shared", ["deep", "lora"])
def test_the_saved_model_reloads_to_identical_scores(shared: str, tmp_path: Path) -> None:
    lm = tiny_causal()
    tasks = [task(CAPITAL), task(LANGUAGE)]
    model = new_multitask(lm, tasks, settings(shared=shared), seed=0)
    perturbed(model)
    model.features.normal_(generator=torch.Generator().manual_seed(1))
    unseen = task(CAPITAL, name="unseen")
    cases = [(tasks[0], None), (tasks[1], None), (unseen, "top1"), (unseen, "weighted"), (unseen, "none")]
    data = {t.name: examples(t, 8, offset=2) for t in (*tasks, unseen)}
    before = [eval_multitask(model, t, data[t.name], init, out=tmp_path / f"a{i}") for i, (t, init) in enumerate(cases)]
    model.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.metadata().keys() == {"softprompt.multitask"}  # JSON, no pickle

    fresh = tiny_causal()  # the same weights, without the first model's adapters
    loaded = load_multitask(tmp_path / "m.safetensors", fresh)
    assert loaded.task_names == ["capital", "language"] and loaded.settings == model.settings
    for i, ((t, init), doc) in enumerate(zip(cases, before, strict=True)):
        again = eval_multitask(loaded, t, data[t.name], init, out=tmp_path / f"b{i}")
        assert {k: v for k, v in again.items() if k != "run_id"} == {k: v for k, v in doc.items() if k != "run_id"}
        assert (tmp_path / f"a{i}" / "predictions.jsonl").read_text() == \
            (tmp_path / f"b{i}" / "predictions.jsonl").read_text()
    engine, fresh_engine = Engine(lm), Engine(fresh)
    for t in (0, 1):
        encoded = model.encoder(tasks[t]).encode(data[tasks[t].name], t * model.length)
        with model.applied(), torch.no_grad():
            want = choice_scores(engine, encoded, *model.table())
        with loaded.applied(), torch.no_grad():
            got = choice_scores(fresh_engine, encoded, *loaded.table())
        assert torch.equal(got, want)
    # The frozen LM is untouched outside the model's scoring.
    encoded = model.encoder(tasks[0]).encode(data["capital"])
    plain = choice_scores(fresh_engine, encoded, model.prompts[0].detach())
    assert torch.equal(plain, choice_scores(Engine(tiny_causal()), encoded, model.prompts[0].detach()))


def test_unseen_inits_top1_weighted_random_none(causal_lm: LanguageModel) -> None:
    engine = Engine(causal_lm)
    capital, language = task(CAPITAL), task(LANGUAGE)
    one = new_multitask(causal_lm, [capital], settings(init="random"), seed=0)
    one.features[0] = task_feature(engine, [e.text for e in examples(capital, 4)])
    feature = task_feature(engine, [e.text for e in examples(language, 4)])
    top1, weighted = unseen_prompt(one, "top1", feature), unseen_prompt(one, "weighted", feature)
    assert torch.equal(weighted.vectors, top1.vectors) and torch.equal(top1.vectors, one.prompts[0])
    assert weighted.weights == {"capital": 1.0}

    two = new_multitask(causal_lm, [capital, language], settings(init="random"), seed=0)
    other = task(LANGUAGE, name="other")
    two.features[0] = task_feature(engine, [e.text for e in examples(capital, 4)])
    two.features[1] = task_feature(engine, [e.text for e in examples(language, 4)])
    # "other" has exactly the inputs of "language": top1 picks language, and weighted leans to it.
    other_feature = task_feature(engine, [e.text for e in examples(other, 4)])
    top1 = unseen_prompt(two, "top1", other_feature)
    assert torch.equal(top1.vectors, two.prompts[1]) and top1.weights == {"capital": 0.0, "language": 1.0}
    assert top1.similarities["language"] == pytest.approx(1.0, abs=1e-6)
    assert top1.similarities["capital"] < top1.similarities["language"]
    weighted = unseen_prompt(two, "weighted", other_feature)
    w = torch.tensor([weighted.weights["capital"], weighted.weights["language"]])
    assert w.sum().item() == pytest.approx(1.0) and w[1] > w[0]
    assert torch.allclose(weighted.vectors, w[0] * two.prompts[0] + w[1] * two.prompts[1], atol=1e-6)

    random = unseen_prompt(two, "random", seed=3)
    assert random.vectors.shape == (3, causal_lm.hidden_size)
    assert torch.equal(random.vectors, unseen_prompt(two, "random", seed=3).vectors)
    assert unseen_prompt(two, "none").vectors is None
    assert two.task_prompt(None).layout == "{description}\nOptions: {options}\n{input}"  # hybrid-hard
    with pytest.raises(SoftpromptError, match="needs the new task's feature"):
        unseen_prompt(two, "top1")
    assert feature_texts(examples(other, 6), 4, 0) == feature_texts(examples(other, 6), 4, 0)


@pytest.mark.parametrize("shared", ["deep", "lora"])
def test_resumed_training_equals_uninterrupted(shared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in epoch 3 (after its steps, before its checkpoint), the resumed run ends bit-identical."""
    tasks = [task(CAPITAL), task(LANGUAGE)]
    data = [examples(tasks[0], 20), examples(tasks[1], 15)]
    config = TrainConfig(lr=0.05, batch_size=4, max_epochs=4, patience=4, seed=2, eval_batch_size=8)

    def run(out: Path, resume: bool = False) -> dict:
        return train_multitask(tiny_causal(), tasks, data, settings(shared=shared), config, out, resume=resume,
                               progress=False)

    straight = run(tmp_path / "a")
    calls = []
    dev_loss = train_module.MixtureObjective.dev_loss

    def crashing(self: object) -> float:
        calls.append(1)
        if len(calls) == 4:  # the initial loss, epochs 1 and 2, then epoch 3's
            raise KeyboardInterrupt
        return dev_loss(self)

    monkeypatch.setattr(train_module.MixtureObjective, "dev_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.undo()
    assert not (tmp_path / "b" / ARTEFACT).exists() and (tmp_path / "b" / "checkpoint.safetensors").is_file()
    resumed = run(tmp_path / "b", resume=True)
    assert resumed["history"] == straight["history"] and len(straight["history"]) == 5
    assert resumed["dev_metrics"] == straight["dev_metrics"]
    # The saved model (the best state) and the checkpoint (the last state, the best state, Adam's moments) agree.
    for name in (ARTEFACT, "checkpoint.safetensors"):
        with safe_open(str(tmp_path / "a" / name), "pt") as a, safe_open(str(tmp_path / "b" / name), "pt") as b:
            assert set(a.keys()) == set(b.keys())
            assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
            keys = set(a.keys())
    assert {"prompt.prompts", "best.prompts", "prompt.features"} <= keys and any(k.startswith("optim.") for k in keys)
    assert ("prompt.delta" in keys) == (shared == "deep") and any(".B.weight" in k for k in keys) == (shared == "lora")
    with safe_open(str(tmp_path / "b" / "checkpoint.safetensors"), "pt") as b:
        start = new_multitask(tiny_causal(), tasks, settings(shared=shared), seed=2).prompts.detach()
        assert not torch.equal(b.get_tensor("prompt.prompts"), start)  # training moved the prompts


# --- the command line --------------------------------------------------------------------------------------------


def write_task(directory: Path, doc: dict, n: int, offset: int = 0) -> Path:
    labels = list(doc["labels"])
    rows = [{"c": COUNTRIES[(i + offset) % 6], "label": labels[i % len(labels)]} for i in range(n)]
    for split in ("train", "dev"):
        (directory / f"{doc['name']}-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = doc | {"data": {"train": f"{doc['name']}-train.jsonl", "validation": f"{doc['name']}-dev.jsonl"}}
    path = directory / f"{doc['name']}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def test_cli_train_then_eval_seen_and_unseen(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    capital = write_task(tmp_path, CAPITAL, 12)
    language = write_task(tmp_path, LANGUAGE, 12)
    unseen = write_task(tmp_path, CAPITAL | {"name": "unseen"}, 8, offset=3)
    run = tmp_path / "run"
    common = ("--data-dir", tmp_path, "--model", model_dirs["causal"], "--out", run, "--length", 2, "--epochs", 2,
              "--cap", 8, "--batch-size", 4, "--dev-size", 2, "--quiet")
    result = invoke("zeroprompt", "train", "--tasks", capital, language, *common)
    assert result.exit_code == 0, result.output
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["tasks"] == ["capital", "language"] and set(doc["dev_metrics"]) == {"capital", "language"}
    assert doc["settings"]["shared"] == "deep" and (run / ARTEFACT).is_file()
    assert_user_error(invoke("zeroprompt", "train", "--tasks", capital, language, *common), "already holds")

    result = invoke("zeroprompt", "eval", run, "--task", capital, "--data-dir", tmp_path, "--out", tmp_path / "seen")
    assert result.exit_code == 0, result.output
    seen = json.loads((tmp_path / "seen" / "metrics.json").read_text())
    assert (seen["seen"], seen["init"]) == (True, "own") and "accuracy" in seen["metrics"]
    # The deep task prompt written beside it scores alike on its own.
    lm = tiny_causal()
    prompt = load_prompt(tmp_path / "seen" / "prompt.safetensors", lm)
    scores = predict(Engine(lm), prompt, task(CAPITAL), examples(task(CAPITAL), 12), TaskSettings())
    rows = [json.loads(line) for line in (tmp_path / "seen" / "predictions.jsonl").read_text().splitlines()]
    assert torch.allclose(scores, torch.tensor([r["scores"] for r in rows]), atol=1e-4)

    result = invoke("zeroprompt", "eval", run, "--task", unseen, "--data-dir", tmp_path, "--init", "top1",
                    "--out", tmp_path / "unseen")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "unseen" / "metrics.json").read_text())
    assert (doc["seen"], doc["init"]) == (False, "top1") and set(doc["weights"]) == {"capital", "language"}
    assert "unseen (unseen, init top1, 8 examples)" in result.output

    # GPS on the unseen task after the model's E (top1) and shared perturbation: the prompt it finds is a deep
    # task prompt that carries both, and scores alike in task eval.
    gps = tmp_path / "gps"
    result = invoke("search", "gps", "--task", unseen, "--data-dir", tmp_path, "--model", model_dirs["causal"],
                    "--model-run", run, "--init", "top1", "--out", gps, "--iterations", 1, "--top-k", 1,
                    "--children", 1, "--prompt", "Say.\n{input}", "--quiet")
    assert result.exit_code == 0, result.output
    found = json.loads((gps / "metrics.json").read_text())
    assert found["model_run"] == str(run) and found["e"]["init"] == "top1"
    prompt = load_prompt(gps / "prompt.safetensors", lm)
    model = load_multitask(run, lm)
    top = max(found["e"]["similarities"], key=found["e"]["similarities"].get)
    assert prompt.tuning == "deep" and prompt.layout == "[P*2]" + found["prompt_text"]
    assert torch.equal(prompt.weight, model.prompts[model.task_names.index(top)])
    assert torch.equal(prompt.delta, model.delta)
    result = invoke("task", "eval", unseen, "--data-dir", tmp_path, "--model", model_dirs["causal"], "--prompt",
                    gps / "prompt.safetensors", "--out", tmp_path / "gps-eval")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "gps-eval" / "metrics.json").read_text())["metrics"] == found["metrics"]
    assert_user_error(invoke("search", "gps", "--task", unseen, "--data-dir", tmp_path, "--model",
                             model_dirs["causal"], "--init", "top1", "--out", tmp_path / "no"), "give --model-run too")

    lora = tmp_path / "lora"
    result = invoke("zeroprompt", "train", "--tasks", capital, language, *common[:5], lora, *common[6:], "--shared",
                    "lora", "--lora-rank", 2)
    assert result.exit_code == 0, result.output
    result = invoke("zeroprompt", "eval", lora / ARTEFACT, "--task", unseen, "--data-dir", tmp_path, "--init",
                    "weighted", "--out", tmp_path / "lora-eval")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "lora-eval" / "metrics.json").read_text())
    assert (doc["shared"], doc["init"]) == ("lora", "weighted") and sum(doc["weights"].values()) == pytest.approx(1)
    assert not (tmp_path / "lora-eval" / "prompt.safetensors").exists()  # it needs the adapters: no prompt alone

    result = invoke("zeroprompt", "eval", run, "--task", unseen, "--data-dir", tmp_path, "--init", "best")
    assert result.exit_code == 2 and "'best' is not one of" in result.stderr  # click's usage error
    assert_user_error(invoke("zeroprompt", "train", "--tasks", capital, *common, "--layout", "{input}"),
                      "layout '{input}' has no [P] positions")
    assert_user_error(invoke("zeroprompt", "train", "--tasks", capital, *common, "--shared-lr", 0),
                      "learning rate must be positive")
    assert_user_error(invoke("zeroprompt", "eval", tmp_path, "--task", unseen, "--data-dir", tmp_path),
                      "no multitask model here")
    assert_user_error(invoke("zeroprompt", "train", "--out", tmp_path / "none", "--model", model_dirs["causal"]),
                      "name the training tasks")


def test_lora_trains_without_task_prompts_and_deep_refuses_it(tmp_path: Path) -> None:
    """ZeroPrompt's −E ablation: a layout without [P] positions (description, options, input) trains the LoRA
    adapters alone; a deep shared prompt has nowhere to act there and is refused."""
    tasks = [task(CAPITAL), task(LANGUAGE)]
    data = [examples(tasks[0], 12), examples(tasks[1], 12)]
    lm = tiny_causal()
    doc = train_multitask(lm, tasks, data, settings(shared="lora", layout="hybrid-hard"), TINY, tmp_path / "run",
                          progress=False)
    assert len(doc["history"]) > 1
    model = load_multitask(tmp_path / "run", tiny_causal())
    assert model.length == 0 and model.table() == (None, None)
    with safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), "pt") as f:  # the last state, not the best
        moved = [f.get_tensor(k).abs().sum() > 0 for k in f.keys() if k.startswith("prompt.") and ".B." in k]  # noqa: SIM118
    assert moved and all(moved)  # LoRA's B matrices start at zero: training moved every one
    result = eval_multitask(model, tasks[0], data[0], eval_limit=8)
    assert result["init"] == "own" and result["metrics"]["n"] == 8
    with pytest.raises(SoftpromptError, match="has no \\[P\\] positions for the task prompts and the shared deep"):
        settings(shared="deep", layout="hybrid-hard")


def test_given_up_warns_on_one_answer_for_all_or_below_chance() -> None:
    language = task(LANGUAGE)  # three labels: chance is 1/3
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert given_up(language, {"accuracy": 1 / 3}, labels, [0, 0, 0, 1, 1, 1, 2, 2, 2]) is None
    assert given_up(language, {"accuracy": 1 / 3}, [1] * 9, [1] * 9) is None  # one label, one answer: learned
    assert given_up(language, {"accuracy": 2 / 9}, labels, [1, 0, 0, 1, 2, 0, 0, 2, 1]) == (
        "training task language ends at dev accuracy 0.222, below chance (1/3) on its 9 dev examples: the mixture "
        "gave it up; check it on more data with `softprompt zeroprompt eval RUN --task language` before relying on "
        "it")
    assert given_up(language, {"accuracy": 1 / 3}, labels, [1] * 9) == (
        "training task language answers 'German' for all 9 dev examples (dev accuracy 0.333): the mixture gave it "
        "up; check it on more data with `softprompt zeroprompt eval RUN --task language` before relying on it")
