"""Tests for candidate-answer probing: answers of any length ranked among candidates (softprompt.probing.candidates)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.engine import Engine, TokenTree
from softprompt.errors import SoftpromptError
from softprompt.metrics import answer_ranks
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.probing import Fact, Relation
from softprompt.probing.candidates import (
    CandidateOptions,
    CandidateScorer,
    prefix_tree,
    read_candidates,
    with_masks,
)
from softprompt.probing.objective import CandidateObjective, train_candidates
from softprompt.probing.probe import NOT_CANDIDATE, encode_relation, eval_probe, evaluate, run_probe
from softprompt.prompts import DeepPrompt, SoftPrompt
from softprompt.templates import Example

# Santiago, Nairobi and the two-word answers are several tokens for both tiny tokenizers; Paris and Lima are one.
FACTS = {
    "train": [("France", "Paris"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
              ("France city", "Paris"), ("Chile city", "Santiago"), ("Kenya city", "Nairobi"), ("Peru city", "Lima")],
    "dev": [("the France", "Paris"), ("the Chile", "Santiago"), ("the Kenya", "Nairobi city")],
    "test": [("France country", "Paris"), ("the Kenya country", "Nairobi"), ("Peru country", "Lima"),
             ("Chile", "Santiago de Chile")],
}
ANSWERS = ["Paris", "Santiago", "Nairobi", "Lima", "Nairobi city", "Santiago de Chile"]


def relation() -> Relation:
    return Relation("capital", "The capital of [X] is [Y] .",
                    {split: [Fact(s, a) for s, a in pairs] for split, pairs in FACTS.items()})


def brute_force(lm: LanguageModel, prompt: SoftPrompt, example: Example, tokens: tuple[int, ...]) -> float:
    """log p(tokens | query) from one plain model(...) call on one unpadded row: the prompt's vectors replace the
    embeddings at its positions; causal LMs get the tokens appended, masked LMs one [MASK] per token."""
    ids, slots, at = list(example.input_ids), list(example.prompt_slots), example.answer_position
    if lm.kind == "causal":
        ids, slots = ids + list(tokens[:-1]), slots + [-1] * (len(tokens) - 1)
    else:
        ids = ids[:at] + [lm.tokenizer.mask_token_id] * len(tokens) + ids[at + 1 :]
        slots = slots[:at] + [-1] * len(tokens) + slots[at + 1 :]
    with torch.no_grad():
        embeds = lm.model.get_input_embeddings()(torch.tensor([ids]))
        vectors = prompt.vectors()
        for position, slot in enumerate(slots):
            if slot >= 0:
                embeds[0, position] = vectors[slot]
        logp = lm.model(inputs_embeds=embeds).logits[0].log_softmax(-1)
    return sum(float(logp[at + j, t]) for j, t in enumerate(tokens))


@pytest.mark.parametrize("which", ["causal", "masked"])
@pytest.mark.parametrize("normalise", [False, True])
def test_scores_equal_brute_force(which, normalise, request):
    """Every candidate's score is the sum (or mean) of its tokens' log-probabilities, as one plain forward pass
    per fact and candidate gives it, though the facts are padded together and the candidates differ in length."""
    lm = request.getfixturevalue(f"{which}_lm")
    data = encode_relation(relation(), lm, candidates=CandidateOptions(normalise=normalise))
    examples = data.splits["train"]
    assert len({len(e) for e in examples}) > 1  # the batch is padded
    assert sorted({len(t) for t in data.candidates.tokens}) == [1, *sorted({len(t) for t in data.candidates.tokens
                                                                           if len(t) > 1})]
    assert len({len(t) for t in data.candidates.tokens}) >= 3  # mixed lengths
    prompt = SoftPrompt(data.encoder, init="random", seed=1)
    scorer = CandidateScorer(Engine(lm), data.candidates)
    scores = scorer.all_scores(examples, prompt.vectors(), None)
    assert scores.shape == (len(examples), len(ANSWERS))
    for i, example in enumerate(examples):
        for c, tokens in enumerate(data.candidates.tokens):
            expected = brute_force(lm, prompt, example, tokens) / (len(tokens) if normalise else 1)
            assert scores[i, c].item() == pytest.approx(expected, abs=1e-5)


def test_token_tree_scores_equal_one_row_per_candidate_under_a_deep_prompt(causal_lm):
    """The tree's 4-D mask gives each candidate the states of its own row, also with per-layer perturbations
    of the prompt positions (the engine's row path is tested against an independent deep implementation)."""
    data = encode_relation(relation(), causal_lm, candidates=CandidateOptions())
    prompt = DeepPrompt(data.encoder, init="random", seed=2)
    with torch.no_grad():
        prompt.delta.normal_(std=0.5)
    engine = Engine(causal_lm)
    examples = data.splits["train"]
    scores = CandidateScorer(engine, data.candidates).all_scores(examples, prompt.vectors(), prompt.deltas())
    with torch.no_grad():
        for c, tokens in enumerate(data.candidates.tokens):
            rows = [Example((*e.input_ids, *tokens[:-1]), (*e.prompt_slots, *[-1] * (len(tokens) - 1)),
                            e.answer_position, -1) for e in examples]
            batch = engine.collate(rows)
            hidden = engine.final_hidden(batch, prompt.vectors(), prompt.deltas())
            last = batch.input_ids.shape[1] - len(tokens)  # the answer position of every left-padded row
            logp = engine.project(hidden[:, last:]).log_softmax(-1)
            expected = sum(logp[:, j, t] for j, t in enumerate(tokens))
            # Sums of six log-probabilities reach -60 here: float32 rounding alone is 1e-7 of that.
            torch.testing.assert_close(scores[:, c], expected, atol=1e-5, rtol=1e-6)


def test_a_model_that_ignores_tree_masks_is_refused_in_one_line(causal_lm, monkeypatch):
    """An attention implementation that drops the custom 4-D mask (here: every position sees every earlier
    one, siblings included) would give wrong candidate scores silently; the scorer checks and refuses."""
    engine = Engine(causal_lm)
    assert engine.honours_tree_masks()
    blind = Engine(causal_lm)
    run_body = blind._run_body

    def causal_only(tokens, mask, vectors, deltas, **kwargs):
        if mask.dim() == 4:  # what an implementation that ignores the 4-D mask computes: plain causal attention
            mask = torch.ones(mask.shape[0], mask.shape[-1], dtype=torch.long)
            kwargs.pop("position_ids")
        return run_body(tokens, mask, vectors, deltas, **kwargs)

    monkeypatch.setattr(blind, "_run_body", causal_only)
    assert not blind.honours_tree_masks()
    data = encode_relation(relation(), causal_lm, candidates=CandidateOptions())
    with pytest.raises(SoftpromptError, match=r"ignores custom 4-D attention masks .* answers over the vocabulary"):
        CandidateScorer(blind, data.candidates)


def test_prefix_tree_by_hand():
    """Each proper prefix is one node; every token is read where its prefix ends (0: the answer position)."""
    tree, slots = prefix_tree([(5,), (1, 2, 3), (1, 2, 4), (1, 7), (8, 2)])
    assert tree == TokenTree(tokens=(1, 2, 8), parents=(-1, 0, -1))
    assert slots == [[0], [0, 1, 2], [0, 1, 2], [0, 1], [0, 3]]
    assert tree.depths == [1, 2, 1]
    assert tree.ancestry().tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_with_masks_moves_a_following_subject(masked_lm):
    """An answer-first template's subject shifts right by the inserted masks; prompt slots stay aligned."""
    example = Example((2, 9, 4, 7, 8, 3), (-1, 0, -1, 1, -1, -1), 2, 11, (4, 5))
    assert with_masks(example, 3, 4) == Example((2, 9, 4, 4, 4, 7, 8, 3), (-1, 0, -1, -1, -1, 1, -1, -1), 2, 11,
                                                (6, 7))


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_multi_token_answers_are_kept(which, request):
    """By default the candidates are the relation's distinct answers, so no fact is dropped; the vocabulary mode
    still drops the multi-token ones."""
    lm = request.getfixturevalue(f"{which}_lm")
    data = encode_relation(relation(), lm, candidates=CandidateOptions())
    assert data.dropped == {"train": 0, "dev": 0, "test": 0} and data.dropped_facts == []
    assert data.candidates.texts == tuple(ANSWERS)
    for split, pairs in FACTS.items():
        assert data.facts[split] == pairs
        assert [data.candidates.texts[g] for g in data.gold[split]] == [a for _, a in pairs]
        assert [e.answer_id for e in data.splits[split]] == [-1] * len(pairs)
    vocabulary = encode_relation(relation(), lm)
    assert vocabulary.candidates is None and vocabulary.gold == {}
    assert vocabulary.dropped == {"train": 4, "dev": 2, "test": 2}


def test_a_candidates_file_ranks_among_its_answers(causal_lm, tmp_path):
    """A user's list: blank lines and surrounding spaces ignored, answers that tokenise alike are one candidate,
    and facts whose answer is not listed are dropped (and said why)."""
    path = tmp_path / "capitals.txt"
    path.write_text("\ufeffLima\n\n  Paris \nSantiago de Chile\nParis\nRome\n", encoding="utf-8")
    assert read_candidates(path) == ["Lima", "Paris", "Santiago de Chile", "Paris", "Rome"]
    data = encode_relation(relation(), causal_lm, limits={"train": 1}, candidates=CandidateOptions(path))
    assert data.candidates.texts == ("Lima", "Paris", "Santiago de Chile", "Rome")
    assert data.dropped == {"train": 4, "dev": 2, "test": 1}
    assert data.facts["test"] == [("France country", "Paris"), ("Peru country", "Lima"), ("Chile", "Santiago de Chile")]
    assert data.gold == {"train": [1], "dev": [1], "test": [1, 0, 2]}
    assert {"split": "test", "subject": "the Kenya country", "answer": "Nairobi",
            "reason": NOT_CANDIDATE} in data.dropped_facts


def test_a_split_without_listed_answers_is_refused(causal_lm, tmp_path):
    """When no test answer is a candidate, evaluation stops before writing anything, saying why."""
    path = tmp_path / "candidates.txt"
    path.write_text("Rome\n")
    with pytest.raises(SoftpromptError, match=r"the test split has no usable facts \(4 dropped because their answer "
                                              r"is not among the 1 candidates\); .* candidates that include"):
        eval_probe(causal_lm, relation(), tmp_path / "run", candidates=CandidateOptions(path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("content", "message"), [
    (None, ": cannot read it"),
    ("\n  \n", ": the candidates file is empty; write one candidate answer per line"),
    (b"Paris\n\xff\n", ", line 2: not UTF-8 text; save the file as UTF-8"),
])
def test_bad_candidates_file_is_one_line(content, message, causal_lm, tmp_path):
    """A missing, empty or undecodable candidates file is a SoftpromptError naming the file and the fix."""
    path = tmp_path / "candidates.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SoftpromptError) as caught:
        encode_relation(relation(), causal_lm, candidates=CandidateOptions(path))
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_evaluate_ranks_among_candidates(which, request):
    """Ranks count the candidates scoring at least as high as the answer; predictions name the top candidates."""
    lm = request.getfixturevalue(f"{which}_lm")
    data = encode_relation(relation(), lm, candidates=CandidateOptions())
    engine = Engine(lm)
    prompt = SoftPrompt(data.encoder, init="random")
    metrics, rows = evaluate(engine, prompt, data, "test")
    scores = CandidateScorer(engine, data.candidates).all_scores(data.splits["test"], prompt.vectors(), None)
    gold = torch.tensor(data.gold["test"])
    ranks = [1 + int((scores[i] > scores[i, g]).sum()) for i, g in enumerate(data.gold["test"])]
    assert [row["rank"] for row in rows] == ranks == answer_ranks(scores, gold).tolist()
    assert metrics["n"] == 4 and metrics["p@1"] == sum(r == 1 for r in ranks) / 4
    assert metrics["p@10"] == 1.0  # six candidates: every answer is in the top 10
    for i, row in enumerate(rows):
        assert row["answer_score"] == round(float(scores[i, gold[i]]), 5)
        assert len(row["top10"]) == len(ANSWERS)
        assert row["top10"][0] == [ANSWERS[int(scores[i].argmax())], round(float(scores[i].max()), 5)]
        assert row["top10"][row["rank"] - 1][0] == row["answer"]


def test_chunked_backward_adds_up_to_one_pass(causal_lm):
    """The objective splits a batch to bound memory; the loss and gradients do not depend on the chunk size."""
    data = encode_relation(relation(), causal_lm, candidates=CandidateOptions())
    prompt = SoftPrompt(data.encoder, init="random")
    scorer = CandidateScorer(Engine(causal_lm), data.candidates)
    objective = CandidateObjective(scorer, prompt, data.splits["train"], torch.tensor(data.gold["train"]),
                                   data.splits["dev"], torch.tensor(data.gold["dev"]))
    results = []
    for per_pass in (8, 3):
        scorer.facts_per_pass = per_pass
        prompt.zero_grad()
        loss = objective.backward(list(range(8)))
        results.append((loss, prompt.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)
    scores = scorer.all_scores(data.splits["train"], prompt.vectors(), None)
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor(data.gold["train"])).item()
    assert results[0][0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_sampled_negatives_give_the_softmax_over_the_golds_and_the_sample(which, request):
    """With negatives, a step's loss is the cross-entropy among the batch's golds and the sampled others, each
    scored as the full scorer scores it; with a sample as large as the rest it is the full loss."""
    lm = request.getfixturevalue(f"{which}_lm")
    data = encode_relation(relation(), lm, candidates=CandidateOptions(negatives=1))
    assert data.candidates.settings()["negatives"] == 1
    prompt = SoftPrompt(data.encoder, init="random")
    engine = Engine(lm)
    full = CandidateScorer(engine, replace(data.candidates, negatives=None))
    gold = torch.tensor(data.gold["train"])
    batch = [0, 1, 2]
    objective = CandidateObjective(CandidateScorer(engine, data.candidates), prompt, data.splits["train"], gold,
                                   data.splits["dev"], torch.tensor(data.gold["dev"]), seed=5)
    objective.start_epoch(3)
    golds = sorted(set(gold[batch].tolist()))
    drawn = objective.sampled(gold[batch], 1)[0].candidates  # what the step will draw (seed, epoch, step 0)
    assert len(drawn) == len(golds) + 1 and drawn.tokens[: len(golds)] == tuple(full.candidates.tokens[g]
                                                                                 for g in golds)
    chosen = [full.candidates.tokens.index(t) for t in drawn.tokens]
    loss = objective.backward(batch)
    with torch.no_grad():
        scores = full.scores([data.splits["train"][i] for i in batch], prompt.vectors(), None)[:, chosen]
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor([chosen.index(g) for g in gold[batch].tolist()]))
    assert loss == pytest.approx(expected.item(), abs=1e-5)
    # Negatives covering every other candidate: the full cross-entropy.
    every = CandidateObjective(CandidateScorer(engine, replace(data.candidates, negatives=len(ANSWERS))), prompt,
                               data.splits["train"], gold, data.splits["dev"], torch.tensor(data.gold["dev"]))
    whole = CandidateObjective(full, prompt, data.splits["train"], gold, data.splits["dev"],
                               torch.tensor(data.gold["dev"]))
    assert every.backward(batch) == pytest.approx(whole.backward(batch), abs=1e-5)
    with pytest.raises(SoftpromptError, match="the sampled negatives must be at least 1, got 0"):
        CandidateOptions(negatives=0)


def test_sampled_negatives_train_reproducibly_and_resume_exactly(causal_lm, tmp_path, monkeypatch):
    data = encode_relation(relation(), causal_lm, candidates=CandidateOptions(negatives=2))
    config = TrainConfig(lr=0.05, batch_size=4, max_epochs=3, patience=3, seed=1)

    def run(checkpoint=None, resume=False):
        prompt = SoftPrompt(data.encoder, init="random", seed=1)
        train_candidates(CandidateScorer(Engine(causal_lm), data.candidates), prompt, data.splits["train"],
                         data.gold["train"], data.splits["dev"], data.gold["dev"], config, checkpoint, resume,
                         progress=False)
        return prompt.weight.detach().clone()

    straight = run()
    calls = {"n": 0}
    original = CandidateObjective.dev_loss

    def dies_after_epoch_one(self):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 0, epoch 1, then epoch 2's evaluation
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(CandidateObjective, "dev_loss", dies_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt.safetensors")
    monkeypatch.undo()
    assert torch.equal(run(tmp_path / "ckpt.safetensors", resume=True), straight)


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_training_lowers_the_candidate_loss(which, request, tmp_path):
    """Gradient descent on the cross-entropy over the candidates lowers it on held-out facts of a relation whose
    answer is always the same multi-token word (the tiny random models respond weakly, but every epoch helps)."""
    lm = request.getfixturevalue(f"{which}_lm")
    path = tmp_path / "candidates.txt"
    path.write_text("Paris\nLima\nSantiago\nNairobi\n")
    subjects = ["France", "Germany", "Japan", "Italy", "Spain", "Peru", "Chile", "Egypt"]
    always = Relation("capital", "The capital of [X] is [Y] .", {
        "train": [Fact(s, "Santiago") for s in subjects[:6]], "dev": [Fact(s, "Santiago") for s in subjects[6:]]})
    data = encode_relation(always, lm, candidates=CandidateOptions(path))
    scorer = CandidateScorer(Engine(lm), data.candidates)
    config = TrainConfig(lr=0.1, batch_size=3, max_epochs=4, patience=4)
    result = train_candidates(scorer, SoftPrompt(data.encoder), data.splits["train"], data.gold["train"],
                              data.splits["dev"], data.gold["dev"], config, progress=False)
    dev_losses = [h["dev_loss"] for h in result.history]
    assert dev_losses == sorted(dev_losses, reverse=True) and dev_losses[-1] < dev_losses[0]
    assert result.best_epoch == 4


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["softprompt.checkpoint"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_resumed_candidate_run_equals_uninterrupted_run(causal_lm, tmp_path, monkeypatch):
    """A candidate-mode run stopped after epoch 2 and resumed from its checkpoint ends bit-identical."""
    data = encode_relation(relation(), causal_lm, candidates=CandidateOptions(normalise=True))
    config = TrainConfig(lr=0.05, batch_size=3, max_epochs=4, patience=4, seed=5)
    scorer = CandidateScorer(Engine(causal_lm), data.candidates)

    def fit(prompt: SoftPrompt, checkpoint: Path, resume: bool = False):
        return train_candidates(scorer, prompt, data.splits["train"], data.gold["train"], data.splits["dev"],
                                data.gold["dev"], config, checkpoint=checkpoint, resume=resume, progress=False)

    straight = SoftPrompt(data.encoder)
    result_a = fit(straight, tmp_path / "a.st")
    calls = []
    dev_loss = CandidateObjective.dev_loss

    def crashing_dev_loss(self):
        calls.append(1)
        if len(calls) == 4:  # the initial loss, epochs 1 and 2, then a crash after training epoch 3
            raise KeyboardInterrupt
        return dev_loss(self)

    monkeypatch.setattr(CandidateObjective, "dev_loss", crashing_dev_loss)
    with pytest.raises(KeyboardInterrupt):
        fit(SoftPrompt(data.encoder), tmp_path / "b.st")
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "b.st")[0]["state"]["epoch"] == 2
    resumed = SoftPrompt(data.encoder)
    result_b = fit(resumed, tmp_path / "b.st", resume=True)
    assert result_b.history == result_a.history and len(result_a.history) == 5
    assert torch.equal(resumed.weight, straight.weight)
    tensors_a, tensors_b = read_checkpoint(tmp_path / "a.st")[1], read_checkpoint(tmp_path / "b.st")[1]
    assert tensors_a.keys() == tensors_b.keys()
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)


def test_run_directory_marks_candidate_mode(causal_lm, tmp_path):
    """config.json and metrics.json say the answers were ranked among candidates, and how many; the vocabulary
    mode's files have none of these entries."""
    config = TrainConfig(lr=0.05, batch_size=4, max_epochs=1)
    doc = run_probe(causal_lm, relation(), tmp_path / "c", config=config, progress=False,
                    candidates=CandidateOptions())
    stored = json.loads((tmp_path / "c" / "config.json").read_text())
    for entries in (doc, stored):
        assert entries["ranking"] == "candidates" and entries["candidates"] == len(ANSWERS)
        assert entries["candidates_source"] == "relation" and entries["normalise"] is False
        assert entries["dropped_not_candidate"] == {"train": 0, "dev": 0, "test": 0}
    assert doc["test"]["n"] == len(FACTS["test"])
    rows = [json.loads(line) for line in (tmp_path / "c" / "predictions.jsonl").read_text().splitlines()]
    assert [row["answer"] for row in rows] == [a for _, a in FACTS["test"]]
    vocabulary = run_probe(causal_lm, relation(), tmp_path / "v", config=config, progress=False)
    stored = json.loads((tmp_path / "v" / "config.json").read_text())
    for entries in (vocabulary, stored):
        assert not {"ranking", "candidates", "normalise", "dropped_not_candidate"} & entries.keys()
        assert entries["dropped_multi_token"] == {"train": 4, "dev": 2, "test": 2}


def test_cli_candidate_mode(model_dirs, tmp_path, monkeypatch):
    """probe train and probe eval take --answers candidates [--candidates FILE] [--normalise]; the candidate
    options alone, or a bad candidates file, are one-line errors."""
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "capital"
    data.mkdir()
    for split, pairs in FACTS.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in pairs))
    runner = CliRunner()
    common = ["--data", str(data), "--template", "The capital of [X] is [Y] .", "--model", str(model_dirs["masked"])]
    result = runner.invoke(app, ["probe", "train", *common, "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--quiet", "--answers", "candidates", "--normalise", "--negatives", "2"])
    assert result.exit_code == 0, result.output
    assert "metrics (×100, among 6 candidates)" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["ranking"], metrics["candidates"], metrics["normalise"], metrics["negatives"]) == \
        ("candidates", 6, True, 2)
    listed = tmp_path / "listed.txt"
    listed.write_text("Paris\nLima\n")
    result = runner.invoke(app, ["probe", "eval", *common, "--out", str(tmp_path / "eval"), "--prompt",
                                 str(tmp_path / "run"), "--answers", "candidates", "--candidates", str(listed)])
    assert result.exit_code == 0, result.output
    assert "facts dropped because their answer is not among the 2 candidates: 2" in result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["n"] == 2
    result = runner.invoke(app, ["probe", "train", *common, "--out", str(tmp_path / "bad"), "--negatives", "3"])
    assert result.exit_code == 2 and "--negatives apply to candidate answers" in result.stderr
    assert not (tmp_path / "bad").exists()
    for extra, fragment in [(["--normalise"], "add --answers candidates"),
                            (["--answers", "candidates", "--candidates", str(tmp_path / "none.txt")], "none.txt")]:
        result = runner.invoke(app, ["probe", "eval", *common, "--out", str(tmp_path / "bad"), *extra])
        assert result.exit_code == 2 and fragment in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
