"""Tests for mixtures of prompts (softprompt.prompts.mixture, softprompt.mixture), on tiny random models."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest
import torch
from conftest import tiny_causal
from safetensors import safe_open

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.optimizers import EM, GradientDescent, TrainConfig, fit_weights, greedy_selection
from softprompt.probing import Fact, Relation, train_prompt
from softprompt.probing.mixture import (
    MixtureObjective,
    MixtureSettings,
    encode_mixture_data,
    encode_prompt_set,
    log_likelihoods,
    posteriors,
    predict_mixture,
    run_mixture,
    score,
    select_prompts,
    sparse_score,
)
from softprompt.probing.probe import predict
from softprompt.prompts import MixturePrompt, SoftPrompt, effective_prompts, load_prompt
from softprompt.templates import TemplateEncoder

TEMPLATES = ["[X] is [Y] .", "the capital of [X] is [Y] .", "[X] speaks [Y] ."]
EURO = ["France", "Germany", "Italy", "Spain"]
YEN = ["Japan", "Peru", "Chile", "Egypt"]


def facts(seconds: list[str]) -> list[Fact]:
    # Two-word subjects, so the data-dependent mixture has subject tokens to score.
    return [Fact(f"{a} {b}", "euro" if a in EURO else "yen") for a in EURO + YEN for b in seconds]


RELATION = Relation("currency", TEMPLATES[0], {
    "train": facts(["Mozart", "Einstein", "Curie"]), "dev": facts(["Bach"]), "test": facts(["Newton", "city"]),
})


def build(lm, templates=TEMPLATES, mode="soft", **kwargs) -> MixturePrompt:
    encoders, sources, _ = encode_prompt_set(templates, lm)
    return MixturePrompt(encoders, mode, sources=sources, **kwargs)


@pytest.fixture(params=["causal_lm", "masked_lm"])
def lm(request):
    return request.getfixturevalue(request.param)


def test_one_prompt_mixture_equals_the_single_prompt(lm):
    """K = 1: the mixture's ranking, gold log-probabilities and top-10 are the soft prompt's own."""
    engine = Engine(lm)
    template = "the capital of [X] is [Y] ."
    mixture = build(lm, [template], init="random", seed=3)
    single = SoftPrompt(TemplateEncoder(template, lm, answer_space=True), init="random", seed=3000)
    assert torch.equal(mixture.vectors(), single.vectors())
    data = encode_mixture_data(RELATION, mixture)
    single_examples = [row for item in data.splits["test"] for row in item.rows]
    ranks, gold, top_ids, top_lp = predict(engine, single, single_examples)
    pred = predict_mixture(engine, mixture, data.splits["test"])
    assert torch.equal(pred.ranks, ranks)
    assert torch.allclose(pred.gold, gold, atol=1e-5)
    assert torch.equal(pred.top_ids, top_ids)
    assert torch.allclose(pred.top_logprobs, top_lp, atol=1e-5)
    assert torch.all(pred.posteriors == 1.0)


@pytest.mark.parametrize("data_dependent", [False, True])
def test_mixture_distribution_sums_to_one(lm, data_dependent):
    engine = Engine(lm)
    mixture = build(lm, init="random", data_dependent=data_dependent)
    with torch.no_grad():
        mixture.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    items = encode_mixture_data(RELATION, mixture).splits["test"]
    scores = score(engine, mixture, items, full_vocab=True)
    assert torch.allclose(scores.log_weights.exp().sum(-1), torch.ones(len(items)), atol=1e-6)
    mixed = (scores.log_weights[:, :, None] + scores.logprobs).logsumexp(1)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(len(items)), atol=1e-5)
    if data_dependent:  # the weights now depend on the subject
        assert not torch.allclose(scores.log_weights[0], scores.log_weights[-1])
    else:
        assert torch.allclose(scores.log_weights, torch.tensor([0.5, -1.0, 2.0]).log_softmax(-1).expand(len(items), 3))


def test_data_dependent_mixture_at_infinite_temperature_is_the_plain_mixture(lm):
    engine = Engine(lm)
    plain = build(lm, init="random")
    dependent = build(lm, init="random", data_dependent=True)
    with torch.no_grad():
        for m in (plain, dependent):
            m.weight_logits.copy_(torch.tensor([0.3, 1.2, -0.4]))
        dependent.log_temperature.fill_(60.0)  # T = e^60: p(x | t)^(1/T) = 1 for any x
    items = encode_mixture_data(RELATION, plain).splits["test"]
    a, b = predict_mixture(engine, plain, items), predict_mixture(engine, dependent, items)
    assert torch.equal(a.ranks, b.ranks)
    assert torch.allclose(a.gold, b.gold, atol=1e-6)
    assert torch.allclose(a.log_weights, b.log_weights, atol=1e-6)
    with torch.no_grad():
        dependent.log_temperature.fill_(0.0)
    assert not torch.allclose(predict_mixture(engine, dependent, items).log_weights, a.log_weights)


def test_results_do_not_depend_on_how_rows_are_chunked(lm):
    engine = Engine(lm)
    mixture = build(lm, init="random", data_dependent=True)
    items = encode_mixture_data(RELATION, mixture).splits["test"]
    a = predict_mixture(engine, mixture, items, max_rows=1)
    b = predict_mixture(engine, mixture, items, max_rows=10_000)
    assert torch.equal(a.ranks, b.ranks)
    assert torch.allclose(a.gold, b.gold, atol=1e-5)
    assert torch.allclose(a.posteriors, b.posteriors, atol=1e-5)


def test_rows_grouped_by_length_score_as_one_padded_batch(lm):
    """Prompts of different lengths run in separate length groups; the scores, p(x | t) and the gradients
    are those of one padded batch of all rows."""
    engine = Engine(lm)
    mixture = build(lm, init="random", data_dependent=True)
    items = encode_mixture_data(RELATION, mixture).splits["train"][:5]
    rows = [row for item in items for row in item.rows]
    assert len({len(row) for row in rows}) > 1
    grouped = score(engine, mixture, items)
    (grouped.log_weights + grouped.logprobs).logsumexp(-1).sum().backward()
    grads = [p.grad.clone() for p in mixture.parameters()]
    mixture.zero_grad()
    batch = engine.collate(rows)
    vectors, deltas = mixture.vectors(), mixture.deltas()
    hidden = engine.final_hidden(batch, vectors, deltas)
    logprobs = engine.project(engine.at_answers(hidden, batch)).log_softmax(-1)
    logprobs = logprobs.gather(1, batch.answer_ids[:, None])[:, 0].view(len(items), -1)
    subject = engine.subject_logprob(batch, vectors, deltas, hidden=hidden).view(len(items), -1)
    log_weights = mixture.log_weights(subject)
    assert torch.allclose(grouped.logprobs, logprobs, atol=1e-5)
    assert torch.allclose(grouped.log_weights, log_weights, atol=1e-5)
    (log_weights + logprobs).logsumexp(-1).sum().backward()
    for grad, p in zip(grads, mixture.parameters(), strict=True):
        assert torch.allclose(grad, p.grad, atol=1e-5)


def test_subject_logprob_matches_the_full_forward_pass(causal_lm):
    """Causal p(x | t): the subject's tokens after its first, read off the model's ordinary logits."""
    engine = Engine(causal_lm)
    encoder = TemplateEncoder("the capital of [X] is [Y] .", causal_lm)
    example = encoder.encode("France Mozart", "Paris")
    start, end = example.subject_span
    assert end - start >= 2
    batch = engine.collate([example])
    with torch.no_grad():
        logp = causal_lm.model(torch.tensor([example.input_ids])).logits[0].log_softmax(-1)
        expected = sum(logp[p - 1, example.input_ids[p]] for p in range(start + 1, end))
        assert engine.subject_logprob(batch).item() == pytest.approx(expected.item(), abs=1e-5)


def test_deep_mixture_with_zero_perturbations_equals_the_soft_mixture(causal_lm):
    engine = Engine(causal_lm)
    soft, deep = build(causal_lm, mode="soft"), build(causal_lm, mode="deep")
    items = encode_mixture_data(RELATION, soft).splits["test"]
    a, b = predict_mixture(engine, soft, items), predict_mixture(engine, deep, items)
    assert torch.equal(a.ranks, b.ranks)
    assert torch.allclose(a.gold, b.gold, atol=1e-5)


def test_hard_mixture_scores_the_template_words(causal_lm):
    engine = Engine(causal_lm)
    hard, soft = build(causal_lm, mode="hard"), build(causal_lm, mode="soft")  # soft starts at the words
    items = encode_mixture_data(RELATION, hard).splits["test"]
    assert torch.allclose(predict_mixture(engine, hard, items).gold, predict_mixture(engine, soft, items).gold,
                          atol=1e-6)


def test_answer_first_templates_are_reordered_for_causal_lms(causal_lm, masked_lm):
    templates = ["[Y] native [X] .", "[X] is [Y] .", "[X] is [Y].", "[X] speaks [Y] ."]
    encoders, sources, report = encode_prompt_set(templates, causal_lm)
    assert [e.template.text for e in encoders] == ["native [X] . [Y]", "[X] is [Y] .", "[X] speaks [Y] ."]
    assert sources == ["[Y] native [X] .", "[X] is [Y] .", "[X] speaks [Y] ."]
    # "[X] is [Y]." only differs after [Y], which a causal LM never sees.
    assert (report.total, report.reordered, report.skipped, report.duplicates, report.kept) == (4, 1, 0, 1, 3)
    _, _, skipped = encode_prompt_set(templates, causal_lm, answer_first="skip")
    assert (skipped.skipped, skipped.kept) == (1, 2)
    with pytest.raises(SoftpromptError, match="before the subject"):
        encode_prompt_set(templates, causal_lm, answer_first="error")
    _, _, masked = encode_prompt_set(templates, masked_lm)
    assert (masked.reordered, masked.duplicates, masked.kept) == (0, 1, 3)  # WordPiece splits "." alike
    with pytest.raises(SoftpromptError, match="none of the 1 templates"):
        encode_prompt_set(["[Y] native [X] ."], causal_lm, answer_first="skip")


def test_every_prompt_scores_the_same_answer_token(causal_lm):
    """Templates with and without a space before [Y] must not mix probabilities of different tokens."""
    mixture = build(causal_lm, ["[X] is [Y] .", "[X] ,[Y] ."])
    item = encode_mixture_data(RELATION, mixture).splits["test"][0]
    assert len({row.answer_id for row in item.rows}) == 1


def test_em_and_gradient_reach_the_same_optimum():
    """Weights-only training of fixed prompts is a convex problem: gradient descent, EM and the closed-form
    EM on the likelihood matrix must all find the same mixture weights. Each prompt is first specialised on
    one of the two answers, so that the optimum lies inside the simplex, away from its corners."""
    lm = tiny_causal(seed=3)
    engine = Engine(lm)
    mixture = build(lm, ["[X] is [Y] .", "[X] speaks [Y] ."], init="random", seed=1)
    for component, answer in zip(mixture.components, ["euro", "yen"], strict=True):
        examples = [component.encoder.encode(f.subject, f.answer) for f in RELATION.splits["train"]
                    if f.answer == answer]
        train_prompt(engine, component, examples, examples, TrainConfig(lr=0.1, batch_size=8, max_epochs=5),
                     progress=False)
    specialised = {k: v.clone() for k, v in mixture.state_dict().items()}
    train = encode_mixture_data(RELATION, mixture).splits["train"]
    with torch.inference_mode():
        closed = fit_weights(score(engine, mixture, train).logprobs, iterations=5000).tolist()
    assert 0.2 < closed[0] < 0.8
    # Several M steps per E step, so EM's posteriors go stale within an epoch and EM is not simply gradient
    # descent in disguise (with one step per E step the two gradients coincide).
    config = TrainConfig(lr=0.1, batch_size=4, max_epochs=20, patience=20)
    losses = {}
    for method in ("gradient", "em"):
        mixture.load_state_dict(specialised)
        objective = MixtureObjective(engine, mixture.set_tune("weights"), train, train, weights_lr=0.1)
        (EM if method == "em" else GradientDescent)(config, progress=False).fit(objective)
        assert mixture.weights() == pytest.approx(closed, abs=0.01)
        losses[method] = -float(log_likelihoods(engine, mixture, train).mean())
    assert losses["em"] == pytest.approx(losses["gradient"], abs=1e-4)


def test_fit_weights_on_hand_made_likelihoods():
    tiny = math.log(1e-30)
    # Each prompt alone explains one of the two facts: the optimum shares the weight equally.
    assert fit_weights(torch.tensor([[0.0, tiny], [tiny, 0.0]])).tolist() == pytest.approx([0.5, 0.5])
    # One prompt explains both facts better: all weight goes to it.
    assert fit_weights(torch.tensor([[0.0, math.log(0.5)], [0.0, math.log(0.5)]]), 2000).tolist() == pytest.approx(
        [1.0, 0.0], abs=1e-3)


def test_effective_number_of_prompts():
    assert effective_prompts([0.25] * 4) == pytest.approx(4.0)
    assert effective_prompts([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_prompts([0.5, 0.5, 0.0]) == pytest.approx(2.0)


def test_posteriors_are_distributions(causal_lm):
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random")
    q = posteriors(engine, mixture, encode_mixture_data(RELATION, mixture).splits["train"])
    assert q.shape == (24, 3)
    assert torch.allclose(q.sum(-1), torch.ones(24), atol=1e-6)


@pytest.mark.parametrize("tune", ["weights", "prompts", "both"])
def test_tune_changes_only_what_it_names(causal_lm, tune):
    engine = Engine(causal_lm)
    mixture = build(causal_lm).set_tune(tune)
    before = mixture.vectors().detach().clone()
    data = encode_mixture_data(RELATION, mixture)
    model_state = {k: v.clone() for k, v in causal_lm.model.state_dict().items()}
    GradientDescent(TrainConfig(lr=0.05, batch_size=8, max_epochs=2, patience=5), progress=False).fit(
        MixtureObjective(engine, mixture, data.splits["train"], data.splits["train"]))
    vectors_changed = not torch.equal(mixture.vectors(), before)
    weights_changed = mixture.weights() != pytest.approx([1 / 3] * 3, abs=1e-7)
    assert vectors_changed == (tune != "weights")
    assert weights_changed == (tune != "prompts")
    assert all(torch.equal(v, model_state[k]) for k, v in causal_lm.model.state_dict().items())


def test_training_a_mixture_lowers_dev_loss(causal_lm):
    engine = Engine(causal_lm)
    mixture = build(causal_lm, data_dependent=True)
    data = encode_mixture_data(RELATION, mixture)
    result = EM(TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=3), progress=False).fit(
        MixtureObjective(engine, mixture, data.splits["train"], data.splits["dev"]))
    assert result.best_dev_loss < result.history[0]["dev_loss"]
    assert mixture.temperature != 1.0  # log T is learned too


def test_subset_keeps_each_prompts_parameters_and_scores(causal_lm):
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random")
    items = encode_mixture_data(RELATION, mixture).splits["test"]
    with torch.inference_mode():
        full = score(engine, mixture, items).logprobs
        sub = mixture.subset([0, 2])
        part = score(engine, sub, encode_mixture_data(RELATION, sub).splits["test"]).logprobs
    assert torch.allclose(part, full[:, [0, 2]], atol=1e-5)
    assert sub.sources == [mixture.sources[0], mixture.sources[2]]
    chosen, weights = select_prompts(engine, mixture, items, k=3)
    assert chosen == [0, 1, 2] and len(weights) == 3
    chosen, weights = select_prompts(engine, mixture, items, k=1)
    assert chosen == [max(range(3), key=lambda t: weights[t])]
    greedy, _ = select_prompts(engine, mixture, items, k=2, selection="greedy")
    with torch.inference_mode():
        assert greedy == greedy_selection(score(engine, mixture, items).logprobs, 2)


def test_greedy_selection_differs_from_weight_selection():
    # Prompt 0 is fair on every fact; prompts 1 and 2 are each excellent on one half and hopeless on the other.
    # The full mixture's EM weights go to the two specialists, so weight selection with k=1 keeps a specialist;
    # forward selection starts from the best single prompt, then adds the specialist that helps most.
    fair, great, hopeless = math.log(0.3), math.log(0.9), math.log(0.001)
    gold = torch.tensor([[fair, great, hopeless]] * 5 + [[fair, hopeless, great]] * 5)
    weights = fit_weights(gold)
    assert float(weights[0]) < 0.01 and float(weights[1]) == pytest.approx(float(weights[2]), abs=1e-6)
    assert greedy_selection(gold, 1) == [0]
    assert greedy_selection(gold, 2) in ([0, 1], [0, 2])
    assert greedy_selection(gold, 3) == [0, 1, 2]
    with pytest.raises(SoftpromptError, match="--select"):
        MixtureSettings("x", ("[X] is [Y] .",), selection="best")


def test_top_k_equal_to_k_is_the_full_mixture(causal_lm, tmp_path):
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=2, patience=2)
    runs = {}
    for top_k in (None, 3):
        settings = MixtureSettings("test", tuple(TEMPLATES), top_k=top_k)
        runs[top_k] = run_mixture(causal_lm, RELATION, settings, tmp_path / str(top_k), config, progress=False)
    assert runs[None]["test"] == runs[3]["test"]
    assert (tmp_path / "None" / "predictions.jsonl").read_text() == (tmp_path / "3" / "predictions.jsonl").read_text()
    # Pruning after a warm-up is no pruning either when k = K: the run is the full mixture's, epoch for epoch.
    warm = run_mixture(causal_lm, RELATION, MixtureSettings("test", tuple(TEMPLATES), top_k=3, prune_after=1),
                       tmp_path / "warm", config, progress=False)
    assert warm["test"] == runs[None]["test"] and warm["history"] == runs[None]["history"]


def _mixture_gradients(mixture: MixturePrompt, scores) -> tuple[float, dict[str, torch.Tensor]]:
    mixture.zero_grad()
    loss = -(scores.log_weights + scores.logprobs).logsumexp(-1).sum()
    loss.backward()
    return loss.item(), {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                         for n, p in mixture.named_parameters()}


@pytest.mark.parametrize(("mode", "data_dependent", "k", "m"),
                         [("soft", False, 1, None), ("deep", True, 1, None), ("soft", False, None, 1),
                          ("deep", True, 1, 2)])
def test_sparse_posteriors_keep_the_objective_and_the_weights_gradient(causal_lm, mode, data_dependent, k, m):
    """sparse_score has score's values; with k = K (or m = n) it has its gradients too; with fewer the mixture
    weights' (and log T's) gradients are unchanged and only the chosen prompts' vectors differ."""
    engine = Engine(causal_lm)
    mixture = build(causal_lm, mode=mode, init="random", seed=2, data_dependent=data_dependent)
    with torch.no_grad():
        mixture.weight_logits.copy_(torch.tensor([0.4, -0.7, 1.1]))
        for p in mixture.components.parameters():
            p.add_(0.05 * torch.randn_like(p))  # deep deltas start at zero; give them a gradient path of their own
    items = encode_mixture_data(RELATION, mixture).splits["train"][:6]
    full_loss, full = _mixture_gradients(mixture, score(engine, mixture, items))
    for every in (sparse_score(engine, mixture, items, 3), sparse_score(engine, mixture, items, None, 6)):
        same_loss, same = _mixture_gradients(mixture, every)
        assert same_loss == pytest.approx(full_loss, rel=1e-6)
        for name in full:
            assert torch.allclose(same[name], full[name], atol=1e-6, rtol=1e-4), name
    sparse_loss, sparse = _mixture_gradients(mixture, sparse_score(engine, mixture, items, k, m))
    # The result does not depend on how many sequences share a forward pass.
    _, small_passes = _mixture_gradients(mixture, sparse_score(engine, mixture, items, k, m, max_rows=2))
    for name in sparse:
        assert torch.allclose(small_passes[name], sparse[name], atol=1e-6, rtol=1e-4), name
    assert sparse_loss == pytest.approx(full_loss, rel=1e-6)
    weights = ["weight_logits"] + (["log_temperature"] if data_dependent else [])
    for name in weights:
        assert torch.allclose(sparse[name], full[name], atol=1e-6, rtol=1e-4), name
    vectors = [n for n in full if n not in weights]
    assert any(not torch.allclose(sparse[n], full[n], atol=1e-6) for n in vectors)


def test_sparse_posteriors_train_only_each_facts_most_probable_prompt(causal_lm):
    """k = 1, one fact: the prompt of highest posterior gets the full mixture's gradient, the others none."""
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random", seed=5)
    for item in encode_mixture_data(RELATION, mixture).splits["train"][:4]:
        _, full = _mixture_gradients(mixture, score(engine, mixture, [item]))
        _, sparse = _mixture_gradients(mixture, sparse_score(engine, mixture, [item], 1))
        with torch.no_grad():
            best = int(posteriors(engine, mixture, [item])[0].argmax())
        for t in range(len(mixture)):
            for name, _ in mixture.components[t].named_parameters():
                key = f"components.{t}.{name}"
                expected = full[key] if t == best else torch.zeros_like(full[key])
                assert torch.allclose(sparse[key], expected, atol=1e-7, rtol=1e-5), (t, name)


def test_sparse_posteriors_train_each_prompt_on_its_most_probable_fact(causal_lm):
    """m = 1, no k: each prompt gets exactly the full mixture's gradient from the one fact of the batch whose
    posterior it has highest, nothing from the others."""
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random", seed=7)
    with torch.no_grad():
        mixture.weight_logits.copy_(torch.tensor([0.9, -0.3, 0.2]))
    items = encode_mixture_data(RELATION, mixture).splits["train"][:5]
    with torch.no_grad():
        best = posteriors(engine, mixture, items).argmax(0).tolist()
    assert len(set(best)) > 1  # the prompts' picks differ, so the test tells them apart
    _, sparse = _mixture_gradients(mixture, sparse_score(engine, mixture, items, None, 1))
    for t, i in enumerate(best):
        _, alone = _mixture_gradients(mixture, score(engine, mixture, [items[i]]))
        for name, _ in mixture.components[t].named_parameters():
            key = f"components.{t}.{name}"
            assert torch.allclose(sparse[key], alone[key], atol=1e-7, rtol=1e-5), (t, name)


def test_sampled_sparse_posteriors_with_one_item_give_the_full_gradient(causal_lm):
    """One item: each prompt's only draw is that item, weighted by its whole posterior, so the estimate is
    the full mixture's gradient exactly, for every prompt; with k = 1 the top prompt's pair stays exact."""
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random", seed=3)
    with torch.no_grad():
        mixture.weight_logits.copy_(torch.tensor([0.5, -1.0, 0.3]))
    for item in encode_mixture_data(RELATION, mixture).splits["train"][:3]:
        _, full = _mixture_gradients(mixture, score(engine, mixture, [item]))
        for k in (None, 1):
            _, drawn = _mixture_gradients(mixture, sparse_score(engine, mixture, [item], k, 2, draw="sample",
                                                                generator=torch.Generator().manual_seed(0)))
            for name in full:
                assert torch.allclose(drawn[name], full[name], atol=1e-7, rtol=1e-5), (k, name)


def test_sampled_sparse_posteriors_are_unbiased(causal_lm):
    """Averaged over draws, each prompt's vector gradient is the full mixture's, though single draws differ
    (one fact per prompt, no k: every prompt's gradient is sampled)."""
    engine = Engine(causal_lm)
    mixture = build(causal_lm, init="random", seed=4)
    with torch.no_grad():
        mixture.weight_logits.copy_(torch.tensor([0.2, -0.4, 0.6]))
    items = encode_mixture_data(RELATION, mixture).splits["train"][:6]
    _, full = _mixture_gradients(mixture, score(engine, mixture, items))
    vectors = [n for n in full if n.startswith("components.")]
    generator = torch.Generator().manual_seed(1)
    draws = [_mixture_gradients(mixture, sparse_score(engine, mixture, items, None, 1, draw="sample",
                                                      generator=generator))[1] for _ in range(400)]

    def error(grads: dict[str, torch.Tensor]) -> float:
        return max(float((grads[n] - full[n]).norm() / full[n].norm()) for n in vectors)

    mean = {n: torch.stack([d[n] for d in draws]).mean(0) for n in vectors}
    assert error(mean) < 0.03  # 0.009 with this seed; 400 draws shrink a single draw's error about 20-fold
    assert error(draws[0]) > 5 * error(mean)
    for d in draws[:5]:  # the weights' gradient is exact in every draw
        assert torch.allclose(d["weight_logits"], full["weight_logits"], atol=1e-6, rtol=1e-4)


def test_sparse_posteriors_train_a_mixture(causal_lm, tmp_path):
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=2, patience=2)
    full = run_mixture(causal_lm, RELATION, MixtureSettings("test", tuple(TEMPLATES)), tmp_path / "full", config,
                       progress=False)
    every = run_mixture(causal_lm, RELATION, MixtureSettings("test", tuple(TEMPLATES), sparse_k=3),
                        tmp_path / "k3", config, progress=False)
    assert every["test"] == full["test"] and every["history"] == full["history"]  # k = K: the full mixture
    sparse = run_mixture(causal_lm, RELATION, MixtureSettings("test", tuple(TEMPLATES), sparse_k=1),
                         tmp_path / "k1", config, progress=False)
    assert sparse["best_dev_loss"] < sparse["history"][0]["dev_loss"]
    assert sparse["history"] != full["history"]
    assert json.loads((tmp_path / "k1" / "config.json").read_text())["mixture"]["sparse_k"] == 1
    assert not {"sparse_k", "sparse_m"} & set(json.loads((tmp_path / "full" / "config.json").read_text())["mixture"])
    both = run_mixture(causal_lm, RELATION, MixtureSettings("test", tuple(TEMPLATES), sparse_k=1, sparse_m=1),
                       tmp_path / "k1m1", config, progress=False)
    assert both["best_dev_loss"] < both["history"][0]["dev_loss"]
    assert both["history"] not in (full["history"], sparse["history"])
    assert json.loads((tmp_path / "k1m1" / "config.json").read_text())["mixture"]["sparse_m"] == 1
    settings = MixtureSettings("test", tuple(TEMPLATES), sparse_k=1, sparse_m=1, sparse_draw="sample")
    drawn = run_mixture(causal_lm, RELATION, settings, tmp_path / "k1m1s", config, progress=False)
    assert drawn["best_dev_loss"] < drawn["history"][0]["dev_loss"]
    assert drawn["history"] != both["history"]
    assert json.loads((tmp_path / "k1m1s" / "config.json").read_text())["mixture"]["sparse_draw"] == "sample"
    again = run_mixture(causal_lm, RELATION, settings, tmp_path / "again", config, progress=False)
    assert again["history"] == drawn["history"]  # the draws are seeded


def test_pruning_after_warmup_trains_all_prompts_then_the_chosen_ones(causal_lm, tmp_path):
    """prune_after=1 is exactly: one epoch of the whole mixture, select_prompts on its tuned prompts, then the
    remaining epochs on the chosen subset (with fresh Adam state)."""
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=3)
    settings = MixtureSettings("test", tuple(TEMPLATES), top_k=2, prune_after=1)
    doc = run_mixture(causal_lm, RELATION, settings, tmp_path / "run", config, progress=False)

    engine = Engine(causal_lm)
    mixture = build(causal_lm)
    data = encode_mixture_data(RELATION, mixture)
    warmed = GradientDescent(TrainConfig(lr=0.05, batch_size=8, max_epochs=1, patience=3), progress=False).fit(
        MixtureObjective(engine, mixture, data.splits["train"], data.splits["dev"]))
    chosen, fitted = select_prompts(engine, mixture, data.splits["dev"], 2)
    assert fitted != pytest.approx(select_prompts(engine, build(causal_lm), data.splits["dev"], 2)[1])  # tuned
    pruned = mixture.subset(chosen)
    data = encode_mixture_data(RELATION, pruned)
    rest = GradientDescent(TrainConfig(lr=0.05, batch_size=8, max_epochs=2, patience=3), progress=False).fit(
        MixtureObjective(engine, pruned, data.splits["train"], data.splits["dev"]))
    assert doc["num_prompts"] == 2 and doc["selection_weights"] == pytest.approx(fitted)
    assert doc["weights"] == pytest.approx(pruned.weights())
    assert [h["epoch"] for h in doc["history"]] == [0, 1, 1, 2, 3]
    assert doc["history"][1]["dev_loss"] == pytest.approx(warmed.history[1]["dev_loss"])
    assert doc["history"][2]["pruned_dev_loss"] == pytest.approx(rest.history[0]["dev_loss"])
    assert doc["best_epoch"] == rest.best_epoch + 1
    ranks = predict_mixture(engine, pruned, data.splits["test"]).ranks.tolist()
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert ranks == [row["rank"] for row in rows]
    with pytest.raises(SoftpromptError, match="leaves no epoch"):
        run_mixture(causal_lm, RELATION, settings, tmp_path / "short", replace(config, max_epochs=1), progress=False)


def test_run_mixture_writes_a_complete_run_and_the_prompt_round_trips(causal_lm, tmp_path):
    settings = MixtureSettings("test", ("[Y] native [X] .", *TEMPLATES), mode="deep", top_k=2, method="em",
                               data_dependent=True)
    doc = run_mixture(causal_lm, RELATION, settings, tmp_path, TrainConfig(lr=0.05, batch_size=8, max_epochs=2),
                      progress=False)
    assert doc["num_prompts"] == 2 and doc["prompt_set"]["reordered"] == 1
    assert sum(doc["weights"]) == pytest.approx(1.0)
    assert 1.0 <= doc["effective_prompts"] <= 2.0
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "metrics.json", "predictions.jsonl",
                                                   "prompt.safetensors", "checkpoint.safetensors"}
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == doc["test"]["n"] == 16
    assert all(sum(p for _, p in row["prompt_posterior"]) == pytest.approx(1.0, abs=1e-4) for row in rows)
    loaded = load_prompt(tmp_path / "prompt.safetensors", causal_lm)
    assert isinstance(loaded, MixturePrompt) and loaded.component_kind == "deep" and loaded.data_dependent
    assert loaded.sources == doc["sources"] and loaded.weights() == pytest.approx(doc["weights"])
    engine = Engine(causal_lm)
    items = encode_mixture_data(RELATION, loaded).splits["test"]
    ranks = predict_mixture(engine, loaded, items).ranks.tolist()
    assert ranks == [row["rank"] for row in rows]


def checkpoint_seconds(path) -> float:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["softprompt.checkpoint"])["state"]["seconds"]


def test_a_run_pruned_after_warmup_resumes_to_the_same_result(causal_lm, tmp_path, monkeypatch):
    """Interrupted in its pruned phase, the run resumes both checkpoints (warm-up done, pruned phase part way)
    and ends exactly where an uninterrupted run does."""
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=3)
    settings = MixtureSettings("test", tuple(TEMPLATES), top_k=2, prune_after=1)
    straight = run_mixture(causal_lm, RELATION, settings, tmp_path / "straight", config, progress=False)
    real, calls = MixtureObjective.dev_loss, {"n": 0}

    def crash_in_the_last_epoch(self):
        calls["n"] += 1  # warm-up: initial and epoch 1; pruned phase: initial, epoch 2, epoch 3
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(MixtureObjective, "dev_loss", crash_in_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_mixture(causal_lm, RELATION, settings, tmp_path / "run", config, progress=False)
    assert (tmp_path / "run" / "warmup.safetensors").is_file() and not (tmp_path / "run" / "metrics.json").exists()
    checkpointed = sum(checkpoint_seconds(tmp_path / "run" / name) for name in ("warmup.safetensors",
                                                                              "checkpoint.safetensors"))
    started = time.perf_counter()
    resumed = run_mixture(causal_lm, RELATION, settings, tmp_path / "run", config, resume=True, progress=False)
    this_call = time.perf_counter() - started
    assert calls["n"] == 6  # only the last epoch was trained again
    # The run's time counts the interrupted call's checkpointed training as well as the resuming call.
    assert checkpointed > 0 and checkpointed + 0.5 * this_call < resumed["seconds"]["total"] <= checkpointed + this_call
    assert resumed["test"] == straight["test"] and resumed["history"] == straight["history"]
    assert resumed["weights"] == straight["weights"]


def test_mixture_training_resumes_to_the_same_result(causal_lm, tmp_path):
    engine = Engine(causal_lm)
    config = TrainConfig(lr=0.05, batch_size=8, max_epochs=3, patience=3)

    def objective(mixture, crash_after=None):
        data = encode_mixture_data(RELATION, mixture)
        obj = MixtureObjective(engine, mixture, data.splits["train"], data.splits["dev"])
        if crash_after is not None:
            calls = {"n": 0}
            real = obj.dev_loss

            def dev_loss():
                calls["n"] += 1
                if calls["n"] > crash_after:
                    raise KeyboardInterrupt
                return real()

            obj.dev_loss = dev_loss
        return obj

    straight = build(causal_lm, data_dependent=True)
    EM(config, progress=False).fit(objective(straight))
    interrupted = build(causal_lm, data_dependent=True)
    with pytest.raises(KeyboardInterrupt):
        EM(config, progress=False).fit(objective(interrupted, crash_after=2), tmp_path / "ck.st")
    resumed = build(causal_lm, data_dependent=True)
    EM(config, progress=False).fit(objective(resumed), tmp_path / "ck.st", resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_settings_are_validated():
    with pytest.raises(SoftpromptError, match="--method"):
        MixtureSettings("x", ("[X] is [Y] .",), method="sgd")
    with pytest.raises(SoftpromptError, match="--top-k"):
        MixtureSettings("x", ("[X] is [Y] .",), top_k=0)
    with pytest.raises(SoftpromptError, match="no vectors to tune"):
        MixtureSettings("x", ("[X] is [Y] .",), mode="hard", tune="prompts")
    with pytest.raises(SoftpromptError, match="give --top-k as well"):
        MixtureSettings("x", ("[X] is [Y] .",), prune_after=1)
    with pytest.raises(SoftpromptError, match="--prune-after must be 0 or more"):
        MixtureSettings("x", ("[X] is [Y] .",), top_k=1, prune_after=-1)
    for flag in ("sparse_k", "sparse_m"):
        option = "--" + flag.replace("_", "-")
        with pytest.raises(SoftpromptError, match=f"{option} must be at least 1"):
            MixtureSettings("x", ("[X] is [Y] .",), **{flag: 0})
        for kwargs in ({"mode": "hard"}, {"tune": "weights"}, {"tune": "none"}):
            with pytest.raises(SoftpromptError, match=f"{option} chooses which prompts' vectors"):
                MixtureSettings("x", ("[X] is [Y] .",), **{flag: 1}, **kwargs)
    with pytest.raises(SoftpromptError, match="give --sparse-m as well"):
        MixtureSettings("x", ("[X] is [Y] .",), sparse_k=1, sparse_draw="sample")
    with pytest.raises(SoftpromptError, match="use --method gradient"):
        MixtureSettings("x", ("[X] is [Y] .",), sparse_m=1, sparse_draw="sample", method="em")
    with pytest.raises(SoftpromptError, match="unknown --sparse-draw 'random'"):
        MixtureSettings("x", ("[X] is [Y] .",), sparse_m=1, sparse_draw="random")
    assert MixtureSettings("x", ("[X] is [Y] .",), mode="hard").tune == "weights"


def test_reading_order_places_the_blanks(causal_lm, masked_lm):
    causal = TemplateEncoder("the capital of [X] is [Y] .", causal_lm)
    n_before = len(causal_lm.tokenizer("the capital of", add_special_tokens=False)["input_ids"])
    order = causal.reading_order
    assert order[n_before] == "X" and order[-1] == "Y" and order.count("Y") == 1
    assert [i for i in order if isinstance(i, int)] == list(range(len(causal.prompt_ids)))
    masked = TemplateEncoder("[Y] is the capital of [X] .", masked_lm).reading_order
    assert masked[0] == "Y" and masked[-2] == "X"  # the final "." follows [X]


def test_mixture_weights_have_their_own_learning_rate(causal_lm):
    engine = Engine(causal_lm)
    mixture = build(causal_lm, data_dependent=True)
    items = encode_mixture_data(RELATION, mixture).splits["train"]
    groups = MixtureObjective(engine, mixture, items, items, weights_lr=0.2).param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 0.2]
    assert groups[1]["params"] == [mixture.weight_logits, mixture.log_temperature]
    assert sum(p.numel() for p in groups[0]["params"]) == mixture.vectors().numel()
    mixture.set_tune("prompts")
    assert MixtureObjective(engine, mixture, items, items).param_groups(1e-3)[1]["params"] == []
    with pytest.raises(SoftpromptError, match="--weights-lr"):
        MixtureSettings("x", ("[X] is [Y] .",), weights_lr=0.0)
