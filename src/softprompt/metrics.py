"""Ranking metrics over the full vocabulary: P@1, P@10 and mean reciprocal rank."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def answer_ranks(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """1-based rank of each gold answer among all vocabulary items (ties resolved in its favour)."""
    gold = logits.gather(1, answer_ids[:, None])
    return (logits > gold).sum(1) + 1


def ranking_metrics(ranks: Iterable[int]) -> dict[str, float]:
    """P@1, P@10 and MRR as fractions in [0, 1]; ``n`` is the number of queries."""
    ranks = [int(r) for r in ranks]
    if not ranks:
        raise ValueError("no ranks to score")
    n = len(ranks)
    return {
        "p@1": sum(r == 1 for r in ranks) / n,
        "p@10": sum(r <= 10 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks) / n,
        "n": n,
    }


def macro_average(per_relation: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over relations, as LAMA-style tables report."""
    if not per_relation:
        raise ValueError("no relations to average")
    keys = ("p@1", "p@10", "mrr")
    rows = list(per_relation.values())
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys} | {"relations": len(rows)}
