"""Tests for softprompt.metrics: gold ranks over the vocabulary, P@k, MRR and macro averages."""

from __future__ import annotations

import pytest
import torch

from softprompt.metrics import answer_ranks, macro_average, ranking_metrics


def test_answer_ranks_hand_built():
    """The rank is 1 + the number of strictly higher logits; ties count in the gold answer's favour."""
    logits = torch.tensor([
        [1.0, 3.0, 2.0, 3.0],
        [0.0, 0.0, 0.0, 0.0],
        [5.0, 1.0, 1.0, 1.0],
        [1.0, 3.0, 2.0, 3.0],
        [-1.0, -2.0, -3.0, -4.0],
    ])
    answers = torch.tensor([2, 3, 1, 3, 3])
    assert answer_ranks(logits, answers).tolist() == [3, 1, 2, 1, 4]


def test_answer_ranks_are_invariant_to_log_softmax():
    """Ranks from logits and from log-probabilities agree (predict ranks log-probs)."""
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    answers = torch.arange(8) * 6
    assert torch.equal(answer_ranks(logits, answers), answer_ranks(logits.log_softmax(-1), answers))


def test_ranking_metrics_hand_computed():
    """Ranks [1, 2, 10, 11]: P@1 1/4, P@10 3/4, MRR the mean reciprocal rank."""
    metrics = ranking_metrics([1, 2, 10, 11])
    assert metrics == {"p@1": 0.25, "p@10": 0.75, "mrr": (1 + 1 / 2 + 1 / 10 + 1 / 11) / 4, "n": 4}
    assert ranking_metrics(torch.tensor([1, 2, 10, 11])) == metrics
    assert ranking_metrics([3]) == {"p@1": 0.0, "p@10": 1.0, "mrr": 1 / 3, "n": 1}


def test_ranking_metrics_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no ranks"):
        ranking_metrics([])


def test_macro_average_is_unweighted():
    """Each relation counts once, whatever its number of queries."""
    per_relation = {
        "P19": {"p@1": 1.0, "p@10": 1.0, "mrr": 1.0, "n": 1000},
        "P36": {"p@1": 0.0, "p@10": 0.5, "mrr": 0.25, "n": 2},
        "P37": {"p@1": 0.5, "p@10": 0.0, "mrr": 0.5, "n": 10},
    }
    assert macro_average(per_relation) == {"p@1": 0.5, "p@10": 0.5, "mrr": 0.5833333333333334, "relations": 3}
    single = macro_average({"P19": per_relation["P19"]})
    assert single == {"p@1": 1.0, "p@10": 1.0, "mrr": 1.0, "relations": 1}


def test_macro_average_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no relations"):
        macro_average({})
