"""Interpretation metrics on tiny models: readings, faithfulness, scrutability, similarity, transfer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal

from softprompt.analysis import (
    Analysis,
    AnalysisConfig,
    analyse,
    cosine_flat,
    cosine_mean,
    distance_differential,
    faithfulness,
    frobenius,
    load_runs,
    mean_activations,
    nearest_tokens,
    neuron_overlap,
    output_differential,
    prompt_vectors,
    spearman,
    stochasticity,
    token_perplexity,
    tsne_map,
)
from softprompt.analysis.neurons import ffn_output_projections
from softprompt.analysis.readings import vocabulary
from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers import TrainConfig
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks import TaskSettings, predict, run_task
from softprompt.tasks.run import task_metrics
from softprompt.tasks.sampling import stratified_sample
from softprompt.tasks.task import Task, task_from_dict

COUNTRIES = ["France", "Germany", "Japan", "Italy", "Spain", "Peru", "Chile", "Egypt", "Kenya"]


def capital_task() -> Task:
    return task_from_dict({"name": "capital", "description": "the capital of a country",
                           "template": "the capital of {{c}} is", "target": "{{label}}",
                           "labels": {"a": "Paris", "b": "Berlin"}}, "capital.yaml")


def language_task() -> Task:
    # Multi-token choices per example: scored as one row per choice.
    return task_from_dict({"name": "language", "description": "the language of a country",
                           "template": "in {{c}} one speaks", "target": "{{label}}",
                           "choices": ["{{x}}", "{{y}}"]}, "language.yaml")


def examples(task: Task, n: int = 12) -> list:
    if task.name == "capital":
        return [task.render({"c": c, "label": "ab"[i % 2]}) for i, c in enumerate((COUNTRIES * 3)[:n])]
    return [task.render({"c": c, "x": "French", "y": "German Spanish", "label": i % 2})
            for i, c in enumerate((COUNTRIES * 3)[:n])]


def token_prompt(lm: LanguageModel, ids: list[int], task: str = "capital") -> TaskPrompt:
    prompt = TaskPrompt(lm, "prefix", len(ids), init="random", task=task)
    with torch.no_grad():
        prompt.weight.copy_(vocabulary(lm)[torch.tensor(ids)])
    return prompt.requires_grad_(False)


# --- readings -------------------------------------------------------------------------------------------


def test_nearest_token_of_a_vocabulary_embedding_is_itself(causal_lm: LanguageModel) -> None:
    ids = [5, 17, 40, 99]
    vectors = vocabulary(causal_lm)[torch.tensor(ids)]
    euclid = nearest_tokens(causal_lm, vectors, k=3, metric="euclidean")
    assert euclid.ids[:, 0].tolist() == ids
    assert euclid.scores[:, 0].tolist() == [0.0] * 4
    assert (euclid.scores[:, 1] > 0).all() and (euclid.scores[:, 1:].diff(dim=1) >= 0).all()
    cosine = nearest_tokens(causal_lm, vectors, k=3, metric="cosine")
    assert cosine.ids[:, 0].tolist() == ids
    assert torch.allclose(cosine.scores[:, 0], torch.ones(4))
    dot = nearest_tokens(causal_lm, vectors, k=2, metric="dot")
    assert torch.all(dot.scores <= 1) and torch.all(dot.scores[:, 0] >= dot.scores[:, 1])
    with pytest.raises(SoftpromptError, match="unknown nearest-token metric"):
        nearest_tokens(causal_lm, vectors, metric="manhattan")


def test_nearest_tokens_match_brute_force(causal_lm: LanguageModel) -> None:
    torch.manual_seed(0)
    vectors = torch.randn(3, causal_lm.hidden_size) * 0.05
    emb = vocabulary(causal_lm)
    found = nearest_tokens(causal_lm, vectors, k=2, metric="euclidean")
    for row, v in enumerate(vectors):
        distances = [float((e - v).norm()) for e in emb]
        best = sorted(range(len(emb)), key=distances.__getitem__)[:2]
        assert found.ids[row].tolist() == best
        assert found.scores[row].tolist() == pytest.approx([distances[i] for i in best], abs=1e-6)
    expected = sum(min(float(((e - v) ** 2).sum()) for e in emb) for v in vectors) / 3
    assert distance_differential(causal_lm, vectors) == pytest.approx(expected, rel=1e-5)


# --- faithfulness and scrutability -------------------------------------------------------------------------


@pytest.mark.parametrize("task_fn", [capital_task, language_task])
def test_a_prompt_of_token_embeddings_is_perfectly_faithful(causal_lm: LanguageModel, task_fn) -> None:
    task = task_fn()
    prompt = token_prompt(causal_lm, [12, 30, 7], task.name)
    f = faithfulness(Engine(causal_lm), prompt, task, examples(task), reference=causal_lm)
    assert f.tokens == [12, 30, 7]
    assert (f.distance, f.output, f.performance) == (0.0, 0.0, 0.0)
    assert f.cosine_distance == pytest.approx(0.0, abs=1e-12)  # 1 − cos rounds
    assert f.top1_agreement == 1.0 and f.prediction_agreement == 1.0
    assert f.perplexity == pytest.approx(token_perplexity(causal_lm, [12, 30, 7]))


def test_deep_prompts_are_read_at_layer_0_and_lose_their_deeper_deltas(causal_lm: LanguageModel) -> None:
    task, engine = capital_task(), Engine(causal_lm)
    deep = TaskPrompt(causal_lm, "prefix", 3, tuning="deep", init="random", task="capital").requires_grad_(False)
    with torch.no_grad():
        deep.weight.copy_(vocabulary(causal_lm)[torch.tensor([12, 30, 7])])
        deep.delta[1:].normal_(0, 0.5)  # layer 0 untouched: the vectors still are token embeddings
    f = faithfulness(engine, deep, task, examples(task))
    assert f.tokens == [12, 30, 7] and f.distance == 0.0
    assert f.output > 0  # the unembedded (hard) prompt has no deep perturbations
    with torch.no_grad():
        deep.delta[0, 0].fill_(1.0)
    assert nearest_tokens(causal_lm, prompt_vectors(deep), 1, "euclidean").scores[0, 0] > 0


def test_masked_lm_faithfulness_of_token_embeddings_is_zero(masked_lm: LanguageModel) -> None:
    task = capital_task()
    prompt = token_prompt(masked_lm, [12, 30])
    f = faithfulness(Engine(masked_lm), prompt, task, examples(task, 6))
    assert (f.distance, f.output, f.performance, f.top1_agreement, f.perplexity) == (0.0, 0.0, 0.0, 1.0, None)


def test_output_differential_equals_full_forward_by_hand(causal_lm: LanguageModel) -> None:
    task = capital_task()
    exs = examples(task, 5)
    a = token_prompt(causal_lm, [12, 30])
    b = token_prompt(causal_lm, [12, 30])
    with torch.no_grad():
        b.weight.add_(0.3 * torch.randn_like(b.weight, generator=torch.Generator().manual_seed(1)))
    squared, agree = output_differential(Engine(causal_lm), a, b, task, exs)

    def last_logits(prompt: TaskPrompt, text: str) -> torch.Tensor:
        ids = torch.tensor([causal_lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        embeds = torch.cat([prompt.weight[None], causal_lm.embed(ids)], dim=1)
        return causal_lm.model(inputs_embeds=embeds).logits[0, -1]

    with torch.no_grad():
        pairs = [(last_logits(a, e.text), last_logits(b, e.text)) for e in exs]
    assert squared == pytest.approx(sum(float(((x - y) ** 2).mean()) for x, y in pairs) / 5, rel=1e-4)
    assert agree == sum(int(x.argmax() == y.argmax()) for x, y in pairs) / 5
    assert squared > 0


def test_perplexity_equals_brute_force(causal_lm: LanguageModel) -> None:
    ids = [12, 30, 7, 41]
    start = causal_lm.tokenizer.eos_token_id  # the tiny tokenizer has no BOS
    logp = 0.0
    with torch.no_grad():
        for i, token in enumerate(ids):
            context = torch.tensor([[start, *ids[:i]]])
            logp += float(causal_lm.model(input_ids=context).logits[0, -1].log_softmax(-1)[token])
    assert token_perplexity(causal_lm, ids) == pytest.approx(math.exp(-logp / 4), rel=1e-5)


def test_perplexity_under_another_tokenizer_rereads_the_text(causal_lm: LanguageModel, masked_lm: LanguageModel
                                                              ) -> None:
    wordpiece = masked_lm.tokenizer("the capital of France", add_special_tokens=False)["input_ids"]
    bpe = causal_lm.tokenizer(masked_lm.tokenizer.decode(wordpiece), add_special_tokens=False)["input_ids"]
    assert wordpiece != bpe
    assert token_perplexity(causal_lm, wordpiece, masked_lm) == pytest.approx(token_perplexity(causal_lm, bpe))
    same_vocab = tiny_causal(seed=3)  # same tokenizer: the ids are used as they are
    assert token_perplexity(same_vocab, bpe, causal_lm) == token_perplexity(same_vocab, bpe)
    with pytest.raises(SoftpromptError, match="causal reference"):
        token_perplexity(masked_lm, bpe)


# --- similarity, stochasticity, neurons ------------------------------------------------------------------------


def test_similarities_on_hand_computed_matrices() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert frobenius(a, b) == 1.0 and frobenius(a, a) == 0.0
    assert cosine_flat(a, b) == pytest.approx(2 / math.sqrt(6))
    assert cosine_mean(a, b) == pytest.approx(0.75 / math.sqrt(0.5 * 1.25))
    assert math.isnan(frobenius(a, torch.zeros(3, 2))) and math.isnan(cosine_flat(a, torch.zeros(3, 2)))
    assert neuron_overlap(torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([1, 0, 1, 0], dtype=torch.bool)
                          ) == pytest.approx(0.5)
    spread = stochasticity({"t": [a, b], "u": [torch.zeros(2, 2)]})["t"]
    assert spread.mean_norm == pytest.approx((math.sqrt(2) + math.sqrt(3)) / 2)
    assert spread.norm_variance == pytest.approx((math.sqrt(3) - math.sqrt(2)) ** 2 / 2)
    assert spread.total_variance == pytest.approx(0.25) and spread.within_distance == 1.0
    assert spread.between_distance == pytest.approx((math.sqrt(2) + math.sqrt(3)) / 2)
    rho, p = spearman([1, 2, 3, 4, 5], [2, 4, 5, 9, 10])
    assert rho == pytest.approx(1.0) and p < 0.05


def test_tsne_map_is_reproducible() -> None:
    prompts = [torch.randn(2, 4, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    first = tsne_map(prompts, seed=0)
    assert len(first) == 6 and all(len(p) == 2 for p in first)
    assert first == tsne_map(prompts, seed=0)
    with pytest.raises(SoftpromptError, match="one shape"):
        tsne_map([*prompts, torch.zeros(3, 4)])


def test_neuron_patterns(causal_lm: LanguageModel, masked_lm: LanguageModel) -> None:
    assert [type(m).__name__ for m in ffn_output_projections(causal_lm)] == ["Linear"] * 2
    assert all(m.out_features == 32 and m.in_features == 64 for m in ffn_output_projections(masked_lm))
    task, engine = capital_task(), Engine(causal_lm)
    prompt = token_prompt(causal_lm, [12, 30, 7])
    exs = examples(task, 9)
    at_prompt = mean_activations(engine, prompt, task, exs[:4])
    assert at_prompt.shape == (2, 3, 64)
    # A causal LM's prefix positions never see the input: the probes cannot change them.
    assert torch.allclose(at_prompt, mean_activations(engine, prompt, task, exs[4:9]), atol=1e-6)
    at_answer = mean_activations(engine, prompt, task, exs[:4], positions="answer")
    assert at_answer.shape == (2, 1, 64)
    assert not torch.allclose(at_answer, mean_activations(engine, prompt, task, exs[4:9], positions="answer"))
    pattern = at_prompt > 0
    assert neuron_overlap(pattern, pattern) == 1.0
    # The hooks are gone afterwards: a plain forward pass is unchanged and records nothing.
    assert all(not m._forward_pre_hooks for m in ffn_output_projections(causal_lm))
    # The recorded activation is the down projection's input, act(gate(x)) * up(x), here at layer 0.
    mlp = causal_lm.model.model.layers[0].mlp
    captured = {}
    handle = mlp.down_proj.register_forward_pre_hook(lambda _m, i: captured.setdefault("x", i[0]))
    try:
        with torch.no_grad():
            causal_lm.model(inputs_embeds=torch.cat([prompt.weight[None], causal_lm.embed(torch.tensor([[5, 6]]))], 1))
    finally:
        handle.remove()
    assert torch.allclose(captured["x"][0, :3], at_prompt[0], atol=1e-5)


# --- the analysis pipeline and transfer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[LanguageModel, Path]:
    lm = tiny_causal()
    root = tmp_path_factory.mktemp("runs")
    for task in (capital_task(), language_task()):
        exs = examples(task, 24)
        for seed in (0, 1):
            settings = TaskSettings(layout="prefix", length=3, init="random", dev_size=6)
            config = TrainConfig(lr=0.05, batch_size=6, max_epochs=1, patience=1, seed=seed)
            run_task(lm, task, settings, config, root / task.name / f"seed-{seed}", exs, exs[:10], progress=False)
    return lm, root


def test_analysis_writes_every_part_and_transfer_is_consistent(trained_runs, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lm, root = trained_runs
    runs = load_runs([root], lm)
    assert [r.label for r in runs] == ["capital/seed-0", "capital/seed-1", "language/seed-0", "language/seed-1"]
    tasks = {"capital": capital_task(), "language": language_task()}
    exs = {name: examples(task, 10) for name, task in tasks.items()}
    config = AnalysisConfig(eval_limit=8, probe_size=3)
    analysis = Analysis(lm, runs, tasks, exs, config, reference=lm)
    result = analyse(analysis, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["runs"] == json.loads(
        json.dumps(result["runs"]))
    assert set(result) >= {"readings", "faithfulness", "stochasticity", "similarity", "transfer"}
    assert len(result["readings"]["capital/seed-0"]["cosine"]["tokens"]) == 3
    for r in runs:
        assert result["readings"][r.label]["unembedded"] == result["faithfulness"][r.label]["text"]
    transfer = result["transfer"]
    assert len(transfer["scores"]) == 4 and all(len(row) == 2 for row in transfer["scores"])
    for task in tasks:
        assert transfer["change_vs_own"][task][task] == 0.0
        own = [result["faithfulness"][r.label]["soft_score"] for r in runs if r.task == task]
        assert transfer["own"][task] == pytest.approx(sum(own) / len(own))
        # The 8 evaluation examples are the seeded stratified sample that task eval --eval-limit 8 draws.
        indices = stratified_sample([e.label for e in exs[task]], 8, 0)
        sample = analysis.eval_set(task)
        assert result["samples"][task]["indices"] == indices and sample == [exs[task][i] for i in indices]
        scores = predict(Engine(lm), None, tasks[task], sample, TaskSettings())
        no_prompt = task_metrics(tasks[task], scores, [e.label for e in sample])["accuracy"]
        assert transfer["no_prompt"][task] == no_prompt
    similarity = result["similarity"]["prompts"]
    for name, matrix in similarity.items():
        assert len(matrix) == 4
        diagonal = [matrix[i][i] for i in range(4)]
        assert diagonal == ([0.0] * 4 if name == "frobenius" else pytest.approx([1.0] * 4)), name
    assert {c["indicator"] for c in transfer["correlations"]} == set(similarity)
    assert all(c["points"] == 4 for c in transfer["correlations"])  # 4 prompts x 1 other task
    assert result["stochasticity"]["tsne"]["points"] and len(result["stochasticity"]["tasks"]) == 2

    # A second run reads every unit from the cache: nothing is evaluated again.
    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("recomputed a cached unit")

    monkeypatch.setattr("softprompt.analysis.pipeline.predict", fail)
    monkeypatch.setattr("softprompt.analysis.pipeline.faithfulness", fail)
    monkeypatch.setattr("softprompt.analysis.pipeline.mean_activations", fail)
    again = analyse(Analysis(lm, runs, tasks, exs, config, reference=lm), tmp_path / "out")
    assert again["transfer"]["scores"] == transfer["scores"]


def test_analysis_input_errors(trained_runs, tmp_path: Path) -> None:
    lm, root = trained_runs
    with pytest.raises(SoftpromptError, match="holds no prompt runs"):
        load_runs([tmp_path], lm)
    with pytest.raises(SoftpromptError, match="no task definition for language"):
        Analysis(lm, load_runs([root], lm), {"capital": capital_task()}, {})
    with pytest.raises(SoftpromptError, match="unknown analysis part"):
        AnalysisConfig(parts=("readings", "vibes"))


def test_mixture_readings_lead_with_cosine_and_mark_norm_driven_p_w_v():
    """One token with a huge embedding wins p(w | v) for vectors training never moved; cosine still reads each
    as its own word, and the p(w | v) reading is marked instead of being shown as drift."""
    from conftest import tiny_causal

    from softprompt.analysis.visualise import html_fragment, read_mixture
    from softprompt.prompts import MixturePrompt
    from softprompt.templates import TemplateEncoder

    lm = tiny_causal(seed=3)
    loud = lm.tokenizer.convert_tokens_to_ids("Mozart")
    with torch.no_grad():
        lm.embedding_matrix[loud] *= 60
    mixture = MixturePrompt([TemplateEncoder("the capital of [X] is [Y] .", lm, answer_space=True)], "soft")
    reading = read_mixture(mixture)[0]
    words = [t.original for t in reading.tokens]
    assert [t.nearest_cosine for t in reading.tokens] == words
    assert all(t.moved == 0 and t.nearest_dot == "Mozart" and t.misleading_dot for t in reading.tokens)
    with torch.no_grad():
        mixture.components[0].weight[0] = lm.embedding_matrix[loud] / 60  # really moved, to "Mozart"
    moved = read_mixture(mixture)[0].tokens[0]
    assert moved.moved > 0.05 and not moved.misleading_dot
    page = html_fragment(read_mixture(mixture))
    assert page.index("<th>cosine</th>") < page.index("<th>p(w|v)</th>") and "Mozart*" in page
