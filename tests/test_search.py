"""Discrete prompt search: triggers, search objectives, searched hard prompts, fluency and PEZ on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal, tiny_masked, tiny_seq2seq

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.autoprompt import AutoPrompt, AutoPromptConfig
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.pez import PEZ, PEZConfig, Projection
from softprompt.optimizers.search import CandidateScores, allowed_tokens
from softprompt.probing.search import TemplateSearch
from softprompt.prompts import HardPrompt, load_prompt
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks.scoring import TaskEncoder
from softprompt.tasks.search import LayoutSearch
from softprompt.tasks.task import task_from_dict
from softprompt.templates import TemplateEncoder

FACTS = [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
         ("Peru", "Lima"), ("Egypt", "Cairo"), ("Kenya", "Paris")]


def template_search(lm: LanguageModel, template: str, init: str = "random", seed: int = 0) -> TemplateSearch:
    encoder = TemplateEncoder(template, lm)
    examples = [e for s, a in FACTS if (e := encoder.encode(s, a)) is not None]
    return TemplateSearch(Engine(lm), encoder, examples[:5], examples[5:], init=init, seed=seed)


def layout_search(lm: LanguageModel, layout: str, labels: dict[str, str], normalise: bool = False) -> LayoutSearch:
    task = task_from_dict({"name": "capital", "description": "capitals", "template": "the capital of {{c}} is",
                           "target": "{{label}}", "labels": labels}, "capital.yaml")
    prompt = TaskPrompt(lm, layout, 0, init="vocab")
    encoder = TaskEncoder(lm, task, prompt)
    rows = [task.render({"c": c, "label": y}) for c, y in [("France", "a"), ("Peru", "b"), ("Chile", "a"),
                                                          ("Spain", "b"), ("Japan", "a")]]
    return LayoutSearch(Engine(lm), prompt, encoder.encode(rows[:3]), encoder.encode(rows[3:]), normalise)


# --- triggers and searched hard prompts -------------------------------------------------------------------------


def test_triggers_are_prompt_positions_without_words(causal_lm: LanguageModel) -> None:
    words = TemplateEncoder("[X] born in [Y]", causal_lm).prompt_ids
    encoder = TemplateEncoder("[X] [T] [T] born in [Y]", causal_lm)
    assert encoder.triggers == (0, 1)
    assert encoder.prompt_ids[2:] == words
    with pytest.raises(SoftpromptError, match=r"has \[T\] triggers: a hard prompt needs token ids"):
        HardPrompt(encoder)


@pytest.mark.parametrize("make", [tiny_causal, tiny_masked])
def test_a_searched_hard_prompt_scores_as_its_words_and_round_trips(make, tmp_path: Path) -> None:
    lm = make()
    words = TemplateEncoder("[X] is the capital of [Y]", lm)
    triggers = TemplateEncoder("[X] " + "[T] " * len(words.prompt_ids) + "[Y]", lm)
    searched = HardPrompt(triggers, token_ids=words.prompt_ids)  # the manual template's words, found by a search
    engine = Engine(lm)
    a = engine.collate([words.query("France", 0)])
    b = engine.collate([triggers.query("France", 0)])
    with torch.no_grad():
        assert torch.allclose(engine.answer_logits(a, HardPrompt(words).vectors()),
                              engine.answer_logits(b, searched.vectors()), atol=1e-6)
    searched.save(tmp_path / "p.safetensors")
    again = load_prompt(tmp_path / "p.safetensors", lm)
    assert isinstance(again, HardPrompt) and again.token_ids == searched.token_ids
    assert torch.equal(again.vectors(), lm.embed(torch.tensor(searched.token_ids)).float())


def test_searched_token_ids_are_refused_by_another_vocabulary(tmp_path: Path) -> None:
    lm = tiny_causal()
    prompt = TaskPrompt(lm, "[P*2]{input}", 0, tuning="hard", token_ids=[5, 9])
    prompt.save(tmp_path / "p.safetensors")
    assert load_prompt(tmp_path / "p.safetensors", lm).token_ids == (5, 9)
    with pytest.raises(SoftpromptError, match="but other tokens for 'tiny-bert-32'; use --model tiny-llama-32"):
        load_prompt(tmp_path / "p.safetensors", tiny_masked())


# --- search objectives -----------------------------------------------------------------------------------------


def test_candidate_accuracy_counts_ties_and_non_finite_scores_as_wrong() -> None:
    scores = CandidateScores(torch.tensor([[-1.0, -2.0, float("nan"), -1.0]]),
                             torch.tensor([[-2.0, -2.0, -9.0, -0.5]]))
    assert scores.accuracy().tolist() == [0.25]


@pytest.mark.parametrize("make", [tiny_causal, tiny_masked])
@pytest.mark.parametrize("template", ["[X] [T] [T] [T] [Y] .", "[X] is located in [Y] ."])
def test_template_search_scores_equal_its_differentiable_loss(make, template: str) -> None:
    lm = make()
    objective = template_search(lm, template)
    ids = torch.tensor([objective.initial_ids, [lm.vocab_size - 1] * len(objective.initial_ids)])
    scores = objective.scores(ids)
    for k in range(2):
        with torch.no_grad():
            loss = objective.loss(lm.embed(ids[k]), range(len(objective.items)))
        assert scores.loss()[k] == pytest.approx(loss.item(), abs=1e-5)


@pytest.mark.parametrize("make", [tiny_causal, tiny_masked, tiny_seq2seq])
@pytest.mark.parametrize(("labels", "normalise"), [({"a": "Paris", "b": "Berlin"}, False),
                                                   ({"a": "Paris is big", "b": "Rome"}, True)])
def test_layout_search_scores_equal_its_differentiable_loss(make, labels: dict[str, str], normalise: bool) -> None:
    lm = make()
    objective = layout_search(lm, "{input} [P*3] so", labels, normalise)
    ids = torch.tensor([objective.initial_ids, [7, 8, 9]])
    scores = objective.scores(ids)
    for k in range(2):
        with torch.no_grad():
            loss = objective.loss(lm.embed(ids[k]), range(3))
        assert scores.loss()[k] == pytest.approx(loss.item(), abs=1e-5)
    assert scores.gold.shape == (2, 3)
    assert objective.scores(ids, dev=True).gold.shape == (2, 2)


# --- fluency -------------------------------------------------------------------------------------------------


def test_fluency_equals_a_brute_force_nll(causal_lm: LanguageModel) -> None:
    fluency = Fluency(causal_lm)
    ids = torch.tensor([[10, 20, 30, 40], [50, 60, 70, 80]])
    start = causal_lm.tokenizer.eos_token_id  # the tiny tokenizer has no BOS
    expected = []
    for row in ids.tolist():
        total = 0.0
        for i, token in enumerate(row):
            context = torch.tensor([[start, *row[:i]]])
            with torch.no_grad():
                total -= causal_lm.model(input_ids=context).logits[0, -1].log_softmax(-1)[token].item()
        expected.append(total / len(row))
    assert fluency.nll(ids).tolist() == pytest.approx(expected, abs=1e-5)
    vectors = causal_lm.embed(ids[0]).detach().requires_grad_()
    nll = fluency.nll_of_vectors(ids[0], vectors)
    assert nll.item() == pytest.approx(expected[0], abs=1e-5)
    nll.backward()
    assert vectors.grad.abs().sum(-1).gt(0).all()  # every token's vector, the last one through its own logit


def test_a_fluency_gradient_needs_the_prompt_model_itself() -> None:
    with pytest.raises(SoftpromptError, match="needs the reference LM to be the prompt's own model"):
        Fluency(tiny_causal(seed=1), tiny_causal()).nll_of_vectors(torch.tensor([5]), torch.zeros(1, 32))


# --- PEZ -----------------------------------------------------------------------------------------------------


def test_projection_returns_exact_vocabulary_rows(causal_lm: LanguageModel) -> None:
    table = causal_lm.embedding_matrix.detach()
    allowed = allowed_tokens(causal_lm)
    vectors = torch.randn(6, table.shape[1], generator=torch.Generator().manual_seed(0))
    for kind in ("cosine", "dot"):
        ids = Projection(table, allowed, kind)(vectors)
        assert allowed[ids].all()
        scores = torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T \
            if kind == "cosine" else vectors @ table.T
        assert torch.equal(ids, scores.masked_fill(~allowed, -math.inf).argmax(-1))
    assert torch.equal(Projection(table, allowed, "cosine")(table[allowed][:20]), allowed.nonzero()[:20, 0])


def test_pez_with_learning_rate_zero_returns_its_initial_tokens(causal_lm: LanguageModel) -> None:
    objective = template_search(causal_lm, "[X] [T] [T] [T] [Y] .", seed=3)
    result = PEZ(PEZConfig(steps=4, lr=0.0, weight_decay=0.0, eval_every=2), progress=False).fit(objective)
    assert result.prompt.token_ids == objective.initial_ids
    assert [h["step"] for h in result.history] == [0, 2, 4]


def test_the_straight_through_gradient_is_the_gradient_at_the_projected_point(causal_lm: LanguageModel) -> None:
    objective = template_search(causal_lm, "[X] [T] [T] [T] [Y] .")
    pez = PEZ(PEZConfig(fluency_weight=0.5), Fluency(causal_lm), progress=False)
    ids = torch.tensor(objective.initial_ids)
    _, grad = pez.gradient(objective, pez.fluency, ids, [0, 1, 2])
    at = causal_lm.embed(ids).detach().requires_grad_()
    loss = objective.loss(at, [0, 1, 2]) + 0.5 * Fluency(causal_lm).nll_of_vectors(ids, at)
    loss.backward()
    assert torch.allclose(grad, at.grad, atol=1e-6)


def test_pez_improves_on_dev_and_keeps_the_best_projected_prompt(causal_lm: LanguageModel) -> None:
    objective = template_search(causal_lm, "[X] [T] [T] [T] [Y] .")
    result = PEZ(PEZConfig(steps=30, lr=0.1, eval_every=5), progress=False).fit(objective)
    best = min(result.history, key=lambda h: (-h["dev_accuracy"], h["dev_loss"]))
    assert result.best_epoch == best["step"]
    assert result.best_dev_loss == pytest.approx(best["dev_loss"])
    again = objective.scores(torch.tensor([result.prompt.token_ids]), dev=True)
    assert again.loss()[0].item() == pytest.approx(result.best_dev_loss, abs=1e-5)
    assert result.history[-1]["evaluations"] == 3 * 7 + 30 * 5  # dev (3 facts) at 7 evaluations, 5 items a step


def test_pez_resumed_equals_uninterrupted(causal_lm: LanguageModel, tmp_path: Path, monkeypatch) -> None:
    config = PEZConfig(steps=12, lr=0.1, eval_every=3, batch_size=2, fluency_weight=0.3)
    whole = PEZ(config, Fluency(causal_lm), progress=False).fit(template_search(causal_lm, "[X] [T] [T] [Y] ."))
    objective = template_search(causal_lm, "[X] [T] [T] [Y] .")
    calls = {"n": 0}
    real = objective.loss

    def crash_at_step_8(vectors, indices):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(vectors, indices)

    monkeypatch.setattr(objective, "loss", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        PEZ(config, Fluency(causal_lm), progress=False).fit(objective, tmp_path / "ckpt.safetensors")
    monkeypatch.setattr(objective, "loss", real)
    resumed = PEZ(config, Fluency(causal_lm), progress=False).fit(objective, tmp_path / "ckpt.safetensors", resume=True)
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.prompt.token_ids == whole.prompt.token_ids
    with pytest.raises(SoftpromptError, match="was written with search settings"):
        PEZ(PEZConfig(steps=13), progress=False).fit(objective, tmp_path / "ckpt.safetensors", resume=True)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", 0, "PEZ's steps must be at least 1, got 0"),
    ("lr", float("nan"), "PEZ's lr must be a finite number ≥ 0, got nan"),
    ("projection", "l2", "unknown projection 'l2'; choose one of: cosine, dot"),
    ("fluency_form", "bleu", "unknown fluency form 'bleu'; choose one of: nll, perplexity"),
])
def test_pez_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(SoftpromptError) as err:
        PEZConfig(**{field: value})
    assert str(err.value) == message


# --- AutoPrompt ------------------------------------------------------------------------------------------------


class KeyTokenRelation:
    """A toy relation: the answer's logits are the prompt vectors' sum times the answers' embeddings. The key
    token's embedding is ten times longer than any other's, so that it, anywhere in the prompt, makes the gold
    answer (the key itself) certain, and no other token comes close."""

    classification = False

    def __init__(self, lm: LanguageModel, key: int, others: list[int], length: int = 3) -> None:
        self.lm = lm
        table = lm.embedding_matrix
        with torch.no_grad():
            table[key] *= 10 * table.norm(dim=-1).max() / table[key].norm()
        answers = table[[key, *others]].detach()
        self.head = 20 * answers.T / table[key].norm() ** 2  # (d, C): a margin of about 20 nats with the key
        self.items, self.dev = list(range(8)), list(range(4))
        self.free = tuple(range(length))
        self.initial_ids = (50,) * length

    def _logp(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors.sum(-2) @ self.head).log_softmax(-1)

    def scores(self, candidates, indices=None, dev=False) -> CandidateScores:
        logp = self._logp(self.lm.embed(candidates).detach())
        n = len(self.dev if dev else self.items) if indices is None else len(indices)
        return CandidateScores(logp[:, :1].expand(-1, n), logp[:, 1:].amax(-1, keepdim=True).expand(-1, n))

    def loss(self, vectors, indices) -> torch.Tensor:
        return -self._logp(vectors)[0]

    def hard_prompt(self, ids):
        return TaskPrompt(self.lm, f"[P*{len(ids)}]{{input}}", 0, tuning="hard", token_ids=list(ids))


def test_autoprompt_finds_the_trigger_that_makes_the_answer_certain() -> None:
    lm = tiny_causal()  # its own copy: the toy lengthens one embedding
    objective = KeyTokenRelation(lm, key=400, others=[300, 350])
    assert objective.scores(torch.tensor([objective.initial_ids])).loss()[0] > 0.5  # far from certain
    result = AutoPrompt(AutoPromptConfig(steps=6, candidates=20, eval_every=2), progress=False).fit(objective)
    assert 400 in result.prompt.token_ids
    assert result.history[-1]["dev_accuracy"] == 1.0 and result.best_dev_loss < 1e-3


def test_autoprompt_on_a_template_is_never_worse_on_dev_and_resumes_exactly(causal_lm: LanguageModel,
                                                                             tmp_path: Path) -> None:
    config = AutoPromptConfig(steps=8, candidates=5, batch_size=3, eval_size=4, eval_every=2)
    objective = template_search(causal_lm, "[X] [T] [T] [T] [Y] .", init="the")
    whole = AutoPrompt(config, progress=False).fit(objective)
    assert whole.best_dev_loss <= whole.history[0]["dev_loss"]
    assert whole.prompt.token_ids != objective.initial_ids  # on random weights some swap always helps
    calls = {"n": 0}
    real = objective.scores

    def crash_in_step_6(candidates, indices=None, dev=False):
        calls["n"] += 1
        if calls["n"] == 1 + 5 + 3 + 1:  # initial dev, steps 1-5, 3 dev evaluations (steps 2, 4, 6...), step 6
            raise KeyboardInterrupt
        return real(candidates, indices, dev)

    objective.scores = crash_in_step_6
    with pytest.raises(KeyboardInterrupt):
        AutoPrompt(config, progress=False).fit(objective, tmp_path / "ckpt.safetensors")
    objective.scores = real
    resumed = AutoPrompt(config, progress=False).fit(objective, tmp_path / "ckpt.safetensors", resume=True)
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.prompt.token_ids == whole.prompt.token_ids


@pytest.mark.parametrize("method", ["pez", "autoprompt"])
@pytest.mark.parametrize("make", [tiny_masked, tiny_seq2seq])
def test_searches_run_on_masked_and_encoder_decoder_lms_and_never_end_worse_on_dev(method: str, make) -> None:
    lm = make()
    objective = layout_search(lm, "[P*2] {input} [P]", {"a": "Paris", "b": "Berlin"})
    search = PEZ(PEZConfig(steps=4, eval_every=2), progress=False) if method == "pez" else \
        AutoPrompt(AutoPromptConfig(steps=4, candidates=4, batch_size=2, eval_size=3, eval_every=2), progress=False)
    result = search.fit(objective)
    first = result.history[0]
    assert (-result.history[0]["dev_accuracy"], first["dev_loss"]) >= (-max(h["dev_accuracy"] for h in
                                                                            result.history), result.best_dev_loss)
    again = objective.scores(torch.tensor([result.prompt.token_ids]), dev=True)
    assert again.loss()[0].item() == pytest.approx(result.best_dev_loss, abs=1e-5)


def test_a_damaged_search_checkpoint_is_set_aside_in_one_line(causal_lm: LanguageModel, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.safetensors"
    checkpoint.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # a header without the search's metadata
    objective = template_search(causal_lm, "[X] [T] [Y] .")
    with pytest.raises(SoftpromptError) as err:
        PEZ(PEZConfig(steps=2), progress=False).fit(objective, checkpoint, resume=True)
    assert str(err.value).startswith(f"{checkpoint}: the checkpoint is damaged (")
    assert str(err.value).endswith("it was moved to checkpoint.safetensors.damaged; start over with --force")
    assert not checkpoint.exists() and (tmp_path / "checkpoint.safetensors.damaged").is_file()


def test_scores_do_not_depend_on_how_items_are_grouped_into_passes(causal_lm: LanguageModel) -> None:
    """Items scored in length groups of 2 (several passes, each with its own shared prefix and padding) score
    as in one pass, and come back in the items' order."""
    whole = template_search(causal_lm, "[X] [T] [T] [Y] .")
    grouped = template_search(causal_lm, "[X] [T] [T] [Y] .")
    grouped.batch_size = 2
    ids = torch.tensor([whole.initial_ids, [7, 8], [9, 9]])
    a, b = whole.scores(ids, [4, 0, 3, 1]), grouped.scores(ids, [4, 0, 3, 1])
    assert torch.allclose(a.gold, b.gold, atol=1e-5) and torch.allclose(a.best_other, b.best_other, atol=1e-5)
    single = whole.scores(ids, [3])
    assert torch.allclose(single.gold[:, 0], a.gold[:, 2], atol=1e-5)
