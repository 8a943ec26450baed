"""Metrics: ranking over the full vocabulary (P@1, P@10, MRR) and classification (accuracy, macro-F1, ROC-AUC).

A metric never flatters a degenerate prompt. Ranks count ties against the gold answer (a prompt that gives
every word the same score ranks the answer last, not first), and a row with a NaN score ranks it last
too. A classification row with any non-finite score predicts no choice (-1), which is always wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch


def answer_ranks(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """1-based rank of each gold answer among all vocabulary items: 1 + the number of other items scored at
    least as high (ties count against the answer); the last rank where the row holds a NaN."""
    gold = logits.gather(1, answer_ids[:, None])
    ranks = (logits >= gold).sum(1)
    return ranks.masked_fill(logits.isnan().any(1), logits.shape[1])


def choice_predictions(scores: torch.Tensor) -> torch.Tensor:
    """The highest-scoring choice of each row of (N, C) scores, or -1 (no prediction, always wrong) for a row
    with a non-finite score."""
    return scores.argmax(-1).masked_fill(~scores.isfinite().all(-1), -1)


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


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    _check_pairs(predictions, labels)
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all ``num_classes`` classes (0 for a class never predicted
    correctly, including one absent from ``labels``)."""
    _check_pairs(predictions, labels)
    scores = []
    for c in range(num_classes):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels, strict=True))
        predicted, actual = sum(p == c for p in predictions), sum(y == c for y in labels)
        scores.append(0.0 if tp == 0 else 2 * tp / (predicted + actual))
    return sum(scores) / num_classes


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` for the positive class 1: the probability that a random
    positive outscores a random negative, ties counting one half (Mann–Whitney U)."""
    _check_pairs(scores, labels)
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not pos or not neg:
        raise ValueError("ROC-AUC needs both classes among the labels")
    ranked = sorted(scores)
    # Mid-ranks (1-based) of each distinct score, so ties share their average rank.
    first, count = {}, {}
    for i, s in enumerate(ranked):
        first.setdefault(s, i + 1)
        count[s] = count.get(s, 0) + 1
    rank_sum = sum(first[s] + (count[s] - 1) / 2 for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _check_pairs(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many predictions and labels, at least one (got {len(a)} and {len(b)})")
