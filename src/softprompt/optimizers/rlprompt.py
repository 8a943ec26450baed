"""RLPrompt (Deng et al. 2022), with Patel et al.'s perplexity reward term.

A policy writes the prompt's free positions left to right: a frozen causal LM whose last hidden state goes
through a small trainable MLP before the LM head. As in the reference (github.com/mingkaid/rl-prompt,
``lm_adaptor_model.py``) the MLP's output *replaces* the hidden state (no residual): with its Xavier-uniform
weights at gain 1e-4 and biases of -1e-4 the initial logits are ≈ 0, so the policy starts ≈ uniform over the
allowed tokens; the frozen LM's knowledge enters as the MLP's input and, with ``top_k``, through the
reference's "fluent" restriction to the frozen LM's own top-k tokens at each step.

The logits are soft Q values. Each step samples ``prompts_per_step`` prompts, scores them on a sample of
training items in one call of the shared candidate scorer, and trains the MLP on-policy with the reference's
default SQL loss ("v2_v2r_v3_v3r" without its coefficient: the mean of the single-step and the multi-step
path-consistency losses on advantages, ``sql_losses.py``), bootstrapped from a target MLP that follows the
MLP by Polyak averaging before every step. Rewards: the gap reward for classification, p(gold) − p(best
other) times 200 when right and 180 when wrong (λ2, λ1 of ``fsc_helpers.py``), or the gold log-probability
for probing; minus α × the prompt's perplexity under a reference LM (Patel et al.); then z-scored across the
step's prompts (std + 1e-4, all prompts share the one dummy input) and scaled by 5 (the few-shot config's
shaping of [0, 1] to [0, 5]). Every ``eval_every`` steps the greedy prompt (or the step's best sample) is
evaluated on dev; the best by accuracy, then loss, is the result, the objective's initial prompt counting as
step 0. History lines are every search's (``SearchLog``: "loss" is the SQL loss) plus the step's mean raw
reward.

Other defaults from the few-shot classification example (``config.yaml``, ``trainer_helpers.py``): Adam at
lr 5e-5 with gradient norm clipped at 5, 12000 steps, evaluation every 10, sampling from the policy's top 256
tokens. The reference scores every prompt on all training items (16 per class); we sample ``batch_size``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.optimizers.base import FitResult, Optimizer, epoch_seed, optimizer_tensors, restore_optimizer
from softprompt.optimizers.fluency import Fluency
from softprompt.optimizers.search import (
    SearchLog,
    SearchObjective,
    allowed_tokens,
    check_objective,
    fluency_of,
    step_items,
)
from softprompt.progress import progress_bar

logger = logging.getLogger(__name__)

FINALS = ("greedy", "sample-best")


@dataclass
class RLPromptConfig:
    steps: int = 12000
    prompts_per_step: int = 16
    batch_size: int = 16  # training items per step
    lr: float = 5e-5
    grad_clip: float = 5.0
    mlp_hidden: int = 2048
    polyak: float = 1e-3  # the target MLP's step towards the MLP
    correct_coeff: float = 200.0
    incorrect_coeff: float = 180.0
    reward_scale: float = 5.0
    alpha: float = 0.0  # weight of the perplexity penalty
    top_k: int | None = None  # "fluent": only the frozen LM's top-k tokens (the reference's fluent_top_k is 20)
    sample_top_k: int | None = 256  # sample among the policy's own top-k tokens
    eval_every: int = 10
    final: str = "greedy"  # the prompt evaluated on dev: the greedy decoding, or the step's best-rewarded sample
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "mlp_hidden", "eval_every"):
            if getattr(self, name) < 1:
                raise SoftpromptError(f"RLPrompt's {name} must be at least 1, got {getattr(self, name)}")
        if self.prompts_per_step < 2:
            raise SoftpromptError("RLPrompt's prompts_per_step must be at least 2 (rewards are normalised across "
                                  f"a step's prompts), got {self.prompts_per_step}")
        for name in ("lr", "grad_clip", "correct_coeff", "incorrect_coeff", "reward_scale"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise SoftpromptError(f"RLPrompt's {name} must be a positive finite number, got {value}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise SoftpromptError(f"RLPrompt's alpha must be a finite number ≥ 0, got {self.alpha}")
        if not 0 < self.polyak <= 1:
            raise SoftpromptError(f"RLPrompt's polyak rate must be in (0, 1], got {self.polyak}")
        for name in ("top_k", "sample_top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SoftpromptError(f"RLPrompt's {name} must be at least 1 or None, got {getattr(self, name)}")
        if self.final not in FINALS:
            raise SoftpromptError(f"unknown final prompt {self.final!r}; choose one of: {', '.join(FINALS)}")


def sql_loss(logits: torch.Tensor, target_logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor
             ) -> torch.Tensor:
    """The reference's on-policy soft Q-learning loss with a reward at the last step only.

    ``logits`` and ``target_logits`` ``(K, T, V)`` are the Q values of the MLP and of the target MLP at each of
    the T actions ``(K, T)`` of K episodes with rewards ``(K,)``. With A_t = Q_t(a_t) − V_t the log-policy and
    V' the target's logsumexp, the single-step loss fits A_t to V'_{t+1} − V'_t (r − V'_T at the end) and the
    multi-step loss fits Σ_{s≥t} A_s to r − V'_t; each position counts their mean, summed over the steps and
    averaged over the episodes."""
    advantage = logits.gather(-1, actions[..., None])[..., 0] - logits.logsumexp(-1)
    target_value = target_logits.logsumexp(-1).detach()
    to_end = rewards[:, None] - target_value
    single = torch.cat([target_value[:, 1:] - target_value[:, :-1], to_end[:, -1:]], 1)
    multi = advantage.flip(1).cumsum(1).flip(1)
    return (((advantage - single) ** 2 + (multi - to_end) ** 2) / 2).sum(1).mean()


def adaptor(size: int, hidden: int, generator: torch.Generator) -> nn.Sequential:
    """The policy's MLP, d → hidden → d with a ReLU, initialised as the reference's (from ``generator``, so
    the global random state is left alone)."""
    layers = [nn.utils.skip_init(nn.Linear, size, hidden), nn.utils.skip_init(nn.Linear, hidden, size)]
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight, gain=1e-4, generator=generator)
        nn.init.constant_(layer.bias, -1e-4)
    return nn.Sequential(layers[0], nn.ReLU(), layers[1])


class RLPrompt(Optimizer):
    name = "rlprompt"

    def __init__(self, config: RLPromptConfig | None = None, fluency: Fluency | None = None,
                 policy: LanguageModel | None = None, progress: bool = True) -> None:
        self.config = config or RLPromptConfig()
        self.fluency = fluency  # the perplexity reference; the objective's own LM (if causal) when None
        self.policy = policy  # the frozen LM of the policy; the objective's own LM when None
        self.progress = progress
        self.best_ids: list[int] | None = None

    def prepare(self, objective: SearchObjective) -> None:
        """Bind the policy LM (checked against the objective's vocabulary) and what decoding needs of it."""
        lm = self.policy or objective.lm
        if lm.kind != "causal":
            raise SoftpromptError(f"RLPrompt's policy must be a causal LM; '{lm.name}' is {lm.kind}: give a causal "
                                  "policy LM with the same vocabulary")
        if lm is not objective.lm and lm.tokenizer.get_vocab() != objective.lm.tokenizer.get_vocab():
            raise SoftpromptError(f"the policy LM '{lm.name}' has another vocabulary than '{objective.lm.name}': "
                                  "RLPrompt's policy must write the searched model's tokens")
        tok = lm.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise SoftpromptError(f"the policy LM '{lm.name}' has neither a BOS nor an EOS token to start from")
        self.lm, self.engine, self.start = lm, Engine(lm), start
        self.allowed = allowed_tokens(lm).to(lm.device)

    def q_values(self, mlp: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The policy's logits (soft Q values) from the frozen LM's hidden states, disallowed tokens at -inf."""
        return self.engine.project(mlp(hidden).to(self.lm.model.dtype)).masked_fill(~mask, float("-inf"))

    def decode(self, mlp: nn.Module, base: torch.Tensor, free: list[int], rows: int,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rows`` prompts: ``base`` with its free positions written left to right, sampled from ``generator``
        (greedy when None). Also the frozen LM's hidden states ``(rows, n, d)`` at the n free positions and the
        tokens allowed there ``(rows, n, V)``: the Q values of any MLP follow from these without the LM."""
        config, device = self.config, self.lm.device
        ids = base.repeat(rows, 1)
        states, masks = [], []
        with torch.no_grad():
            for position in free:
                inputs = torch.cat([torch.full((rows, 1), self.start), ids[:, :position]], 1).to(device)
                hidden = self.engine.body(input_ids=inputs, use_cache=False)[0][:, -1].float()
                mask = self.allowed.expand(rows, -1)
                if config.top_k is not None:
                    frozen = self.engine.project(hidden.to(self.lm.model.dtype)).masked_fill(~mask, float("-inf"))
                    mask = mask & (frozen >= frozen.topk(min(config.top_k, frozen.shape[-1])).values[:, -1:])
                q = self.q_values(mlp, hidden, mask)
                if generator is None:
                    ids[:, position] = q.argmax(-1).cpu()
                else:
                    if config.sample_top_k is not None:
                        kth = q.topk(min(config.sample_top_k, q.shape[-1])).values[:, -1:]
                        q = q.masked_fill(q < kth, float("-inf"))
                    ids[:, position] = torch.multinomial(q.softmax(-1).cpu(), 1, generator=generator)[:, 0]
                states.append(hidden)
                masks.append(mask)
        return ids, torch.stack(states, 1), torch.stack(masks, 1)

    def rewards(self, objective: SearchObjective, ids: torch.Tensor, indices: list[int],
                fluency: Fluency | None) -> torch.Tensor:
        """(K,) raw rewards of the prompts ``ids`` on training items ``indices``."""
        config = self.config
        scores = objective.scores(ids, indices)
        gold, other = scores.gold.float().cpu(), scores.best_other.float().cpu()
        if objective.classification:
            gap = gold.exp() - other.exp()
            reward = (gap * torch.where(gap > 0, config.correct_coeff, config.incorrect_coeff)).mean(1)
        else:
            reward = gold.mean(1)
        if config.alpha and fluency is not None:
            reward = reward - config.alpha * fluency.perplexity(ids).cpu()
        return reward

    def fit(self, objective: SearchObjective, checkpoint: Path | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> FitResult:
        check_objective(objective)
        self.prepare(objective)
        config, device = self.config, self.lm.device
        fluency = fluency_of(self, objective.lm)
        if config.alpha and fluency is None:
            raise SoftpromptError(f"model '{objective.lm.name}' is {objective.lm.kind}: RLPrompt's perplexity reward "
                                  "needs a causal reference model")
        free = sorted(objective.free)
        base = torch.tensor(objective.initial_ids, dtype=torch.long)
        mlp = adaptor(self.lm.hidden_size, config.mlp_hidden, torch.Generator().manual_seed(config.seed)).to(device)
        target = copy.deepcopy(mlp).requires_grad_(False)
        optimizer = torch.optim.Adam(mlp.parameters(), lr=config.lr)
        identity = {"method": self.name, "config": asdict(config), "initial_ids": list(objective.initial_ids),
                    "policy": self.lm.name, "settings": settings or {}}
        log = SearchLog(objective, fluency, checkpoint, identity, line_fields=("reward",))
        if (tensors := log.start(resume)) is not None:
            mlp.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("mlp.")})
            target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")})
            restore_optimizer(optimizer, tensors)

        for step in progress_bar(range(log.step + 1, config.steps + 1), "RLPrompt", self.progress):
            with torch.no_grad():
                for kept, learnt in zip(target.parameters(), mlp.parameters(), strict=True):
                    kept.lerp_(learnt, config.polyak)
            generator = torch.Generator().manual_seed(epoch_seed(config.seed, step))
            ids, hidden, mask = self.decode(mlp, base, free, config.prompts_per_step, generator)
            indices = step_items(len(objective.items), config.batch_size, config.seed, step)
            raw = self.rewards(objective, ids, indices, fluency)
            log.count(len(ids) * len(indices))
            if not raw.isfinite().all():
                raise SoftpromptError(f"RLPrompt's rewards at step {step} are not finite ({raw.tolist()}): the "
                                      "objective scored a prompt as impossible")
            shaped = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-4) * config.reward_scale
            with torch.no_grad():
                target_q = self.q_values(target, hidden, mask)
            loss = sql_loss(self.q_values(mlp, hidden, mask), target_q, ids[:, free].to(device), shaped.to(device))
            if not loss.isfinite():
                raise SoftpromptError(f"RLPrompt diverged at step {step} (a loss of {loss.item()}); lower the "
                                      "learning rate (--lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(mlp.parameters(), config.grad_clip)
            optimizer.step()
            if step % config.eval_every == 0 or step == config.steps:
                greedy = config.final == "greedy"
                chosen = self.decode(mlp, base, free, 1, None)[0][0] if greedy else ids[raw.argmax()]
                tensors = {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
                tensors |= {f"target.{k}": v for k, v in target.state_dict().items()} | optimizer_tensors(optimizer)
                current = log.evaluate(step, loss.item(), chosen.tolist(), tensors, {"reward": float(raw.mean())})
                if self.progress:
                    logger.info("step %d: reward %.4f  dev accuracy %.4f  dev loss %.4f", step, float(raw.mean()),
                                current.accuracy, current.loss)
        self.best_ids = log.state["best_ids"]
        return log.result()
