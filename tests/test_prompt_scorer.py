"""The candidate-prompt scorer equals scoring each candidate alone, for every kind of LM and layout."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal, tiny_masked, tiny_seq2seq

from softprompt.engine import Engine
from softprompt.models import LanguageModel
from softprompt.prompt_scorer import PrefixMemo, Queries, common_prefix_logits, frozen_prefix_logits, score_candidates
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks.scoring import TaskEncoder, collate_rows, query_logits
from softprompt.tasks.task import task_from_dict
from softprompt.templates import TemplateEncoder

SUBJECTS = ["France", "the capital of Japan", "Peru", "Mozart was born in Italy", "Kenya"]


def candidates(lm: LanguageModel, k: int, length: int, swap_at: int | None = None, seed: int = 0) -> torch.Tensor:
    """K random token sequences, or K sequences equal but at ``swap_at`` (AutoPrompt's swaps)."""
    gen = torch.Generator().manual_seed(seed)
    low = len(lm.tokenizer.all_special_ids)
    if swap_at is None:
        ids = torch.randint(low, lm.vocab_size, (k, length), generator=gen)
    else:
        ids = torch.randint(low, lm.vocab_size, (1, length), generator=gen).repeat(k, 1)
        ids[:, swap_at] = torch.randint(low, lm.vocab_size, (k,), generator=gen)
    return lm.embed(ids).detach()


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1)


def probing_batch(lm: LanguageModel, template: str):
    engine = Engine(lm)
    encoder = TemplateEncoder(template, lm)
    batch = engine.collate([encoder.query(s, 0) for s in SUBJECTS])
    return engine, batch, Queries(torch.arange(len(SUBJECTS)), batch.answer_positions), len(encoder.prompt_ids)


@pytest.mark.parametrize("make", [tiny_causal, tiny_masked])
@pytest.mark.parametrize("swap_at", [None, 0, 2])
@pytest.mark.parametrize("template", ["[X] is located in the city of [Y] .", "the [X] , capital [Y] ."])
@pytest.mark.parametrize("packed", [True, False])
def test_probing_scores_equal_one_candidate_at_a_time(make, swap_at: int | None, template: str, packed: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Causal LMs: the candidates' suffixes side by side on one cache (packed) or on a cache per candidate."""
    lm = make()
    engine, batch, queries, length = probing_batch(lm, template)
    monkeypatch.setattr(engine, "custom_masks_fit", lambda width: packed)
    cands = candidates(lm, 6, length, swap_at)
    many = score_candidates(engine, batch, queries, cands, log_softmax, max_rows=12)  # 2 candidates per pass
    with torch.inference_mode():
        alone = torch.stack([engine.answer_logits(batch, c).log_softmax(-1) for c in cands])
    assert many.shape == alone.shape == (6, len(SUBJECTS), lm.vocab_size)
    assert (many - alone).abs().max() <= 1e-5


def test_the_prefix_cache_is_used_and_changes_nothing() -> None:
    """Swaps after the subject share the subject: the cached and uncached paths agree, and the cached one
    runs fewer token positions through the model."""
    lm = tiny_causal()
    engine, batch, queries, length = probing_batch(lm, "[X] is located in the city of [Y] .")
    cands = candidates(lm, 5, length, swap_at=4)
    seen: list[int] = []
    hook = engine.body.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[:2].numel()),
                                                 with_kwargs=True)
    try:
        cached = score_candidates(engine, batch, queries, cands, log_softmax)
        cached_cost, seen[:] = sum(seen), []
        plain = score_candidates(engine, batch, queries, cands, log_softmax, share_prefix=False)
        plain_cost = sum(seen)
    finally:
        hook.remove()
    assert (cached - plain).abs().max() <= 1e-5
    assert cached_cost < plain_cost


def test_packed_suffixes_run_on_one_copy_of_the_cache() -> None:
    """The packed path is the one taken where masks fit: it passes the body the batch's rows once, each
    with every candidate's suffix, where the repeated path passes each row once per candidate."""
    lm = tiny_causal()
    engine, batch, queries, length = probing_batch(lm, "[X] is located in the city of [Y] .")
    cands = candidates(lm, 5, length, swap_at=4)
    assert engine.custom_masks_fit(64)  # checked once, with forward passes of its own, before counting
    shapes: list[tuple[int, int]] = []
    hook = engine.body.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])),
                                                 with_kwargs=True)
    try:
        score_candidates(engine, batch, queries, cands, log_softmax)
    finally:
        hook.remove()
    assert [rows for rows, _ in shapes] == [len(SUBJECTS)] * 2  # the prefixes, then the suffixes


def test_a_sliding_window_narrower_than_the_packed_rows_turns_packing_off() -> None:
    lm = tiny_causal()
    engine = Engine(lm)
    lm.model.config.sliding_window = 20
    assert engine.custom_masks_fit(19) and not engine.custom_masks_fit(20)


def test_the_memo_runs_a_batch_once_and_rebuilds_when_the_prefix_changes() -> None:
    """RLPrompt scores new samples on the same items every step: the second call runs only the suffixes and
    gives the same scores as a fresh scorer; a prompt vector in the prefix that changes (AutoPrompt accepted
    a swap before the position it now tries) is a new prefix, scored as each candidate alone."""
    lm = tiny_causal()
    engine, batch, queries, length = probing_batch(lm, "[X] is located in the city of [Y] .")
    memo = PrefixMemo()
    assert engine.custom_masks_fit(64)
    seen: list[int] = []
    hook = engine.body.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[1]),
                                                 with_kwargs=True)
    try:
        first = score_candidates(engine, batch, queries, candidates(lm, 5, length, swap_at=4), log_softmax, memo=memo)
        calls, seen[:] = len(seen), []
        again = candidates(lm, 5, length, swap_at=4, seed=0)
        second = score_candidates(engine, batch, queries, again, log_softmax, memo=memo)
        assert calls == 2 and len(seen) == 1  # the prefix, then the suffixes; then the suffixes only
        assert torch.equal(first, second)
        moved = candidates(lm, 5, length, swap_at=4, seed=1)  # other words before position 4
        seen[:] = []
        third = score_candidates(engine, batch, queries, moved, log_softmax, memo=memo)
        assert len(seen) == 2 and len(memo.prefixes) == 2
    finally:
        hook.remove()
    with torch.inference_mode():
        alone = torch.stack([engine.answer_logits(batch, c).log_softmax(-1) for c in moved])
    assert (third - alone).abs().max() <= 1e-5


TASK = {"name": "capital", "description": "capitals", "template": "the capital of {{c}} is", "target": "{{label}}"}


@pytest.mark.parametrize("make", [tiny_causal, tiny_masked, tiny_seq2seq])
@pytest.mark.parametrize("layout", ["[P*3]{input}", "{input} [P*3] so", "hello [P] {input} [P*2]"])
@pytest.mark.parametrize("labels", [{"a": "Paris", "b": "Berlin"}, {"a": "Paris is big", "b": "Rome or Lima"}])
@pytest.mark.parametrize("packed", [True, False])
def test_task_rows_score_equal_one_candidate_at_a_time(make, layout: str, labels: dict[str, str], packed: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Task rows: shared single-token verbalizers and one row per multi-token choice, prefix and suffix
    layouts, on causal, masked and encoder-decoder LMs."""
    lm = make()
    engine = Engine(lm)
    monkeypatch.setattr(engine, "custom_masks_fit", lambda width: packed)
    task = task_from_dict({**TASK, "labels": labels}, "capital.yaml")
    prompt = TaskPrompt(lm, layout, 0, init="vocab")
    encoded = TaskEncoder(lm, task, prompt).encode(
        [task.render({"c": c, "label": y}) for c, y in [("France", "a"), ("the north of Peru", "b"), ("Chile", "a")]])
    batch = collate_rows(encoded.rows, lm.tokenizer.pad_token_id, engine.padding_side == "left", lm.device)
    queries = Queries(batch.query_rows, batch.query_positions)
    cands = candidates(lm, 5, prompt.length, swap_at=1)
    many = score_candidates(engine, batch, queries, cands, log_softmax)
    with torch.inference_mode():
        alone = torch.stack([query_logits(engine, batch, c, None).log_softmax(-1) for c in cands])
    assert (many - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("labels", [{"0": "no", "1": "yes"}, {"0": "not at all", "1": "yes it is"}])
def test_a_shared_instruction_runs_once_and_scores_as_the_whole_rows(causal_lm: LanguageModel,
                                                                     labels: dict[str, str]) -> None:
    task = task_from_dict({"name": "t", "template": "{{c}} is a", "target": "{{label}}", "labels": labels}, "t.yaml")
    layout = "Answer the question about the country well.\nOptions: {options}\n{input}"
    encoded = TaskEncoder(causal_lm, task, TaskPrompt(causal_lm, layout, 0, tuning="hard")).encode(
        [task.render({"c": c, "label": str(i % 2)}) for i, c in enumerate(SUBJECTS)])
    engine = Engine(causal_lm)
    batch = collate_rows(encoded.rows, causal_lm.tokenizer.pad_token_id, True, causal_lm.device)
    queries = Queries(batch.query_rows, batch.query_positions)
    with torch.inference_mode():
        whole = engine.project(engine.final_hidden(batch)[batch.query_rows, batch.query_positions])
        shared = common_prefix_logits(engine, batch, queries)
        assert shared is not None and torch.allclose(shared, whole, atol=1e-5)
        assert torch.equal(query_logits(engine, batch, None, None), shared)  # hard rows take the shared path
        assert common_prefix_logits(engine, batch, queries, min_shared=1000) is None
        # Prompt vectors and a deep prompt's per-layer perturbations in the common beginning (ZeroPrompt's hybrid
        # prompt: E, then the instruction, then the input).
        deep = TaskPrompt(causal_lm, "[P*4]" + layout, 0, tuning="deep", init="vocab", seed=1)
        deep.delta.normal_(std=0.3)
        hybrid = TaskEncoder(causal_lm, task, deep).encode([task.render({"c": c, "label": "0"}) for c in SUBJECTS])
        rows = collate_rows(hybrid.rows, causal_lm.tokenizer.pad_token_id, True, causal_lm.device)
        at = Queries(rows.query_rows, rows.query_positions)
        whole = engine.project(engine.final_hidden(rows, deep.vectors(), deep.deltas())[rows.query_rows,
                                                                                         rows.query_positions])
        shared = common_prefix_logits(engine, rows, at, deep.vectors(), deep.deltas())
        assert shared is not None and torch.allclose(shared, whole, atol=1e-5)
        # A prompt position after the common beginning (in each input) must run per row: not shared.
        inner = TaskPrompt(causal_lm, layout.replace("{input}", "{input} [P]"), 0, init="vocab")
        late = TaskEncoder(causal_lm, task, inner).encode([task.render({"c": c, "label": "0"}) for c in SUBJECTS])
        rows = collate_rows(late.rows, causal_lm.tokenizer.pad_token_id, True, causal_lm.device)
        assert common_prefix_logits(engine, rows, Queries(rows.query_rows, rows.query_positions),
                                    inner.vectors()) is None
        # Rows that differ from their first token share nothing.
        other = TaskEncoder(causal_lm, task, TaskPrompt(causal_lm, "{input}", 0, tuning="hard")).encode(
            [task.render({"c": c, "label": "0"}) for c in SUBJECTS])
        plain = collate_rows(other.rows, causal_lm.tokenizer.pad_token_id, True, causal_lm.device)
        assert common_prefix_logits(engine, plain, Queries(plain.query_rows, plain.query_positions)) is None


@pytest.mark.parametrize("layout", ["{input} [P*3] so", "hello [P] {input} [P*2]", "[P*3]{input}"])
def test_a_frozen_prefix_gives_the_whole_rows_logits_and_gradients(causal_lm: LanguageModel, layout: str) -> None:
    """PEZ's and AutoPrompt's gradient steps: the tokens before each row's prompt run without gradients, the
    logits and the gradient with respect to the prompt are those of the whole rows; a prompt at the start of
    every row leaves nothing to freeze."""
    task = task_from_dict({**TASK, "labels": {"a": "Paris is big", "b": "Rome"}}, "capital.yaml")
    prompt = TaskPrompt(causal_lm, layout, 0, init="vocab")
    encoded = TaskEncoder(causal_lm, task, prompt).encode(
        [task.render({"c": c, "label": y}) for c, y in [("France", "a"), ("the north of Peru", "b"), ("Chile", "a")]])
    engine = Engine(causal_lm)
    batch = collate_rows(encoded.rows, causal_lm.tokenizer.pad_token_id, True, causal_lm.device)
    queries = Queries(batch.query_rows, batch.query_positions)
    weights = torch.randn(len(batch.query_rows), causal_lm.vocab_size, generator=torch.Generator().manual_seed(0))

    def logits_and_grad(frozen: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        vectors = prompt.vectors().detach().clone().requires_grad_(True)
        if frozen:
            logits = frozen_prefix_logits(engine, batch, queries, vectors)
            if logits is None:
                return None
        else:
            logits = engine.project(engine.final_hidden(batch, vectors)[batch.query_rows, batch.query_positions])
        (logits.log_softmax(-1) * weights).sum().backward()
        return logits.detach(), vectors.grad

    frozen = logits_and_grad(True)
    if layout.startswith("[P"):
        assert frozen is None
        return
    whole = logits_and_grad(False)
    assert frozen is not None and whole is not None
    assert (frozen[0] - whole[0]).abs().max() <= 1e-5
    assert (frozen[1] - whole[1]).abs().max() <= 1e-5 * max(1.0, float(whole[1].abs().max()))
    assert whole[1].abs().sum() > 0
