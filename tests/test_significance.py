"""Tests for the paired significance tests (softprompt.significance) and the ``compare`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from softprompt.cli import app
from softprompt.errors import SoftpromptError
from softprompt.significance import (
    compare_runs,
    example_scores,
    load_predictions,
    macro_mean,
    pair_runs,
    paired_bootstrap_interval,
    paired_permutation_test,
    sign_test,
)

runner = CliRunner()


def prediction(relation: str, subject: str, rank: int) -> dict[str, Any]:
    return {"relation": relation, "subject": subject, "answer": f"{subject}-answer", "rank": rank,
            "answer_logprob": -1.0, "top10": [["x", -0.5]]}


def write_run(directory: Path, rows: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return directory


def clearly_better() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 examples in two relations: B is right wherever A is, and on 60 more; never the reverse."""
    a = np.zeros(200)
    a[:50] = 1
    b = a.copy()
    b[50:110] = 1
    groups = np.array(["P19"] * 120 + ["P36"] * 80)
    return a, b, groups


def test_permutation_test_gives_one_for_identical_systems() -> None:
    values = np.random.default_rng(1).random(50)
    groups = ["P19"] * 20 + ["P36"] * 30
    assert paired_permutation_test(values, values, groups, permutations=500) == 1.0


def test_permutation_test_detects_a_clearly_better_system() -> None:
    a, b, groups = clearly_better()
    p = paired_permutation_test(a, b, groups, permutations=5000)
    assert p < 0.001
    assert p == paired_permutation_test(b, a, groups, permutations=5000)  # two-sided


def test_permutation_test_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(80), rng.random(80)
    groups = ["P19"] * 30 + ["P36"] * 50
    p = paired_permutation_test(a, b, groups, permutations=2000, seed=7)
    assert 0 < p <= 1
    assert p == paired_permutation_test(a, b, groups, permutations=2000, seed=7)


def test_sign_test_matches_hand_computed_value() -> None:
    a = [0] * 9 + [1] + [1] * 5
    b = [1] * 9 + [0] + [1] * 5  # B wins 9, loses 1; five ties, left out
    # 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024
    assert sign_test(a, b) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(b, a) == sign_test(a, b)


def test_sign_test_edge_cases() -> None:
    assert sign_test([1, 0, 1], [1, 0, 1]) == 1.0  # only ties
    assert sign_test([0, 1], [1, 0]) == 1.0  # one win, one loss
    # Thousands of pairs: exact where floats of each term would under- or overflow.
    assert sign_test([0] * 1000, [1] * 1000) == pytest.approx(2.0**-999, rel=1e-12)
    wins, losses = 1060, 940
    expected = 2 * sum(math.comb(2000, k) for k in range(losses + 1)) / 2**2000
    assert sign_test([0] * wins + [1] * losses, [1] * wins + [0] * losses) == pytest.approx(expected, rel=1e-12)
    assert 0.005 < expected < 0.01  # about 2.7 standard deviations


def test_macro_mean_weights_relations_equally() -> None:
    values = [1, 0, 0, 0, 1, 1]
    groups = ["P19", "P19", "P19", "P19", "P36", "P36"]
    # P19: 1/4, P36: 2/2; the macro-average is (0.25 + 1) / 2, not the plain mean 3/6.
    assert macro_mean(values, groups) == pytest.approx(0.625)


def test_example_scores_per_metric() -> None:
    rows = [prediction("P19", "a", 1), prediction("P19", "b", 4), prediction("P19", "c", 20)]
    key = ("P19", "b", "b-answer", 1)
    assert example_scores(rows, "p@1")[key] == 0.0
    assert example_scores(rows, "p@10")[key] == 1.0
    assert example_scores(rows, "mrr")[key] == 0.25
    # LAMA repeats some facts within a test set: repeats are numbered, not merged.
    repeated = example_scores([*rows, prediction("P19", "a", 2)], "mrr")
    assert repeated[("P19", "a", "a-answer", 1)] == 1.0 and repeated[("P19", "a", "a-answer", 2)] == 0.5


def test_pairing_error_names_the_counts() -> None:
    rows_a = [prediction("P19", s, 1) for s in ("a", "b", "c")]
    rows_b = [prediction("P19", s, 1) for s in ("b", "c", "d", "e")]
    with pytest.raises(SoftpromptError, match=r"1 examples only in A, 2 only in B") as info:
        pair_runs(rows_a, rows_b, "p@1")
    assert "'a'" in str(info.value) and "'d'" in str(info.value)


def test_pair_runs_aligns_by_fact_not_by_order() -> None:
    rows_a = [prediction("P36", "x", 1), prediction("P19", "y", 5)]
    rows_b = [prediction("P19", "y", 1), prediction("P36", "x", 2)]
    paired = pair_runs(rows_a, rows_b, "mrr")
    assert paired.groups.tolist() == ["P19", "P36"]
    assert paired.a.tolist() == [0.2, 1.0]
    assert paired.b.tolist() == [1.0, 0.5]


def test_load_predictions_reads_a_file_a_run_or_a_tree(tmp_path: Path) -> None:
    write_run(tmp_path / "tree" / "P36" / "soft", [prediction("P36", "x", 1)])
    run = write_run(tmp_path / "tree" / "P19" / "soft", [prediction("P19", "y", 2), prediction("P19", "z", 3)])
    assert len(load_predictions(run)) == 2
    assert len(load_predictions(run / "predictions.jsonl")) == 2
    assert [row["relation"] for row in load_predictions(tmp_path / "tree")] == ["P19", "P19", "P36"]


def test_load_predictions_errors_name_file_and_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [prediction("P19", "y", 2)])
    path = run / "predictions.jsonl"
    path.write_text(path.read_text() + "{not json\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"predictions.jsonl, line 2: malformed JSON"):
        load_predictions(run)
    path.write_text(json.dumps({"relation": "P19", "subject": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"line 1: .*missing 'answer', 'rank'"):
        load_predictions(path)
    path.write_text(json.dumps(prediction("P19", "y", 0)) + "\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"line 1: \"rank\" must be an integer >= 1"):
        load_predictions(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoftpromptError, match=r"no predictions\.jsonl under"):
        load_predictions(tmp_path / "empty")
    with pytest.raises(SoftpromptError, match="no such file or directory"):
        load_predictions(tmp_path / "missing")


def test_a_tree_with_two_runs_of_one_relation_is_an_error(tmp_path: Path) -> None:
    write_run(tmp_path / "tree" / "P19" / "soft", [prediction("P19", "y", 1)])
    write_run(tmp_path / "tree" / "P19" / "deep", [prediction("P19", "y", 2)])
    with pytest.raises(SoftpromptError, match=r"occurs twice.*deep.*line 1.*soft.*line 1"):
        example_scores(load_predictions(tmp_path / "tree"), "p@1")


def test_compare_runs_finds_the_better_run(tmp_path: Path) -> None:
    a, b, groups = clearly_better()
    rows_a = [prediction(g, str(i), 1 if hit else 50) for i, (hit, g) in enumerate(zip(a, groups, strict=True))]
    rows_b = [prediction(g, str(i), 1 if hit else 50) for i, (hit, g) in enumerate(zip(b, groups, strict=True))]
    result = compare_runs(write_run(tmp_path / "a", rows_a), write_run(tmp_path / "b", rows_b),
                          metrics=("p@1",), permutations=2000)
    (p1,) = result.metrics
    assert p1.better == "B"
    assert (p1.wins, p1.losses, p1.ties) == (60, 0, 140)
    assert (p1.n_examples, p1.n_relations) == (200, 2)
    assert p1.macro_a == pytest.approx(macro_mean(a, groups))
    assert p1.difference == pytest.approx(p1.macro_b - p1.macro_a)
    low, high = p1.interval  # at confidence 1 - alpha = 98%; B gains 60 facts of 200 and never loses one
    assert 0 < low < p1.difference < high


# --- the compare command ---------------------------------------------------------------------------------


def invoke(*args: object) -> Result:
    result = runner.invoke(app, [str(arg) for arg in args])
    # The runner keeps an escaped exception in result.exception: only the SystemExit of an exit code may end it.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    ranks_a = [1, 3, 1, 12, 2, 1]
    ranks_b = [1, 1, 1, 4, 1, 1]
    subjects = ["a", "b", "c", "d", "e", "f"]
    relations = ["P19"] * 4 + ["P36"] * 2
    return (
        write_run(tmp_path / "a", [prediction(r, s, k) for r, s, k in zip(relations, subjects, ranks_a, strict=True)]),
        write_run(tmp_path / "b", [prediction(r, s, k) for r, s, k in zip(relations, subjects, ranks_b, strict=True)]),
    )


def test_compare_command_prints_the_metrics(runs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = invoke("compare", *runs, "--permutations", 200, "--json", out)
    assert result.exit_code == 0, result.output
    for fragment in ("P@1", "P@10", "MRR", "no significant difference", "98%", "[+0.0,"):
        assert fragment in result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [m["metric"] for m in doc["metrics"]] == ["p@1", "p@10", "mrr"]
    assert doc["permutations"] == 200
    # B never ranks a fact worse than A does, so no resample can make B - A negative.
    assert all(0 <= m["interval"][0] <= m["difference"] <= m["interval"][1] for m in doc["metrics"])


def test_compare_command_metric_option(runs: tuple[Path, Path]) -> None:
    result = invoke("compare", *runs, "--metric", "mrr", "--permutations", 100)
    assert result.exit_code == 0, result.output
    assert "MRR" in result.output and "P@10" not in result.output


def test_compare_command_user_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke("compare", runs[0], tmp_path / "missing")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert "missing" in result.stderr
    other = write_run(tmp_path / "other", [prediction("P19", "zzz", 1)])
    result = invoke("compare", runs[0], other)
    assert result.exit_code == 2, result.output
    assert "not evaluated on the same test facts" in result.stderr
    result = invoke("compare", *runs, "--alpha", 2)
    assert result.exit_code == 2, result.output


# --- the bootstrap interval ------------------------------------------------------------------------------


def test_bootstrap_interval_of_a_constant_difference_is_that_difference() -> None:
    a = np.random.default_rng(3).random(40)
    low, high = paired_bootstrap_interval(a, a + 0.25, ["P19"] * 15 + ["P36"] * 25, resamples=300)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_bootstrap_interval_resamples_within_relations_and_macro_averages() -> None:
    # P19's one fact always differs by 1 and P36's three never do: resampling within each relation keeps
    # every resample's macro difference at (1 + 0) / 2; pooling the facts would let it range over [0, 1].
    low, high = paired_bootstrap_interval([0, 0, 0, 0], [1, 0, 0, 0], ["P19", "P36", "P36", "P36"],
                                          resamples=500)
    assert (low, high) == (pytest.approx(0.5), pytest.approx(0.5))


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(4)
    a = (rng.random(2000) < 0.5).astype(float)
    b = np.where(rng.random(2000) < 0.2, 1 - a, a)  # B flips 20% of A's outcomes
    differences = b - a
    half = 1.96 * differences.std() / np.sqrt(len(differences))
    low, high = paired_bootstrap_interval(a, b, ["P19"] * 2000, resamples=4000, seed=1)
    assert low < differences.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert paired_bootstrap_interval(a, b, ["P19"] * 2000, resamples=4000, seed=1) == (low, high)


def test_bootstrap_interval_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_interval([0], [1], ["P19"], confidence=1.0)
    with pytest.raises(ValueError, match="same, non-zero length"):
        paired_bootstrap_interval([0, 1], [1], ["P19"])
