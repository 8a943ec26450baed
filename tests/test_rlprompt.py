"""RLPrompt on tiny models: its soft Q-learning loss, its rewards, learning a toy objective, resuming exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal, wordpiece_tokenizer
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.base import OPTIMIZERS
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.rlprompt import RLPrompt, RLPromptConfig, adaptor, sql_loss
from softprompt.optimizers.search import CandidateScores
from softprompt.prompts.task import TaskPrompt

ln = math.log


class KeyToken:
    """A toy objective: every item's gold answer has probability 0.9 when the key token is anywhere in the
    prompt, 0.3 otherwise (over two choices). It records the candidates and items of every scoring call."""

    def __init__(self, lm: LanguageModel, key: int, classification: bool, length: int = 3,
                 free: tuple[int, ...] | None = None) -> None:
        self.lm, self.key, self.classification = lm, key, classification
        self.items, self.dev = [range(2)] * 8, list(range(4))
        self.initial_ids = (50,) * length
        self.free = tuple(range(length)) if free is None else free
        self.calls: list[tuple[torch.Tensor, list[int] | None, bool]] = []

    def scores(self, candidates: torch.Tensor, indices=None, dev: bool = False) -> CandidateScores:
        self.calls.append((candidates.clone(), indices, dev))
        n = len(self.dev if dev else self.items) if indices is None else len(indices)
        hit = (candidates == self.key).any(1)[:, None].expand(-1, n)
        gold = torch.where(hit, ln(0.9), ln(0.3))
        return CandidateScores(gold, torch.log1p(-gold.exp()))

    def loss(self, vectors, indices) -> torch.Tensor:
        raise AssertionError("RLPrompt only scores candidates")

    def hard_prompt(self, ids) -> TaskPrompt:
        return TaskPrompt(self.lm, f"[P*{len(ids)}]{{input}}", 0, tuning="hard", token_ids=list(ids))


def small(**changes: object) -> RLPromptConfig:
    return RLPromptConfig(**{"steps": 9, "mlp_hidden": 64, "batch_size": 4, "eval_every": 3, **changes})


def test_the_sql_loss_is_the_mean_of_the_single_and_multi_step_consistency_losses() -> None:
    # Two steps of one episode with reward 1. Policy: V_0 = ln 4, A_0 = ln 3/4 (action 1); V_1 = ln 4,
    # A_1 = ln 1/2 (action 0). Target: V'_0 = ln 2, V'_1 = ln 8.
    logits = torch.tensor([[[0.0, ln(3)], [ln(2), ln(2)]]], requires_grad=True)
    target = torch.tensor([[[0.0, 0.0], [ln(3), ln(5)]]], requires_grad=True)
    loss = sql_loss(logits, target, torch.tensor([[1, 0]]), torch.tensor([1.0]))
    single = (ln(3 / 4) - (ln(8) - ln(2))) ** 2 + (ln(1 / 2) - (1 - ln(8))) ** 2
    multi = (ln(3 / 4) + ln(1 / 2) - (1 - ln(2))) ** 2 + (ln(1 / 2) - (1 - ln(8))) ** 2
    assert loss.item() == pytest.approx((single + multi) / 2, rel=1e-6)
    loss.backward()
    assert target.grad is None and logits.grad.abs().sum() > 0  # the target only bootstraps
    # Episodes are averaged: a second one with reward 0 and the same values adds its own loss.
    two = sql_loss(logits.detach().repeat(2, 1, 1), target.detach().repeat(2, 1, 1), torch.tensor([[1, 0]] * 2),
                   torch.tensor([1.0, 0.0]))
    zero = ((ln(3 / 4) - ln(4)) ** 2 + (ln(1 / 2) + ln(8)) ** 2 + (ln(3 / 8) + ln(2)) ** 2 + (ln(1 / 2) + ln(8)) ** 2)
    assert two.item() == pytest.approx(((single + multi) / 2 + zero / 2) / 2, rel=1e-6)


def test_rewards_are_the_gap_or_the_gold_log_probability_minus_alpha_perplexity(causal_lm: LanguageModel) -> None:
    ids = torch.tensor([[7, 50, 50], [50, 50, 50]])
    objective = KeyToken(causal_lm, key=7, classification=True)
    rlprompt = RLPrompt(small(), progress=False)
    fluency = Fluency(causal_lm)
    # Gap 0.9 - 0.1 when right (×200), 0.3 - 0.7 when wrong (×180).
    assert rlprompt.rewards(objective, ids, [0, 1], fluency).tolist() == pytest.approx([160.0, -72.0], rel=1e-5)
    objective.classification = False
    assert rlprompt.rewards(objective, ids, [0, 1], fluency).tolist() == pytest.approx([ln(0.9), ln(0.3)], rel=1e-5)
    penalised = RLPrompt(small(alpha=0.5), progress=False).rewards(objective, ids, [0, 1], fluency)
    expected = torch.tensor([ln(0.9), ln(0.3)]) - 0.5 * fluency.perplexity(ids)
    assert torch.allclose(penalised, expected)


@pytest.mark.parametrize("classification", [True, False])
def test_the_policy_learns_to_write_the_rewarded_token(causal_lm: LanguageModel, classification: bool) -> None:
    config = small(steps=60, lr=1e-2, top_k=8, eval_every=5)
    objective = KeyToken(causal_lm, key=-1, classification=classification)
    rlprompt = RLPrompt(config, progress=False)
    rlprompt.prepare(objective)
    base = torch.tensor(objective.initial_ids)
    initial = rlprompt.decode(adaptor(causal_lm.hidden_size, 64, torch.Generator().manual_seed(0)), base,
                              [0, 1, 2], 1, None)[0][0].tolist()
    # The key: one of the frozen LM's top 8 first tokens (the fluent choices) that the initial policy does not
    # write, so that only learning puts it in the prompt.
    with torch.no_grad():
        first = rlprompt.engine.project(rlprompt.engine.body(input_ids=torch.tensor([[rlprompt.start]]))[0][0, -1])
    choices = first.masked_fill(~rlprompt.allowed, float("-inf")).topk(8).indices.tolist()
    objective.key = next(t for t in reversed(choices) if t not in initial)
    result = rlprompt.fit(objective)
    assert objective.key in result.prompt.token_ids and result.prompt.token_ids == tuple(rlprompt.best_ids)
    assert result.history[0]["dev_accuracy"] == 0.0 and result.history[-1]["dev_accuracy"] == 1.0
    hits = [(c == objective.key).any(1).float().mean().item() for c, _, dev in objective.calls if not dev]
    assert sum(hits[:5]) / 5 < 0.25 and sum(hits[-5:]) / 5 > 0.75  # the samples, not only the greedy prompt
    assert all(set(c[:, 0].tolist()) <= set(choices) for c, _, dev in objective.calls if not dev)  # fluent


def test_each_step_scores_its_prompts_in_one_call_and_keeps_the_fixed_positions(causal_lm: LanguageModel) -> None:
    objective = KeyToken(causal_lm, key=7, classification=False, length=4, free=(2, 0))
    rlprompt = RLPrompt(small(prompts_per_step=5), progress=False)
    result = rlprompt.fit(objective)
    train = [(c, i) for c, i, dev in objective.calls if not dev]
    assert len(train) == 9 and all(c.shape == (5, 4) and len(i) == 4 for c, i in train)
    assert all((c[:, [1, 3]] == 50).all() for c, _, _ in objective.calls)
    assert [h["step"] for h in result.history] == [0, 3, 6, 9]
    assert all(set(h) == {"step", "loss", "reward", "dev_accuracy", "dev_loss", "perplexity", "evaluations",
                          "seconds"} for h in result.history)
    assert result.history[0]["reward"] is None and result.history[0]["loss"] is None  # the initial prompt
    rewards = [float(rlprompt.rewards(objective, c, i, None).mean()) for c, i, dev in objective.calls[1:] if not dev]
    assert [h["reward"] for h in result.history[1:]] == pytest.approx([rewards[2], rewards[5], rewards[8]])
    assert result.history[-1]["evaluations"] == 9 * 5 * 4 + 4 * 4
    assert OPTIMIZERS["rlprompt"] is RLPrompt


def test_a_resumed_search_equals_an_uninterrupted_one(causal_lm: LanguageModel, tmp_path: Path) -> None:
    config = small(lr=1e-2, polyak=0.5, final="sample-best")  # a target that lags visibly
    whole = RLPrompt(config, progress=False).fit(KeyToken(causal_lm, key=7, classification=True),
                                                 tmp_path / "whole.safetensors")
    objective = KeyToken(causal_lm, key=7, classification=True)
    real = objective.scores

    def crash_in_step_5(candidates, indices=None, dev=False):
        if len(objective.calls) == 1 + 3 + 1 + 1:  # the initial prompt, steps 1-3, the evaluation at 3, step 4
            raise KeyboardInterrupt
        return real(candidates, indices, dev)

    objective.scores = crash_in_step_5
    with pytest.raises(KeyboardInterrupt):
        RLPrompt(config, progress=False).fit(objective, tmp_path / "ckpt.safetensors")
    objective.scores = real
    resumed = RLPrompt(config, progress=False).fit(objective, tmp_path / "ckpt.safetensors", resume=True)
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.prompt.token_ids == whole.prompt.token_ids and resumed.best_epoch == whole.best_epoch
    assert len(objective.calls) == 6 + 6 + 2  # it went on from step 4, not from the start
    ends = [load_file(tmp_path / name) for name in ("whole.safetensors", "ckpt.safetensors")]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    initial = adaptor(causal_lm.hidden_size, 64, torch.Generator().manual_seed(0)).state_dict()
    for k, v in initial.items():  # the target follows the MLP, half way each step
        target = ends[0][f"target.{k}"]
        assert not torch.equal(target, v) and not torch.equal(target, ends[0][f"mlp.{k}"])
    with pytest.raises(SoftpromptError, match="was written with search settings"):
        RLPrompt(small(lr=1e-3), progress=False).fit(objective, tmp_path / "ckpt.safetensors", resume=True)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", 0, "RLPrompt's steps must be at least 1, got 0"),
    ("prompts_per_step", 1, "RLPrompt's prompts_per_step must be at least 2 (rewards are normalised across a "
                            "step's prompts), got 1"),
    ("lr", float("nan"), "RLPrompt's lr must be a positive finite number, got nan"),
    ("incorrect_coeff", 0.0, "RLPrompt's incorrect_coeff must be a positive finite number, got 0.0"),
    ("alpha", -1.0, "RLPrompt's alpha must be a finite number ≥ 0, got -1.0"),
    ("polyak", 0.0, "RLPrompt's polyak rate must be in (0, 1], got 0.0"),
    ("top_k", 0, "RLPrompt's top_k must be at least 1 or None, got 0"),
    ("final", "beam", "unknown final prompt 'beam'; choose one of: greedy, sample-best"),
])
def test_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(SoftpromptError) as err:
        RLPromptConfig(**{field: value})
    assert str(err.value) == message


def test_the_policy_must_be_a_causal_lm_with_the_searched_models_vocabulary(causal_lm: LanguageModel,
                                                                             masked_lm: LanguageModel) -> None:
    objective = KeyToken(causal_lm, key=7, classification=True)
    tokenizer = wordpiece_tokenizer()  # the masked LM's
    tokenizer.eos_token = "[SEP]"  # where the policy starts its prompts
    other = LanguageModel(LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                                       intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, num_key_value_heads=1)),
                          tokenizer, name="tiny-llama-wordpiece", kind="causal")
    with pytest.raises(SoftpromptError) as err:
        RLPrompt(small(), policy=other, progress=False).fit(objective)
    assert str(err.value) == ("the policy LM 'tiny-llama-wordpiece' has another vocabulary than 'tiny-llama-32': "
                              "RLPrompt's policy must write the searched model's tokens")
    with pytest.raises(SoftpromptError, match="RLPrompt's policy must be a causal LM; 'tiny-bert-32' is masked"):
        RLPrompt(small(), policy=masked_lm, progress=False).fit(objective)
    assert not objective.calls
    # Another model with the same tokenizer (and another width) is a policy.
    wider = tiny_causal(seed=1, hidden=64)
    result = RLPrompt(small(steps=2, eval_every=1), policy=wider, progress=False).fit(objective)
    assert len(result.prompt.token_ids) == 3 and [h["step"] for h in result.history] == [0, 1, 2]
    # A masked LM is searched with a causal policy of its vocabulary; it has no perplexity of its own.
    searched = KeyToken(masked_lm, key=7, classification=True)
    result = RLPrompt(small(steps=2, eval_every=1), policy=other, progress=False).fit(searched)
    assert [h["perplexity"] for h in result.history] == [None] * 3
    with pytest.raises(SoftpromptError, match="is masked: RLPrompt's perplexity reward needs a causal reference"):
        RLPrompt(small(alpha=0.1), policy=other, progress=False).fit(searched)
