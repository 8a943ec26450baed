"""Paired significance tests between two probing runs.

The paper (Qin & Eisner, 2021) boldfaces the best system together with every system that is not
significantly worse than it, under a paired permutation test (Table 5) or a sign test (Table 1), p < 0.02.
Both tests are paired: the two runs must have scored the same test facts, and each fact is compared with
itself. That removes the (large) variation between facts and leaves only the difference between systems.

The permutation test tests the number the tables report, the macro-average over relations (each relation
counts equally, however many facts it has). The sign test only counts, fact by fact, which run did better.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from softprompt.errors import SoftpromptError
from softprompt.io import read_jsonl

Metric = Literal["p@1", "p@10", "mrr"]
METRICS: tuple[Metric, ...] = ("p@1", "p@10", "mrr")
# (relation, subject, answer, occurrence): one test fact. LAMA test sets repeat some facts (distinct
# Wikidata entities with the same labels); the n-th repeat in one run pairs with the n-th in the other.
Key = tuple[str, str, str, int]

PREDICTIONS = "predictions.jsonl"
# Where each row was read from, so that later errors (duplicates) can name the file and line.
SOURCE_PATH = "_path"
SOURCE_LINE = "_line"
REQUIRED = ("relation", "subject", "answer", "rank")
# Permutations are drawn in chunks of about this many (permutation, example) cells, to bound memory
# (a chunk is 4 MiB of swap bits, and 32 MiB where numpy converts them to float64) whatever the number of examples.
CHUNK_CELLS = 2**22


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The prediction rows of a run: a predictions.jsonl file, or every predictions.jsonl under a directory.

    A directory may be one run directory or a tree of them (e.g. one run per relation), so that a
    benchmark's runs can be compared as one system. Files are read in sorted path order. Each row gets
    ``_path`` and ``_line`` (where it came from), so that later errors can point at the offending line.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob(PREDICTIONS))
        if not files:
            raise SoftpromptError(
                f"no {PREDICTIONS} under {path}; point at a run directory written by `softprompt probe "
                "train` or `softprompt probe eval`, or at a directory tree of such runs"
            )
    elif path.is_file():
        files = [path]
    else:
        raise SoftpromptError(
            f"{path}: no such file or directory; point at a run directory written by `softprompt probe ...` "
            f"or at its {PREDICTIONS}"
        )
    rows = []
    for file in files:
        read = read_jsonl(file)
        if not read:
            raise SoftpromptError(f"no predictions in {file}; the run may be unfinished, so run it again")
        for lineno, row in read:
            _check_row(row, file, lineno)
            rows.append({**row, SOURCE_PATH: str(file), SOURCE_LINE: lineno})
    return rows


def _check_row(row: Mapping[str, Any], path: Path, lineno: int) -> None:
    """Fail on a row that does not look like a row written by ``softprompt probe``."""
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise SoftpromptError(
            f"{path}, line {lineno}: a prediction needs the keys {', '.join(map(repr, REQUIRED))}; missing "
            f"{', '.join(map(repr, missing))}; is this a predictions.jsonl written by `softprompt probe`?"
        )
    for key in ("relation", "subject", "answer"):
        if not isinstance(row[key], str):
            raise SoftpromptError(f'{path}, line {lineno}: "{key}" must be a string, got {row[key]!r}')
    rank = row["rank"]
    # bool is an int subclass, but true/false is never a rank.
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise SoftpromptError(f'{path}, line {lineno}: "rank" must be an integer >= 1 (1 = best), got {rank!r}')


def _where(row: Mapping[str, Any]) -> str:
    """'FILE, line N' for a row read by load_predictions, or a description of a row built in memory."""
    if SOURCE_PATH in row:
        return f"{row[SOURCE_PATH]}, line {row[SOURCE_LINE]}"
    return "a row built in memory"


def _describe(key: Key | tuple[str, str, str]) -> str:
    relation, subject, answer = key[:3]
    repeat = f" (occurrence {key[3]})" if len(key) > 3 and key[3] > 1 else ""
    return f"{relation}: {subject!r} -> {answer!r}{repeat}"


def score(rank: int, metric: Metric) -> float:
    """One example's contribution to a metric: 1/0 for P@k (hit or miss), the reciprocal rank for MRR."""
    if metric == "p@1":
        return float(rank == 1)
    if metric == "p@10":
        return float(rank <= 10)
    if metric == "mrr":
        return 1.0 / rank
    raise SoftpromptError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def example_scores(rows: Iterable[Mapping[str, Any]], metric: Metric) -> dict[Key, float]:
    """Per-example scores keyed by (relation, subject, answer, occurrence), the identity of a test fact.

    Repeats of a fact within one predictions file are numbered in file order. The same fact in two
    different files would make the pairing ambiguous, so it is an error; it usually means that a
    directory tree holds two runs of the same relation (e.g. a soft and a deep prompt).
    """
    scores: dict[Key, float] = {}
    first: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    count: dict[tuple[str, str, str], int] = {}
    for row in rows:
        fact = (row["relation"], row["subject"], row["answer"])
        if fact in first and first[fact].get(SOURCE_PATH) != row.get(SOURCE_PATH):
            raise SoftpromptError(
                f"the fact {_describe(fact)} occurs twice in one run ({_where(first[fact])} and {_where(row)}); "
                "point at a single run, or at a tree holding one run per relation"
            )
        first.setdefault(fact, row)
        count[fact] = count.get(fact, 0) + 1
        scores[(*fact, count[fact])] = score(row["rank"], metric)
    return scores


@dataclass(frozen=True)
class PairedScores:
    """Two runs' scores on the same facts, aligned: a[i] and b[i] are both scores of keys[i].

    The facts are sorted by (relation, subject, answer), so each relation's facts are contiguous.
    """

    a: np.ndarray
    b: np.ndarray
    groups: np.ndarray  # the relation of each fact
    keys: list[Key]


def pair_runs(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]],
              metric: Metric) -> PairedScores:
    """Align two runs fact by fact; they must have scored exactly the same facts.

    A paired test on the common subset of two different test sets would silently compare something else
    than the runs' reported metrics, so differing sets are an error that says how they differ.
    """
    scores_a = example_scores(rows_a, metric)
    scores_b = example_scores(rows_b, metric)
    only_a = sorted(scores_a.keys() - scores_b.keys())
    only_b = sorted(scores_b.keys() - scores_a.keys())
    if only_a or only_b:
        examples = "; ".join(f"e.g. {_describe(keys[0])} only in {side}"
                             for keys, side in ((only_a, "A"), (only_b, "B")) if keys)
        raise SoftpromptError(
            f"the runs were not evaluated on the same test facts: {len(only_a)} examples only in A, "
            f"{len(only_b)} only in B ({examples}); compare runs of the same relations, split and limits"
        )
    keys = sorted(scores_a)
    return PairedScores(
        a=np.array([scores_a[key] for key in keys], dtype=np.float64),
        b=np.array([scores_b[key] for key in keys], dtype=np.float64),
        groups=np.array([key[0] for key in keys], dtype=object),
        keys=keys,
    )


def _macro_weights(groups: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Weights w with sum(w * values) == macro_mean(values, groups): 1 / (#relations * #facts of its relation)."""
    _, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[index.ravel()])


def macro_mean(values: Sequence[float] | np.ndarray, groups: Sequence[Any] | np.ndarray) -> float:
    """The unweighted mean over relations of the per-relation means, as LAMA tables report.

    A relation with few facts counts as much as one with many, so this differs from the plain mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or len(values) != len(groups):
        raise ValueError(f"need as many groups as values (got {len(groups)} and {len(values)}), and at least one")
    return float(np.sum(_macro_weights(groups) * values))


def paired_permutation_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                            groups: Sequence[Any] | np.ndarray, permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of the difference of the macro-averages of B and A.

    Under the null hypothesis the two systems are exchangeable, so the labels A and B of each pair may be
    swapped (independently, with probability 1/2) without changing the distribution of the statistic.
    Swapping pair i flips the sign of its difference d_i, and the macro-average difference is the
    weighted sum sum_i w_i * d_i, so each permutation is one matrix-vector product.

    p = (1 + #{permutations at least as extreme}) / (1 + permutations): the observed assignment counts as
    one of the permutations, so p > 0 and p is a valid (slightly conservative) p-value. Identical systems
    give p = 1 exactly.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(groups) != len(a):
        raise ValueError(f"a, b and groups must be 1-D of the same length (got {len(a)}, {len(b)}, {len(groups)})")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    n = len(a)
    weighted = _macro_weights(groups) * (b - a)
    total = float(weighted.sum())
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(1, n))
    extreme = 0
    for start in range(0, permutations, chunk):
        size = min(chunk, permutations - start)
        # One fair coin per (permutation, pair): the bits of random bytes, several times faster than
        # drawing floats. Swapping pair i turns +w_i d_i into -w_i d_i, i.e. subtracts 2 w_i d_i.
        swapped = np.unpackbits(rng.integers(0, 256, (size, (n + 7) // 8), dtype=np.uint8), axis=1, count=n)
        stats = total - 2.0 * (swapped @ weighted)
        # The tolerance keeps permutations that equal the observed statistic up to rounding (e.g. all of
        # them when the systems are identical) from being missed.
        extreme += int(np.count_nonzero(np.abs(stats) >= abs(total) - 1e-12))
    return (1 + extreme) / (1 + permutations)


def paired_bootstrap_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                              groups: Sequence[Any] | np.ndarray, confidence: float = 0.95,
                              resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro-average difference B - A.

    The permutation test says whether two systems differ; it cannot say that they are *close*. A claim such
    as "within 1 point of the full mixture" needs the interval instead: it holds when the interval's lower
    end is above -1 point. Pairs are resampled with replacement within each relation (a stratified
    bootstrap), so every resample keeps the relations and their sizes and the macro-average means the same
    thing as in the observed statistic.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(groups) != len(a) or len(a) == 0:
        raise ValueError(f"a, b and groups must be 1-D of the same, non-zero length "
                         f"(got {len(a)}, {len(b)}, {len(groups)})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    index = index.ravel()
    members = [np.flatnonzero(index == g) for g in range(index.max() + 1)]
    rng = np.random.default_rng(seed)
    differences = b - a
    # The macro-average of a resample is the mean over relations of each relation's resampled mean.
    macro = np.zeros(resamples)
    for rows in members:
        chunk = max(1, CHUNK_CELLS // len(rows))
        for start in range(0, resamples, chunk):
            size = min(chunk, resamples - start)
            drawn = rng.integers(0, len(rows), (size, len(rows)))
            macro[start:start + size] += differences[rows][drawn].mean(axis=1)
    macro /= len(members)
    tail = (1 - confidence) / 2
    low, high = np.quantile(macro, [tail, 1 - tail])
    return float(low), float(high)


def sign_counts(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[int, int, int]:
    """(wins, losses, ties) of B against A: pairs where b > a, where b < a, and where they are equal."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    wins = int(np.count_nonzero(b > a))
    losses = int(np.count_nonzero(b < a))
    return wins, losses, a.size - wins - losses


def sign_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign test: p = min(1, 2 * P(X <= min(wins, losses))), X ~ Binomial(n, 1/2).

    Ties carry no information about which system is better and are left out (n counts the other pairs);
    with no untied pair at all, p = 1. The tail is summed in exact integer arithmetic (and divided by
    2**n only at the end) because floats underflow or lose the tail for n in the thousands.
    """
    wins, losses, _ = sign_counts(a, b)
    n = wins + losses
    if n == 0:
        return 1.0
    term, tail = 1, 0  # term = comb(n, k), built up incrementally: cheaper than calling math.comb per k
    for k in range(min(wins, losses) + 1):
        tail += term
        term = term * (n - k) // (k + 1)
    return min(1.0, float(Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class MetricComparison:
    """Run A against run B on one metric. Metric values are fractions in [0, 1] (tables show ×100)."""

    metric: str
    macro_a: float
    macro_b: float
    difference: float  # macro_b - macro_a
    interval: tuple[float, float]  # bootstrap interval of the difference at confidence 1 - alpha
    p_permutation: float  # paired permutation test on the macro-average difference
    p_sign: float  # exact sign test on the per-example scores
    wins: int  # examples on which B scores higher than A
    losses: int  # examples on which B scores lower than A
    ties: int
    n_examples: int
    n_relations: int
    better: Literal["A", "B"] | None  # the significantly better run (permutation test, p < alpha), if any


@dataclass(frozen=True)
class Comparison:
    """The result of compare_runs: one MetricComparison per metric, and the settings that produced them."""

    run_a: str
    run_b: str
    permutations: int
    seed: int
    alpha: float
    metrics: list[MetricComparison] = field(default_factory=list)

    def verdict(self) -> str:
        """One line saying which run is significantly better on which metrics."""
        parts = []
        for side in ("B", "A"):
            names = [m.metric.upper() for m in self.metrics if m.better == side]
            if names:
                parts.append(f"{side} is significantly better on {', '.join(names)}")
        ties = [m.metric.upper() for m in self.metrics if m.better is None]
        if ties:
            parts.append(f"no significant difference on {', '.join(ties)}")
        return "; ".join(parts) + f" (paired permutation test, p < {self.alpha:g})"


def compare_runs(path_a: str | Path, path_b: str | Path, metrics: Iterable[Metric] = METRICS,
                 permutations: int = 10000, seed: int = 0, alpha: float = 0.02) -> Comparison:
    """Compare two runs (or two trees of runs) on the same test facts, metric by metric.

    ``better`` names the run whose macro-average is higher when the permutation test rejects equality at
    ``alpha``; ``interval`` bounds the difference at confidence 1 - ``alpha`` (as many bootstrap resamples as
    permutations), which says how close two runs that do not differ significantly are. The paper's bold
    entries are the best run and every run that is not significantly worse.
    """
    metrics = list(dict.fromkeys(metrics))  # keep order, drop repeats
    for metric in metrics:
        if metric not in METRICS:
            raise SoftpromptError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if not metrics:
        raise SoftpromptError(f"no metric to compare; choose from {', '.join(METRICS)}")
    if permutations < 1:
        raise SoftpromptError(f"the number of permutations must be at least 1, got {permutations}")
    if not 0 < alpha < 1:
        raise SoftpromptError(f"the significance level alpha must be between 0 and 1, got {alpha}")
    rows_a = load_predictions(path_a)
    rows_b = load_predictions(path_b)
    results = []
    for metric in metrics:
        paired = pair_runs(rows_a, rows_b, metric)
        macro_a = macro_mean(paired.a, paired.groups)
        macro_b = macro_mean(paired.b, paired.groups)
        p_permutation = paired_permutation_test(paired.a, paired.b, paired.groups, permutations, seed)
        wins, losses, ties = sign_counts(paired.a, paired.b)
        better = None
        if p_permutation < alpha and macro_a != macro_b:
            better = "B" if macro_b > macro_a else "A"
        results.append(MetricComparison(
            metric=metric, macro_a=macro_a, macro_b=macro_b, difference=macro_b - macro_a,
            interval=paired_bootstrap_interval(paired.a, paired.b, paired.groups, 1 - alpha, permutations, seed),
            p_permutation=p_permutation, p_sign=sign_test(paired.a, paired.b),
            wins=wins, losses=losses, ties=ties,
            n_examples=len(paired.keys), n_relations=len(set(paired.groups.tolist())), better=better,
        ))
    return Comparison(run_a=str(path_a), run_b=str(path_b), permutations=permutations, seed=seed, alpha=alpha,
                      metrics=results)
