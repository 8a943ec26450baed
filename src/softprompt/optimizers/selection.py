"""Choosing which of K prompts are worth training, from an (n, K) matrix of each prompt's gold-answer
log-likelihoods on dev (Qin & Eisner's mixtures, made sub-linear in K).

``weight``: fit mixture weights to the likelihoods by EM and keep the k heaviest (ties by each prompt's own
mean likelihood). ``greedy``: forward selection of the prompts that most raise the mixture's likelihood. A
run chooses either from the initial prompts, or after warm-up epochs of the whole mixture (``warmup_history``
joins the two phases' histories).
"""

from __future__ import annotations

import torch

from softprompt.errors import SoftpromptError
from softprompt.optimizers.base import FitResult

SELECTIONS = ("weight", "greedy")


def fit_weights(gold_logprobs: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Maximum-likelihood mixture weights for fixed prompts, by EM on an (n, K) matrix of log p(y | t, x)."""
    k = gold_logprobs.shape[1]
    log_w = torch.full((k,), -torch.log(torch.tensor(float(k))), dtype=torch.float64)
    lp = gold_logprobs.double()
    for _ in range(iterations):
        log_w = (log_w + lp).log_softmax(-1).exp().mean(0).clamp_min(1e-300).log()
    return log_w.exp()


def greedy_selection(gold_logprobs: torch.Tensor, k: int) -> list[int]:
    """Forward selection: repeatedly add the prompt whose addition (weights refitted by EM) most raises the
    mixture's mean log-likelihood of the gold answers, from an (n, K) matrix of log p(y | t, x). Prompts that
    explain the same facts add little after the first, so the picks complement each other."""
    lp = gold_logprobs.double()
    chosen: list[int] = []
    for _ in range(min(k, lp.shape[1])):
        def gain(t: int) -> float:
            subset = lp[:, [*chosen, t]]
            return float((fit_weights(subset).log()[None, :] + subset).logsumexp(-1).mean())

        chosen.append(max((t for t in range(lp.shape[1]) if t not in chosen), key=gain))
    return sorted(chosen)


def select(gold_logprobs: torch.Tensor, k: int, selection: str = "weight") -> tuple[list[int], list[float]]:
    """The ``k`` prompts to keep (in their original order) and the weights EM fits to all K."""
    if selection not in SELECTIONS:
        raise SoftpromptError(f"unknown prompt selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    weights = fit_weights(gold_logprobs)
    if selection == "greedy":
        return greedy_selection(gold_logprobs, k), weights.tolist()
    mean = gold_logprobs.mean(0)
    order = sorted(range(gold_logprobs.shape[1]), key=lambda t: (-float(weights[t]), -float(mean[t])))
    return sorted(order[:k]), weights.tolist()


def warmup_history(warmed: FitResult, pruned: FitResult, warmup: int) -> FitResult:
    """One history for a fit that trained the whole mixture for ``warmup`` epochs, then its pruned subset: the
    pruned phase's epochs continue the count, and its epoch 0 (the just-pruned mixture on dev) is kept as
    "pruned_dev_loss"."""
    first, *rest = pruned.history
    history = [*warmed.history, {"epoch": warmup, "pruned_dev_loss": first["dev_loss"]}]
    history += [h | {"epoch": h["epoch"] + warmup} for h in rest]
    return FitResult(pruned.prompt, pruned.best_epoch + warmup, pruned.best_dev_loss, history,
                     warmed.earlier_seconds + pruned.earlier_seconds)
