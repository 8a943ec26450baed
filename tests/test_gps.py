"""Genetic Prompt Search: the algorithm with stub objectives and mutators, the LM mutators on tiny models, the
task objective and the run directory."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import tiny_masked, tiny_seq2seq

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.gps import Candidate, GeneticPromptSearch, GPSConfig, check_prompt, clean_piece
from softprompt.optimizers.mutators import BackTranslation, Paraphrase, SpanInfill, nucleus
from softprompt.optimizers.search import Evaluation
from softprompt.prompts import load_prompt
from softprompt.tasks.gps import LayoutObjective, gps_dev_indices, initial_layouts, run_gps
from softprompt.tasks.run import TaskSettings, predict
from softprompt.tasks.task import task_from_dict

INITIAL = ("Say it.\n{input}", "Tell me the answer.\n{input}", "Options: {options}. Decide.\n{input}")


class WordScore:
    """A stub f_GPS: a prompt scores by how many of its words are "good", its loss by its length."""

    def __init__(self, initial: Sequence[str] = INITIAL, fail_at_call: int | None = None) -> None:
        self.initial = tuple(initial)
        self.calls = 0
        self.fail_at_call = fail_at_call

    def evaluate(self, texts: Sequence[str]) -> list[Evaluation]:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt
        return [Evaluation(min(1.0, t.split().count("good") / 4), float(len(t))) for t in texts]

    def prompt_of(self, text: str) -> str:
        return text


class Suffixes:
    """A deterministic stub g_GPS: appends words picked by the seed; records the parents' pieces it saw."""

    name = "suffixes"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        self.seen.append(text)
        words = ["good", "bad", "fine", "good", "odd"]
        return [f"{text} {words[(seed + i) % 5]}" for i in range(count)]


class Hostile:
    """A mutator whose rewrites would add or drop slots, or add soft markers, unless cleaned."""

    name = "hostile"

    def rewrite(self, text: str, count: int, seed: int) -> list[str]:
        return ["{input} twice", "no slot {options}", "[P*3] soft", "{unknown}", "", "  spaced   out  "][:count]


def search(mutators=None, **config) -> GeneticPromptSearch:
    return GeneticPromptSearch(mutators or [Suffixes()], GPSConfig(**config), progress=False)


def test_gps_keeps_k_survivors_a_monotone_best_and_returns_the_argmax_of_everything() -> None:
    mutator = Suffixes()
    gps = search([mutator], iterations=3, top_k=2, children=3)
    result = gps.fit(WordScore())
    # Each iteration breeds from exactly K parents: K pieces seen per iteration (one per parent).
    assert len(mutator.seen) == 3 * 2
    best = [h["dev_accuracy"] for h in result.history]
    assert best == sorted(best) and len(best) == 4  # G⁰ and three generations
    everything = gps.candidates
    top = max(everything, key=lambda c: (c.dev_accuracy, -c.dev_loss))
    assert result.prompt == top.text == gps.final[0].text
    assert len(gps.final) == 2
    # Every child names a parent of the previous generation and the mutator; G⁰ has none.
    by_text = {c.text: c for c in everything}
    for c in everything:
        if c.iteration == 0:
            assert c.parent is None and c.mutator is None
        else:
            assert by_text[c.parent].iteration == c.iteration - 1 and c.mutator == "suffixes"
    assert len({c.text for c in everything}) == len(everything)  # nothing scored twice


def test_survivors_break_ties_by_loss_then_by_age() -> None:
    gps = search(top_k=2)
    group = [Candidate("a {input}", 0, dev_accuracy=0.5, dev_loss=2.0), Candidate("b {input}", 1, dev_accuracy=0.5,
             dev_loss=1.0), Candidate("c {input}", 1, dev_accuracy=0.5, dev_loss=1.0)]
    assert [c.text for c in gps.survivors(group)] == ["b {input}", "c {input}"]


def test_mutated_prompts_never_lose_or_gain_slots() -> None:
    gps = search([Hostile()], iterations=1, top_k=3, children=6)
    gps.fit(WordScore())
    children = [c.text for c in gps.candidates if c.iteration == 1]
    assert children  # the one clean rewrite per parent piece survives
    for text in children:
        assert check_prompt(text) == text
        assert "spaced out" in text and "soft" not in text
    # A rewritten piece keeps the whitespace around it that held the layout together.
    assert clean_piece("  new   words ", "\nOptions: ") == "\nnew words "
    assert clean_piece("has {braces}", "old") is None and clean_piece("[P] marker", "old") is None


@pytest.mark.parametrize("text, message", [
    ("no slot", "must contain the input slot {input} exactly once"),
    ("{input} {input}", "must contain the input slot {input} exactly once"),
    ("{input} {label}", "has unknown slot(s) label"),
    ("[P*2] {input}", "has a [P] marker"),
])
def test_initial_prompts_are_checked(text: str, message: str) -> None:
    with pytest.raises(SoftpromptError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        search().fit(WordScore([text]))


def test_gps_resumed_after_an_interruption_equals_an_uninterrupted_search(tmp_path: Path) -> None:
    whole = search(iterations=3, top_k=2, children=2)
    expected = whole.fit(WordScore(), tmp_path / "a.safetensors")
    broken = search(iterations=3, top_k=2, children=2)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(WordScore(fail_at_call=3), tmp_path / "b.safetensors")  # dies scoring generation 2
    resumed = search(iterations=3, top_k=2, children=2)
    result = resumed.fit(WordScore(), tmp_path / "b.safetensors", resume=True)
    assert resumed.lineage() == whole.lineage()
    assert result.prompt == expected.prompt
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in result.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in expected.history]
    with pytest.raises(SoftpromptError, match="was written with search settings"):
        search(iterations=3, top_k=3, children=2).fit(WordScore(), tmp_path / "b.safetensors", resume=True)


def test_gps_config_and_mutator_list_errors() -> None:
    with pytest.raises(SoftpromptError, match="GPS's top_k must be at least 1, got 0"):
        GPSConfig(top_k=0)
    with pytest.raises(SoftpromptError, match="GPS needs at least one mutator"):
        GeneticPromptSearch([])
    with pytest.raises(SoftpromptError, match="with repeats"):
        GeneticPromptSearch([Suffixes(), Suffixes()])


# --- the LM mutators ------------------------------------------------------------------------------------------


def test_lm_mutators_are_deterministic_and_leave_the_global_random_state(causal_lm: LanguageModel) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for mutator in (Paraphrase(causal_lm, max_new_tokens=8), SpanInfill(causal_lm)):
        first = mutator.rewrite("Classify the sentiment of the review.", 3, seed=7)
        assert len(first) == 3 and all(isinstance(t, str) for t in first)
        assert mutator.rewrite("Classify the sentiment of the review.", 3, seed=7) == first
    assert torch.equal(torch.get_rng_state(), state)


def test_span_infill_keeps_the_words_around_the_span(causal_lm: LanguageModel) -> None:
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for rewrite in SpanInfill(causal_lm, span=0.2).rewrite(" ".join(words), 5, seed=3):
        new = rewrite.split()
        # At most two words replaced: what stays is a prefix and a suffix of the original.
        kept_front = next((i for i, (a, b) in enumerate(zip(new, words, strict=False)) if a != b), len(new))
        kept_back = next((i for i, (a, b) in enumerate(zip(new[::-1], words[::-1], strict=False)) if a != b), len(new))
        assert kept_front + kept_back >= len(words) - 2


def test_masked_span_infill_fills_one_token_per_mask() -> None:
    lm = tiny_masked()
    out = SpanInfill(lm, span=0.5).rewrite("the cat sat on the mat", 4, seed=0)
    assert len(out) == 4 and all(o.split()[:1] == ["the"] or o.split()[-1:] == ["mat"] for o in out)


def test_nucleus_sampling_draws_only_from_the_top_p_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    drawn = {nucleus(probs, 0.7, torch.Generator().manual_seed(s)) for s in range(200)}
    assert drawn == {0, 1}  # 0.5 < 0.7, 0.8 ≥ 0.7: the third token is out


def test_back_translation_runs_through_two_encoder_decoders_and_refuses_causal_models(
        causal_lm: LanguageModel) -> None:
    t5 = tiny_seq2seq()
    out = BackTranslation(t5, t5, max_new_tokens=6).rewrite("Classify the review.", 3, seed=1)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    with pytest.raises(SoftpromptError, match="needs a seq2seq LM; 'tiny-llama-32' is causal"):
        BackTranslation(causal_lm, t5)
    with pytest.raises(SoftpromptError, match="needs T5's sentinel token <extra_id_0>"):
        SpanInfill(t5)


# --- on a task ------------------------------------------------------------------------------------------------


TASK = task_from_dict({"name": "polarity", "description": "Good?", "template": "{{w}} is",
                       "target": "{{label}}", "labels": {"0": "bad", "1": "good"}}, "polarity.yaml")
WORDS = ["awful", "great", "nice", "poor", "lovely", "nasty", "fine", "grim"] * 6


def examples(n: int) -> list:
    return [TASK.render({"w": w, "label": str(i % 2)}) for i, w in enumerate(WORDS[:n])]


def test_dev_sets_follow_the_paper_32_examples_or_8_per_label_past_5_labels() -> None:
    labels = [i % 2 for i in range(100)]
    assert len(gps_dev_indices(labels, 2, 0)) == 32
    many = [i % 6 for i in range(100)] + [5]
    picked = gps_dev_indices(many, 6, 0)
    assert sorted({many[i] for i in picked}) == list(range(6)) and len(picked) == 48
    assert gps_dev_indices(many, 6, 0) == picked != gps_dev_indices(many, 6, 1)


def test_the_task_objective_scores_a_prompt_as_prediction_does(causal_lm: LanguageModel) -> None:
    engine = Engine(causal_lm)
    dev = examples(12)
    objective = LayoutObjective(engine, TASK, dev, initial_layouts(TASK))
    got = objective.evaluate(objective.initial)
    for text, evaluation in zip(objective.initial, got, strict=True):
        scores = predict(engine, objective.prompt_of(text), TASK, dev, TaskSettings(kind="hard", layout=text))
        right = (scores.argmax(-1) == torch.tensor([e.label for e in dev])).float().mean()
        assert evaluation.accuracy == pytest.approx(float(right))
        assert evaluation.loss == pytest.approx(float(torch.nn.functional.cross_entropy(
            scores, torch.tensor([e.label for e in dev]))), abs=1e-5)


def test_initial_layouts_embed_the_description_and_keep_the_slots() -> None:
    layouts = initial_layouts(TASK)
    assert layouts[0] == "Good?\nOptions: {options}\n{input}" and len(layouts) == 3
    assert all(check_prompt(t) for t in layouts)


def test_run_gps_writes_the_lineage_and_a_loadable_prompt(causal_lm: LanguageModel, tmp_path: Path) -> None:
    gps = GeneticPromptSearch([Paraphrase(causal_lm, max_new_tokens=6)], GPSConfig(iterations=1, top_k=2, children=2),
                              progress=False)
    doc = run_gps(causal_lm, TASK, gps, tmp_path / "run", examples(40), examples(16), TaskSettings(kind="hard"))
    lineage = [json.loads(line) for line in (tmp_path / "run" / "lineage.jsonl").read_text().splitlines()]
    assert len(lineage) == doc["prompts_scored"] >= 3 and sum(row["final"] for row in lineage) == 2
    assert doc["prompt_text"] == doc["final"][0]["text"] and doc["dev_examples"] == 32
    prompt = load_prompt(tmp_path / "run" / "prompt.safetensors", causal_lm)
    assert prompt.layout == doc["prompt_text"]
    scores = predict(Engine(causal_lm), prompt, TASK, examples(16), TaskSettings(kind="hard"))
    assert math.isclose(float((scores.argmax(-1) == torch.tensor([e.label for e in examples(16)])).float().mean()),
                        doc["metrics"]["accuracy"], abs_tol=1e-9)
