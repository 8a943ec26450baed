"""Tests for softprompt.probe: encoding relations, evaluation, and the run directory a probe writes."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.io import write_jsonl
from softprompt.metrics import answer_ranks, ranking_metrics
from softprompt.optimizers import TrainConfig
from softprompt.probing import Fact, Relation
from softprompt.probing.probe import MULTI_TOKEN, encode_relation, evaluate, make_prompt, predict, run_probe
from softprompt.prompts import HardPrompt, SoftPrompt, load_prompt

COUNTRIES = ["France", "Germany", "Japan", "Italy", "Spain", "Peru", "Chile", "Egypt", "Kenya"]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
            "Peru": "Lima", "Egypt": "Cairo", "Chile": "Santiago", "Kenya": "Nairobi"}


def capital_relation():
    """Two capitals per split are multi-token words for the tiny tokenizers (Santiago, Nairobi)."""
    facts = [Fact(c, CAPITALS[c]) for c in COUNTRIES]
    subjects = [Fact(f"{f.subject} city", f.answer) for f in facts]
    return Relation("capital", "The capital of [X] is [Y] .", {
        "train": facts + subjects,
        "dev": [Fact(f"the {f.subject}", f.answer) for f in facts],
        "test": [Fact(f"{f.subject} country", f.answer) for f in facts],
    })


def euro_relation():
    """Every country pays in euro: a relation a soft prompt learns in a few steps."""
    words = ["Mozart", "Einstein", "Curie", "Bach", "Newton", "city", "language", "Asia", "Africa"]
    return Relation("currency", "The currency of [X] is the [Y] .", {
        "train": [Fact(f"{a} {b}", "euro") for a in COUNTRIES[:6] for b in words[:5]],
        "dev": [Fact(f"{a} {b}", "euro") for a in COUNTRIES[6:] for b in words[:5]],
        "test": [Fact(f"{a} {b}", "euro") for a in COUNTRIES for b in words[5:]],
    })


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_encode_relation_drops_multi_token_answers(which, request):
    """Facts with multi-token answers are dropped and counted per split; kept facts stay aligned."""
    lm = request.getfixturevalue(f"{which}_lm")
    data = encode_relation(capital_relation(), lm)
    assert data.dropped == {"train": 4, "dev": 2, "test": 2}
    assert {s: len(e) for s, e in data.splits.items()} == {"train": 14, "dev": 7, "test": 7}
    for split, examples in data.splits.items():
        assert len(data.facts[split]) == len(examples)
        for (subject, answer), example in zip(data.facts[split], examples, strict=True):
            assert example == data.encoder.encode(subject, answer)
            assert answer not in ("Santiago", "Nairobi")


def test_encode_relation_limits_apply_after_filtering(causal_lm):
    """A limit caps the kept examples of a split, in order; splits without a limit are whole."""
    data = encode_relation(capital_relation(), causal_lm, limits={"train": 5, "test": 100})
    full = encode_relation(capital_relation(), causal_lm)
    assert len(data.splits["train"]) == 5 and data.splits["train"] == full.splits["train"][:5]
    assert data.facts["train"] == full.facts["train"][:5]
    assert data.splits["dev"] == full.splits["dev"] and data.splits["test"] == full.splits["test"]
    assert data.dropped == full.dropped


def test_predict_returns_input_order(causal_lm):
    """predict sorts by length internally but returns ranks in the order of its input."""
    data = encode_relation(capital_relation(), causal_lm)
    examples = data.splits["train"]
    assert len({len(e) for e in examples}) > 1
    engine = Engine(causal_lm)
    prompt = SoftPrompt(data.encoder, init="random")
    ranks, gold, top_ids, top_lp = predict(engine, prompt, examples, batch_size=3)
    with torch.no_grad():
        for i, example in enumerate(examples):
            batch = engine.collate([example])
            logprobs = engine.answer_logits(batch, prompt.vectors()).log_softmax(-1)
            assert ranks[i] == answer_ranks(logprobs, batch.answer_ids)[0]
            assert gold[i] == pytest.approx(logprobs[0, example.answer_id].item(), abs=1e-5)
            assert top_ids[i].tolist() == logprobs[0].topk(10).indices.tolist()
    assert (top_lp[:, :-1] >= top_lp[:, 1:]).all()


def read_run(out):
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return config, metrics, [json.loads(line) for line in lines]


def check_predictions(rows, metrics):
    """Each row's rank agrees with its top-10 list, and metrics.json scores exactly those ranks."""
    for row in rows:
        top = row["top10"]
        assert len(top) == 10
        assert all(isinstance(token, str) and isinstance(lp, float) for token, lp in top)
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert row["rank"] >= 1
        if row["rank"] == 1:
            assert top[0][0] == row["answer"]
        if row["rank"] <= 10:
            assert top[row["rank"] - 1] == [row["answer"], row["answer_logprob"]]
        else:
            assert row["answer_logprob"] <= top[-1][1]
    assert metrics["test"] == ranking_metrics([row["rank"] for row in rows])


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_hard_probe_writes_a_complete_run(which, request, tmp_path):
    """A hard-prompt probe writes config, metrics, one prediction per kept test fact, and the prompt."""
    lm = request.getfixturevalue(f"{which}_lm")
    out = tmp_path / "run"
    doc = run_probe(lm, capital_relation(), out, mode="hard", progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "config.json", "dropped.jsonl", "metrics.json", "predictions.jsonl", "prompt.safetensors"
    ]
    config, metrics, rows = read_run(out)
    assert metrics == doc
    assert config["mode"] == "hard" and config["relation"] == "capital" and config["model"] == lm.name
    assert config["examples"] == {"train": 14, "dev": 7, "test": 7}
    dropped = {"train": 4, "dev": 2, "test": 2}
    assert config["dropped_multi_token"] == metrics["dropped_multi_token"] == dropped
    # Each dropped fact is listed with its split and the reason, in the relation's order.
    listed = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    expected = [{"split": split, "subject": f.subject, "answer": f.answer, "reason": MULTI_TOKEN}
                for split in ("train", "dev", "test") for f in capital_relation().splits[split]
                if f.answer in ("Santiago", "Nairobi")]
    assert listed == expected and len(listed) == 8
    assert "history" not in metrics
    kept = [f for f in capital_relation().splits["test"] if f.answer not in ("Santiago", "Nairobi")]
    assert [(r["subject"], r["answer"]) for r in rows] == [(f.subject, f.answer) for f in kept]
    assert all(r["relation"] == "capital" for r in rows)
    check_predictions(rows, metrics)
    assert metrics["test"]["n"] == 7
    prompt = load_prompt(out, lm)
    assert isinstance(prompt, HardPrompt) and prompt.template == "The capital of [X] is [Y] ."


def test_soft_probe_learns_and_records_training(causal_lm, tmp_path):
    """A soft probe on an easy relation reaches rank 1, and its run records the training history."""
    out = tmp_path / "soft"
    config = TrainConfig(lr=0.1, batch_size=10, max_epochs=4)
    doc = run_probe(causal_lm, euro_relation(), out, mode="soft", config=config, progress=False)
    _, metrics, rows = read_run(out)
    assert metrics == doc
    assert (out / "checkpoint.safetensors").is_file()
    assert len(metrics["history"]) == 5 and metrics["best_epoch"] >= 1
    assert metrics["best_dev_loss"] < metrics["history"][0]["dev_loss"]
    check_predictions(rows, metrics)
    assert metrics["test"]["p@1"] == 1.0
    hard = run_probe(causal_lm, euro_relation(), tmp_path / "hard", mode="hard", progress=False)
    assert hard["test"]["p@1"] < 1.0
    # The saved prompt reproduces the run's test results.
    prompt = load_prompt(out, causal_lm)
    data = encode_relation(euro_relation(), causal_lm)
    again, _ = evaluate(Engine(causal_lm), prompt, data)
    assert again == metrics["test"]


def test_evaluate_empty_split_is_an_error(causal_lm):
    """Evaluating a split with no usable facts says how many were dropped."""
    relation = capital_relation()
    relation.splits["test"] = [Fact("Chile", "Santiago")]
    data = encode_relation(relation, causal_lm)
    prompt = HardPrompt(data.encoder)
    with pytest.raises(SoftpromptError, match=r"test split has no usable facts \(1 dropped"):
        evaluate(Engine(causal_lm), prompt, data)
    relation.splits["test"] = []
    with pytest.raises(SoftpromptError, match="test split has no usable facts"):
        evaluate(Engine(causal_lm), prompt, encode_relation(relation, causal_lm))


def test_make_prompt_checks_mode_and_init(causal_lm):
    data = encode_relation(capital_relation(), causal_lm)
    with pytest.raises(SoftpromptError, match="unknown prompt mode 'shallow'"):
        make_prompt("shallow", data.encoder)
    with pytest.raises(SoftpromptError, match="--init applies to soft/deep only"):
        make_prompt("hard", data.encoder, init="random")
    assert make_prompt("deep", data.encoder, init="random", seed=2).init == "random"


def test_run_probe_refuses_empty_training_split_before_writing(causal_lm, tmp_path):
    """No run directory appears when the data cannot be trained on."""
    relation = Relation("r", "[X] is [Y] .", {"dev": [Fact("France", "Paris")], "test": [Fact("Peru", "Lima")]})
    out = tmp_path / "run"
    with pytest.raises(SoftpromptError, match="the train split has no usable facts"):
        run_probe(causal_lm, relation, out, mode="soft", progress=False)
    assert not out.exists()


@pytest.mark.parametrize("value", [float("nan"), 0.0])
def test_a_degenerate_prompt_scores_nothing_and_writes_valid_json(causal_lm, tmp_path, value):
    """A prompt of NaNs (or one that makes every word equally likely) ranks every answer last, and its
    predictions are strict JSON (non-finite log-probabilities become null)."""
    data = encode_relation(euro_relation(), causal_lm)
    prompt = SoftPrompt(data.encoder)
    with torch.no_grad():
        prompt.weight.fill_(value)
    engine = Engine(causal_lm)
    if value == 0.0:  # a collapsed model output: every vocabulary item scored alike
        engine.project = lambda hidden: torch.zeros(*hidden.shape[:-1], causal_lm.vocab_size)
    metrics, rows = evaluate(engine, prompt, data, "test")
    assert metrics["p@1"] == metrics["p@10"] == 0.0 and metrics["mrr"] == pytest.approx(1 / causal_lm.vocab_size)
    write_jsonl(tmp_path / "p.jsonl", rows)
    parsed = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
              for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(r["rank"] == causal_lm.vocab_size for r in parsed)
    if value != value:  # NaN
        assert all(r["answer_logprob"] is None for r in parsed)
