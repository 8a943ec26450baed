"""Which examples a task run uses, and how it records them.

Limits (``--eval-limit``, ``--train-limit``) take a seeded, stratified sample: data files are often sorted by
label, and the first N rows of such a file hold one class only. ``--balance`` keeps equally many training
examples of each class. A run records each sample (seed, size, the indices or their hash) so that another run
can be checked against it, and compares the training labels' prior with the evaluation's.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

# A class whose share of the training labels differs from its share of the evaluation labels by more than this
# makes a run warn: a prompt tuned on one prior learns it, and pays for it on data with another.
PRIOR_GAP = 0.15


def by_class(labels: Sequence[int], indices: Sequence[int] | None = None) -> dict[int, list[int]]:
    """The given positions (default: all) grouped by their label, each group in the order given."""
    groups: dict[int, list[int]] = {}
    for i in range(len(labels)) if indices is None else indices:
        groups.setdefault(labels[i], []).append(i)
    return groups


def stratified_sample(labels: Sequence[int], size: int | None, seed: int) -> list[int]:
    """Sorted indices of ``size`` items drawn at random (seeded) within each class, every class keeping its share
    of ``labels`` (largest remainders round, and every class gets at least one item when ``size`` allows); all
    indices when ``size`` is None or at least ``len(labels)``."""
    if size is None or size >= len(labels):
        return list(range(len(labels)))
    groups = by_class(labels)
    classes = sorted(groups)
    exact = {c: size * len(groups[c]) / len(labels) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: quota[c] - exact[c])[: size - sum(quota.values())]:
        quota[c] += 1
    if size >= len(classes):  # a rare class must not vanish from a sample that has room for it
        for c in classes:
            if quota[c] == 0:
                quota[max(classes, key=quota.__getitem__)] -= 1
                quota[c] = 1
    rng = random.Random(seed)
    return sorted(i for c in classes for i in rng.sample(groups[c], quota[c]))


def balanced(labels: Sequence[int], indices: Sequence[int]) -> list[int]:
    """The first ``m`` of ``indices`` of each class, ``m`` being the rarest class's count, in the order given
    (shuffle first for a random subset)."""
    groups = by_class(labels, indices)
    m = min(len(g) for g in groups.values())
    kept = {i for g in groups.values() for i in g[:m]}
    return [i for i in indices if i in kept]


def label_prior(labels: Sequence[int], num_classes: int) -> list[float]:
    """Each class's share of ``labels``."""
    return [sum(y == c for y in labels) / max(len(labels), 1) for c in range(num_classes)]


def prior_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """The largest difference between two priors' shares of one class."""
    return max(abs(p - q) for p, q in zip(a, b, strict=True))


def sample_record(indices: Sequence[int], total: int, seed: int, listed: bool) -> dict[str, Any]:
    """How a run records a sample of ``total`` items: its seed and size, a hash of its indices (equal hashes, same
    examples) and, if ``listed``, the indices themselves (for samples drawn by a limit, which are small)."""
    digest = hashlib.sha256(json.dumps(list(indices)).encode()).hexdigest()[:16]
    record: dict[str, Any] = {"seed": seed, "size": len(indices), "of": total, "sha256": digest}
    if listed:
        record["indices"] = list(indices)
    return record
