"""Declarative tasks, choice scoring, task prompts, inference and PEFT interop on tiny models."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal, tiny_seq2seq

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.metrics import accuracy, macro_f1, roc_auc
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.paths import shared_data_dir
from softprompt.prompts import load_prompt
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import (
    TaskEncoder,
    TaskSettings,
    builtin_tasks,
    choice_scores,
    load_task,
    predict,
    run_task,
    tasks_by_cluster,
)
from softprompt.tasks.inference import PromptedClassifier, generate
from softprompt.tasks.run import split_data, split_indices, task_metrics, task_run_settings, undefined_metrics
from softprompt.tasks.sampling import stratified_sample
from softprompt.tasks.scoring import calibrate
from softprompt.tasks.task import task_from_dict

COUNTRIES = [("France", "a"), ("Germany", "b"), ("Japan", "a"), ("Italy", "b"), ("Spain", "a"), ("Peru", "b")]


def capital_task(labels: dict[str, str] | None = None, **extra: object) -> object:
    doc = {"name": "capital", "description": "the capital of a country", "template": "the capital of {{c}} is",
           "target": "{{label}}", "labels": labels or {"a": "Paris", "b": "Berlin"}, **extra}
    return task_from_dict(doc, "capital.yaml")


def rows(n: int = 24) -> list[dict[str, str]]:
    return [{"c": c, "label": y} for c, y in (COUNTRIES * n)[:n]]


@pytest.fixture(scope="module")
def seq2seq_lm() -> LanguageModel:
    return tiny_seq2seq()


# --- task files ---------------------------------------------------------------------------------------


def test_builtin_tasks_round_trip_through_yaml(tmp_path: Path) -> None:
    assert {"sst2", "cb", "rte", "copa", "wsc", "boolq", "agnews", "trec"} <= set(builtin_tasks())
    for name in builtin_tasks():
        task = load_task(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(task.to_yaml())
        again = load_task(path)
        for field in ("name", "description", "cluster", "data", "columns", "template", "target", "labels", "choices",
                      "metrics"):
            assert getattr(again, field) == getattr(task, field), (name, field)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ntemplate: '{{a}}'\nlabels: {a: A, b: B}\nchoices: ['{{a}}', '{{b}}']\n", "exactly one of 'labels'"),
        ("template: '{{a}}'\nlabels: {a: A, b: B}\n", "missing required field 'name'"),
        ("name: x\ntemplate: '{{a}'\nlabels: {a: A, b: B}\n", "field 'template' is not a valid template"),
        ("name: x\ntemplate: '{{a}}'\nlabels: {a: A, b: B}\nmetrics: [bleu]\n", "field 'metrics' has unknown"),
        ("name: x\ntemplate: '{{a}}'\nlabels: {a: A, b: B}\ncolour: red\n", "unknown field(s) colour"),
        ("name: x\ntemplate: '{{a}}'\nlabels: {a: A}\n", "field 'labels' must map at least two"),
        ("name: x\ntemplate: [1]\nlabels: {a: A, b: B}\n", "field 'template' must be a str"),
        ("name: x\ntemplate: '{{a}}'\nlabels: {a: A, b: A}\n", "the same verbalizer"),
        ("name: x\n  template: : :\n", "not valid YAML"),
    ],
)
def test_malformed_task_files_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SoftpromptError) as err:
        load_task(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_data_errors_name_file_and_line(tmp_path: Path) -> None:
    task = capital_task()
    data = tmp_path / "d.jsonl"
    data.write_text('{"c": "France", "label": "a"}\n{"c": "Peru", "label": "z"}\n')
    with pytest.raises(SoftpromptError, match=r"d\.jsonl:2: target 'z' is not one of \['a', 'b'\]"):
        task.load("train", path=data)
    data.write_text('{"c": "France", "label": "a"}\n{"label": "a"}\n')
    with pytest.raises(SoftpromptError, match=r"d\.jsonl:2: 'c' is undefined"):
        task.load("train", path=data)
    data.write_text('{"c": "France", "label": "a"}\nnot json\n')
    with pytest.raises(SoftpromptError, match=r"d\.jsonl, line 2: malformed JSON"):
        task.load("train", path=data)
    tsv = tmp_path / "d.tsv"
    tsv.write_text('c\tlabel\nFrance "x\ta\nPeru\n')
    with pytest.raises(SoftpromptError, match=r"d\.tsv:3: expected 2 columns"):
        task.load("train", path=tsv)


def test_loading_compiles_each_template_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from softprompt.tasks import task as task_module
    task = capital_task()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"c": "C{i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(50)))
    task_module._compiled.cache_clear()
    compiled: list[str] = []
    compile_text = task_module._ENV.from_string
    monkeypatch.setattr(task_module._ENV, "from_string", lambda text: compiled.append(text) or compile_text(text))
    examples = task.load("train", path=data)
    assert [e.label for e in examples] == [i % 2 for i in range(50)]
    assert examples[7].text == task.render({"c": "C7", "label": "b"}, "row").text
    assert sorted(compiled) == sorted({task.template, task.target})


def test_hugging_face_dataset_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls = []

    def load_dataset(name: str, config: str | None, split: str) -> list[dict[str, str]]:
        calls.append((name, config, split))
        return [{"c": "France", "label": "a"}, {"c": "Peru", "label": "b"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = capital_task(data={"train": "hf:someone/capitals#small", "validation": "hf:someone/capitals@dev"})
    assert [e.label for e in task.load("train")] == [0, 1]
    task.load("validation")
    assert calls == [("someone/capitals", "small", "train"), ("someone/capitals", None, "dev")]
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SoftpromptError, match="needs the 'datasets' package"):
        task.load("train")


def test_tsv_keeps_bare_quotes_and_multiple_choice_renders_choices(tmp_path: Path) -> None:
    tsv = tmp_path / "d.tsv"
    tsv.write_text('c\tlabel\nsay "hi\ta\n')
    assert capital_task().load("train", path=tsv)[0].text == 'the capital of say "hi is'
    copa = load_task("copa")
    example = copa.render({"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
                           "question": "cause", "label": 0})
    assert example.text == "The man fell because"
    assert example.choices == ("he slipped.", "he sang.") and example.label == 0


# --- metrics and calibration ----------------------------------------------------------------------------


def test_classification_metrics_by_hand() -> None:
    predictions, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # class 0: tp 1, predicted 2, actual 2 -> 0.5; class 1: tp 1, 1, 2 -> 2/3; class 2: tp 2, 3, 2 -> 0.8
    assert macro_f1(predictions, labels, 3) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert macro_f1([0, 0], [0, 0], 2) == pytest.approx(0.5)  # the absent class counts as 0
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4, 0.4>0.1) -> 3.5 / 4
    assert roc_auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def test_verbalizer_metrics_and_calibration_on_hand_built_scores() -> None:
    task = capital_task(metrics=["accuracy", "macro_f1", "roc_auc"])
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]]))
    metrics = task_metrics(task, scores, [0, 1, 1, 1])
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["roc_auc"] == pytest.approx(1.0)  # every positive has a higher p(b) than the negative
    # A content-free input that prefers "a" 0.65 : 0.35 shifts the boundary to p(a) = 0.65.
    calibrated = calibrate(scores, torch.log(torch.tensor([0.65, 0.35])))
    assert calibrated.argmax(-1).tolist() == [0, 1, 1, 1]
    assert torch.allclose(calibrated[0].exp() / calibrated[0].exp().sum(), torch.tensor([0.7 / 0.65, 0.3 / 0.35]) /
                          (0.7 / 0.65 + 0.3 / 0.35))


def test_verbalizer_scores_from_hand_built_logits(causal_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class scores are the verbalizer tokens' log-probabilities under the full-vocabulary softmax."""
    import softprompt.tasks.scoring as scoring

    task = capital_task()
    encoder = TaskEncoder(causal_lm, task)
    paris, berlin = encoder.verbalizer_ids
    logits = torch.full((2, causal_lm.vocab_size), -1e4)
    logits[0, paris], logits[0, berlin], logits[0, 0] = 2.0, 1.0, 2.0  # a non-verbalizer token takes mass too
    logits[1, berlin] = 0.0
    monkeypatch.setattr(scoring, "query_logits", lambda *args: logits)
    scores = choice_scores(Engine(causal_lm), encoder.encode([task.render(r) for r in rows(2)]))
    z = torch.log(torch.tensor(2 * torch.e**2 + torch.e))
    assert scores[0].tolist() == pytest.approx([2.0 - z.item(), 1.0 - z.item()], abs=1e-5)
    assert scores[1].tolist() == pytest.approx([-1e4, 0.0], abs=1e-3)
    assert task_metrics(task, scores, [0, 1])["accuracy"] == 1.0


def test_content_free_input_blanks_every_field() -> None:
    assert load_task("cb").content_free().text == "N/A\nQuestion: N/A True, False, or Neither?\nAnswer:"
    assert load_task("wsc").content_free().text.count("N/A") == 3


# --- scoring equals brute force ----------------------------------------------------------------------------


def brute_force_causal(lm: LanguageModel, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    logp = lm.model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(continuation))


def test_single_token_verbalizers_read_one_position(causal_lm: LanguageModel) -> None:
    task = capital_task()
    examples = [task.render(r) for r in rows(4)]
    encoder = TaskEncoder(causal_lm, task)
    assert encoder.verbalizer_ids is not None
    scores = choice_scores(Engine(causal_lm), encoder.encode(examples))
    for e, s in zip(examples, scores, strict=True):
        ctx = causal_lm.tokenizer(e.text, add_special_tokens=False)["input_ids"]
        logp = causal_lm.model(input_ids=torch.tensor([ctx])).logits[0, -1].log_softmax(-1)
        assert torch.allclose(s, logp[list(encoder.verbalizer_ids)], atol=1e-5)


def test_multi_token_and_multiple_choice_equal_brute_force(causal_lm: LanguageModel) -> None:
    task = capital_task({"a": "Paris city", "b": "Berlin"})
    examples = [task.render(r) for r in rows(5)]
    tok = causal_lm.tokenizer
    scores = choice_scores(Engine(causal_lm), TaskEncoder(causal_lm, task).encode(examples), batch_size=3)
    for e, s in zip(examples, scores, strict=True):
        ctx = tok(e.text, add_special_tokens=False)["input_ids"]
        expected = [brute_force_causal(causal_lm, ctx, tok(" " + c, add_special_tokens=False)["input_ids"])
                    for c in e.choices]
        assert s.tolist() == pytest.approx(expected, abs=1e-4)
    copa = task_from_dict({"name": "mc", "template": "{{p}}", "choices": ["{{x}}", "{{y}}"], "target": "{{l}}"}, "mc")
    mc = [copa.render({"p": "the capital of France", "x": "is Paris .", "y": "was born in a city", "l": 0}),
          copa.render({"p": "Mozart", "x": "speaks German", "y": "is Bach", "l": 1})]
    scores = choice_scores(Engine(causal_lm), TaskEncoder(causal_lm, copa).encode(mc))
    for e, s in zip(mc, scores, strict=True):
        ctx = tok(e.text, add_special_tokens=False)["input_ids"]
        expected = [brute_force_causal(causal_lm, ctx, tok(" " + c, add_special_tokens=False)["input_ids"])
                    for c in e.choices]
        assert s.tolist() == pytest.approx(expected, abs=1e-4)


def test_masked_lm_scores_each_mask(masked_lm: LanguageModel) -> None:
    task = capital_task({"a": "Paris", "b": "Berlin city"})
    example = task.render({"c": "France", "label": "a"})
    scores = choice_scores(Engine(masked_lm), TaskEncoder(masked_lm, task).encode([example]))[0]
    tok = masked_lm.tokenizer
    ctx = tok(example.text, add_special_tokens=False)["input_ids"]
    for choice, score in zip(example.choices, scores, strict=True):
        target = tok(" " + choice, add_special_tokens=False)["input_ids"]
        ids = [tok.cls_token_id, *ctx, *[tok.mask_token_id] * len(target), tok.sep_token_id]
        logp = masked_lm.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        expected = sum(logp[1 + len(ctx) + j, t].item() for j, t in enumerate(target))
        assert score.item() == pytest.approx(expected, abs=1e-4)


def test_encoder_decoder_scores_the_answer_with_the_decoder(seq2seq_lm: LanguageModel) -> None:
    for labels in ({"a": "Paris", "b": "Berlin"}, {"a": "Paris city", "b": "Berlin"}):
        task = capital_task(labels)
        examples = [task.render(r) for r in rows(3)]
        scores = choice_scores(Engine(seq2seq_lm), TaskEncoder(seq2seq_lm, task).encode(examples))
        tok = seq2seq_lm.tokenizer
        for e, s in zip(examples, scores, strict=True):
            ids = torch.tensor([tok(e.text)["input_ids"]])
            for choice, score in zip(e.choices, s, strict=True):
                target = torch.tensor([tok(" " + choice, add_special_tokens=False)["input_ids"]])
                loss = seq2seq_lm.model(input_ids=ids, labels=target).loss.item() * target.shape[1]
                assert score.item() == pytest.approx(-loss, abs=1e-4)


def test_length_normalisation_divides_by_token_count(causal_lm: LanguageModel) -> None:
    task = capital_task({"a": "Paris city", "b": "Berlin"})
    examples = [task.render(r) for r in rows(3)]
    engine = Engine(causal_lm)
    raw = predict(engine, None, task, examples, TaskSettings(kind="hard"))
    normalised = predict(engine, None, task, examples, TaskSettings(kind="hard", normalise=True))
    lengths = TaskEncoder(causal_lm, task).encode(examples).choice_lengths
    assert lengths[0].tolist() == [2.0, 1.0]
    assert torch.allclose(normalised, raw / lengths)


# --- prompts -------------------------------------------------------------------------------------------------


def test_layouts_place_vectors(causal_lm: LanguageModel) -> None:
    task = capital_task(template="the capital [P*2] of {{c}} is")
    example = task.render({"c": "France", "label": "a"})
    prompt = TaskPrompt(causal_lm, "hybrid", 3, template_markers=2, init="vocab")
    ids, slots = TaskEncoder(causal_lm, task, prompt).context(example)
    assert prompt.length == 5 and slots[:3] == [0, 1, 2]
    assert sorted(s for s in slots if s >= 0) == [0, 1, 2, 3, 4]
    text = causal_lm.tokenizer.decode([i for i, s in zip(ids, slots, strict=True) if s < 0])
    assert text == "the capital of a country\nOptions: Paris, Berlin\nthe capital  of France is"
    with pytest.raises(SoftpromptError, match="must contain"):
        TaskPrompt(causal_lm, "[P*3]{question}", 0)


def test_text_init_cycles_the_description(causal_lm: LanguageModel) -> None:
    prompt = TaskPrompt(causal_lm, "prefix", 7, init="text", init_text="the capital of")
    ids = causal_lm.tokenizer("the capital of", add_special_tokens=False)["input_ids"]
    expected = causal_lm.embed(torch.tensor((ids * 7)[:7]))
    assert torch.equal(prompt.weight, expected)


def test_prompt_made_of_the_manual_words_equals_the_manual_prompt(causal_lm: LanguageModel) -> None:
    task = capital_task()
    examples = [task.render(r) for r in rows(6)]
    engine = Engine(causal_lm)
    hard = predict(engine, None, task, examples, TaskSettings(kind="hard"))
    description = "the capital"
    soft = TaskPrompt(causal_lm, "[P*2] {input}", 0, init="text", init_text=description)
    manual = capital_task(template="the capital the capital of {{c}} is")
    manual_examples = [manual.render(r) for r in rows(6)]
    assert torch.allclose(predict(engine, soft, task, examples, TaskSettings()),
                          predict(engine, None, manual, manual_examples, TaskSettings(kind="hard")), atol=1e-5)
    assert not torch.allclose(hard, predict(engine, soft, task, examples, TaskSettings()))


def test_deep_prompt_with_zero_deltas_equals_soft(causal_lm: LanguageModel, masked_lm: LanguageModel,
                                                  seq2seq_lm: LanguageModel) -> None:
    task = capital_task({"a": "Paris city", "b": "Berlin"})
    examples = [task.render(r) for r in rows(4)]
    for lm in (causal_lm, masked_lm, seq2seq_lm):
        soft = TaskPrompt(lm, "prefix", 3, init="vocab", seed=1)
        deep = TaskPrompt(lm, "prefix", 3, tuning="deep", init="vocab", seed=1)
        engine = Engine(lm)
        a = predict(engine, soft, task, examples, TaskSettings())
        assert torch.allclose(a, predict(engine, deep, task, examples, TaskSettings()), atol=1e-5)
        with torch.no_grad():
            deep.delta[1].normal_()  # the last layer's output at prompt positions reaches nothing
        assert (a - predict(engine, deep, task, examples, TaskSettings())).abs().max() > 1e-4


def test_few_shot_split_is_k_per_class_and_disjoint() -> None:
    task = capital_task()
    examples = [task.render(r) for r in rows(24)]
    train, dev = split_data(task, examples, TaskSettings(shots=3), seed=0)
    assert sorted(e.label for e in train) == [0, 0, 0, 1, 1, 1] and sorted(e.label for e in dev) == [0, 0, 0, 1, 1, 1]
    assert not {id(e) for e in train} & {id(e) for e in dev}
    again, _ = split_data(task, examples, TaskSettings(shots=3), seed=0)
    assert [id(e) for e in again] == [id(e) for e in train]


def test_stratified_sample_keeps_every_class_and_is_seeded() -> None:
    labels = [0] * 60 + [1] * 40  # sorted by label, as staged files often are: the first 10 are all class 0
    sample = stratified_sample(labels, 10, seed=0)
    assert sorted(labels[i] for i in sample) == [0] * 6 + [1] * 4 and sample == sorted(sample)
    assert stratified_sample(labels, 10, seed=0) == sample
    assert stratified_sample(labels, 10, seed=1) != sample
    assert stratified_sample(labels, None, seed=0) == stratified_sample(labels, 100, seed=3) == list(range(100))
    # A class too rare for its share to round up still gets one item (ROC-AUC needs both classes).
    assert 99 in stratified_sample([0] * 99 + [1], 5, seed=0)
    # Largest remainders: the shares of 7 in 3 + 3 + 4 items are 2.1, 2.1 and 2.8, so the third class rounds up.
    three = [0] * 3 + [1] * 3 + [2] * 4
    assert sorted(three[i] for i in stratified_sample(three, 7, seed=0)) == [0, 0, 1, 1, 2, 2, 2]


def test_full_data_split_holds_out_dev_as_before_and_limits_balance_and_stratify() -> None:
    task = capital_task()
    labels = [0] * 40 + [1] * 10
    examples = [task.render({"c": "France", "label": "ab"[y]}) for y in labels]
    # Without limits the split is what runs have always used: a seeded shuffle, dev first, the rest in order.
    pool = list(range(50))
    random.Random(3).shuffle(pool)
    assert split_indices(task, labels, TaskSettings(dev_size=7), seed=3) == (pool[7:], pool[:7])
    assert split_indices(task, labels, TaskSettings(), seed=3)[1] == pool[:10]  # dev_size 200: at most a fifth
    train, dev = split_indices(task, labels, TaskSettings(dev_size=5, train_limit=9), seed=3)
    assert dev == pool[:5] and sorted(labels[i] for i in train) == [0] * 7 + [1] * 2
    assert train == [i for i in pool[5:] if i in set(train)]  # still in the shuffled order
    train, _ = split_indices(task, labels, TaskSettings(dev_size=5, balance=True), seed=3)
    counts = [sum(labels[i] == c for i in train) for c in (0, 1)]
    assert counts[0] == counts[1] == sum(labels[i] == 1 for i in pool[5:])
    assert split_data(task, examples, TaskSettings(dev_size=5, balance=True), seed=3)[0] == [examples[i]
                                                                                            for i in train]


def test_new_settings_keep_old_runs_identity(causal_lm: LanguageModel) -> None:
    """Runs stored before --balance and --eval-seed existed used their defaults and stay resumable."""
    task, config = capital_task(), TrainConfig()
    stored = task_run_settings(causal_lm, task, TaskSettings(), config)["settings"]
    assert "balance" not in stored and "eval_seed" not in stored and stored["dev_size"] == 200
    changed = task_run_settings(causal_lm, task, TaskSettings(balance=True, eval_seed=2), config)["settings"]
    assert (changed["balance"], changed["eval_seed"]) == (True, 2)
    with pytest.raises(SoftpromptError, match="dev_size must be at least 1"):
        TaskSettings(dev_size=0)


def test_a_metric_undefined_on_the_labels_is_none() -> None:
    task = capital_task(metrics=["accuracy", "macro_f1", "roc_auc"])
    scores = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    metrics = task_metrics(task, scores, [0, 0])
    assert metrics == {"n": 2, "accuracy": 0.5, "macro_f1": pytest.approx(1 / 3), "roc_auc": None}
    assert undefined_metrics(task, [0, 0]) == {
        "roc_auc": "ROC-AUC needs examples of both classes, and the 2 evaluation examples are of class a only"}
    assert task_metrics(task, scores, [1, 0])["roc_auc"] == 1.0


@pytest.mark.parametrize("kind", ["soft", "deep"])
def test_training_learns_saves_and_reloads(tmp_path: Path, kind: str) -> None:
    lm = tiny_causal()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    task = capital_task()
    # Every answer is "Berlin", which the untuned model often ranks below "Paris": a prefix can learn that.
    examples = [task.render({**r, "label": "b"}) for r in rows(48)]
    assert task_metrics(task, predict(Engine(lm), None, task, examples, TaskSettings(kind="hard")),
                        [1] * 48)["accuracy"] < 0.5
    settings = TaskSettings(layout="prefix", length=4, kind=kind, init="random", dev_size=12)
    config = TrainConfig(lr=0.1, batch_size=8, max_epochs=6, patience=5)
    doc = run_task(lm, task, settings, config, tmp_path / "run", examples, examples, progress=False)
    assert doc["best_dev_loss"] < doc["history"][0]["dev_loss"]
    assert doc["metrics"]["accuracy"] == 1
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    prompt = load_prompt(tmp_path / "run" / "prompt.safetensors", lm)
    assert isinstance(prompt, TaskPrompt) and prompt.tuning == kind
    scores = predict(Engine(lm), prompt, task, examples, settings)
    saved = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert scores.argmax(-1).tolist() == [row["prediction"] for row in saved]


# --- inference ---------------------------------------------------------------------------------------------


def test_mixed_prompt_batch_equals_each_prompt_alone(causal_lm: LanguageModel) -> None:
    task = capital_task({"a": "Paris city", "b": "Berlin"})
    examples = [task.render(r) for r in rows(6)]
    prompts = [TaskPrompt(causal_lm, "prefix", 2, init="vocab", seed=1),
               TaskPrompt(causal_lm, "hybrid", 4, tuning="deep", init="vocab", seed=2), None]
    with torch.no_grad():
        prompts[1].delta.normal_(std=0.1)
    ids = [0, 1, 2, 1, 0, 2]
    mixed = PromptedClassifier(causal_lm, task, prompts, batch_size=4).scores(examples, ids)
    for i, (e, p) in enumerate(zip(examples, ids, strict=True)):
        alone = PromptedClassifier(causal_lm, task, prompts[p]).scores([e])
        assert torch.allclose(mixed[i], alone[0], atol=1e-5)
    calibrated = PromptedClassifier(causal_lm, task, prompts, calibrated=True).scores(examples, ids)
    for i, (e, p) in enumerate(zip(examples, ids, strict=True)):
        alone = PromptedClassifier(causal_lm, task, prompts[p], calibrated=True).scores([e])
        assert torch.allclose(calibrated[i], alone[0], atol=1e-5)
    predicted = PromptedClassifier(causal_lm, task, prompts).predict([{"c": "France"}], [1])
    assert predicted[0] in ("a", "b")
    with pytest.raises(SoftpromptError, match=r"prompt index in 0\.\.2"):
        PromptedClassifier(causal_lm, task, prompts).scores(examples[:1], [3])


def test_generation_with_an_empty_prompt_equals_the_models_own(causal_lm: LanguageModel) -> None:
    text = "the capital of France is"
    ids = causal_lm.tokenizer(text, return_tensors="pt")
    pad = causal_lm.tokenizer.pad_token_id
    own = causal_lm.model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    expected = causal_lm.tokenizer.decode(own[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate(causal_lm, None, text, max_new_tokens=6) == expected
    prompt = TaskPrompt(causal_lm, "prefix", 3, init="vocab", seed=4)
    embeds = torch.cat([prompt.weight, causal_lm.embed(ids["input_ids"][0])])[None]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    by_hand = causal_lm.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                       pad_token_id=pad)
    assert generate(causal_lm, prompt, text, max_new_tokens=6) == causal_lm.tokenizer.decode(
        by_hand[0], skip_special_tokens=True)


# --- PEFT ------------------------------------------------------------------------------------------------------


def test_peft_export_loads_in_peft_and_reproduces_scores(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from softprompt.transfer.peft import export_peft, import_peft

    lm = tiny_causal()
    task = capital_task({"a": "Paris city", "b": "Berlin"})
    examples = [task.render(r) for r in rows(4)]
    prompt = TaskPrompt(lm, "prefix", 3, init="vocab", seed=3)
    ours = predict(Engine(lm), prompt, task, examples, TaskSettings())
    export_peft(prompt, lm, tmp_path / "adapter")
    model = peft.PeftModel.from_pretrained(tiny_causal().model, tmp_path / "adapter")
    tok = lm.tokenizer
    for e, s in zip(examples, ours, strict=True):
        ctx = tok(e.text, add_special_tokens=False)["input_ids"]
        for choice, score in zip(e.choices, s, strict=True):
            target = tok(" " + choice, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([ctx + target])).logits[0, 3:]  # drop the virtual tokens
            logp = logits.log_softmax(-1)
            expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(target))
            assert score.item() == pytest.approx(expected, abs=1e-4)
    back = import_peft(tmp_path / "adapter", lm)
    assert torch.equal(back.weight, prompt.weight) and back.layout == prompt.layout
    # From the adapter alone: its base model reference loads, and its README's snippet scores as we do, on the
    # data file's own rows (here with a column the task renames for its template).
    renamed = capital_task({"a": "Paris city", "b": "Berlin"}, columns={"country": "c"})
    export_peft(prompt, lm, tmp_path / "alone", renamed, save_base=True)
    readme = (tmp_path / "alone" / "README.md").read_text()
    snippet = readme.split("```python\n")[1].split("```")[0]
    snippet = snippet.replace('ADAPTER = "."', f'ADAPTER = "{tmp_path / "alone"}"')
    # The README's own code, run as a user would paste it: in a fresh interpreter, without softprompt.
    script = snippet + "\nimport sys\nprint(json.dumps([scores(row) for row in json.load(sys.stdin)]))\n"
    raw = [{"country": r["c"], "label": r["label"]} for r in rows(4)]
    assert [renamed.render(r).text for r in raw] == [e.text for e in examples]
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(raw),
                          capture_output=True, text=True, timeout=120, check=True)
    for theirs, s in zip(json.loads(done.stdout), ours, strict=True):
        assert theirs == pytest.approx(s.tolist(), abs=1e-4)
    with pytest.raises(SoftpromptError, match="only soft prefix prompts"):
        export_peft(TaskPrompt(lm, "hybrid", 3, init="vocab"), lm, tmp_path / "no")
    assert not (tmp_path / "no").exists()


# --- the built-in task pool -----------------------------------------------------------------------------

# The staged datasets beside this checkout, unless $SOFTPROMPT_SHARED_DATA says otherwise.
SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")


def test_builtin_pool_spans_clusters() -> None:
    clusters = tasks_by_cluster()
    assert len(builtin_tasks()) >= 12 and len(clusters) >= 6
    assert all(load_task(name).cluster for name in builtin_tasks())
    assert sorted(n for names in clusters.values() for n in names) == builtin_tasks()
    assert clusters["sentiment"] == ["cr", "mpqa", "mr", "sst2", "sst5"] and clusters["paraphrase"] == ["mrpc"]


def test_binary_sentiment_tasks_share_verbalizers() -> None:
    for name in ("sst2", "mr", "cr", "mpqa"):
        assert load_task(name).labels == {"0": "negative", "1": "positive"}, name
    assert load_task("sst5").verbalizers == ["terrible", "bad", "okay", "good", "great"]


def test_columns_rename_a_bom_headed_tsv(tmp_path: Path) -> None:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\ufeffQuality\t#1 String\t#2 String\n1\tHe left.\tHe went away.\n0\tIt rained.\tIt was dry.\n",
                   encoding="utf-8")
    task = task_from_dict({"name": "pairs", "template": "{{s1}} / {{s2}}", "labels": {"0": "No", "1": "Yes"},
                           "columns": {"Quality": "label", "#1 String": "s1", "#2 String": "s2"}}, "pairs.yaml")
    examples = task.load("train", path=tsv)
    assert [(e.text, e.label) for e in examples] == [("He left. / He went away.", 1), ("It rained. / It was dry.", 0)]
    assert dict(examples[0].fields) == {"label": "1", "s1": "He left.", "s2": "He went away."}
    again = tmp_path / "pairs.yaml"
    again.write_text(task.to_yaml())
    assert load_task(again).columns == task.columns
    with pytest.raises(SoftpromptError, match=r"input 1: the row has a column 's1' and 'columns' renames another"):
        task.render({"Quality": "1", "#1 String": "a", "s1": "b", "#2 String": "c"}, "input 1")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["#1 String"], "bad.yaml: field 'columns' must map file columns to template names, e.g. "
                        '{"#1 String": sentence1}'),
        ({"": "s1"}, "bad.yaml: field 'columns': column '' must be a non-empty string; write the column's name as "
                     "the file's header has it, in quotes"),
        ({"#1 String": "1st"}, "bad.yaml: field 'columns': the name '1st' given to column '#1 String' cannot be "
                               "used in a template; use letters, digits and _ (not first), e.g. sentence1"),
        ({"#1 String": "s", "#2 String": "s"}, "bad.yaml: field 'columns' renames two columns to 's'; give each column "
                                               "its own name"),
    ],
)
def test_bad_columns_say_how_to_fix_them(columns: object, message: str) -> None:
    with pytest.raises(SoftpromptError) as err:
        task_from_dict({"name": "x", "template": "{{s}}", "labels": {"0": "No", "1": "Yes"}, "columns": columns},
                       "bad.yaml")
    assert str(err.value) == message


@pytest.mark.skipif(SHARED is None, reason="the staged datasets are not present")
@pytest.mark.parametrize(
    ("name", "train", "validation"),
    [("sst5", 8544, 2210), ("mr", 8662, 2000), ("cr", 1775, 2000), ("mpqa", 8603, 2000), ("mrpc", 3668, 408)],
)
def test_new_tasks_load_the_staged_splits(name: str, train: int, validation: int) -> None:
    task = load_task(name)
    for split, count in (("train", train), ("validation", validation)):
        examples = task.load(split, data_dir=SHARED)
        assert len(examples) == count, (name, split)
        assert {e.label for e in examples} == set(range(task.num_choices)), (name, split)
