"""Tests for softprompt.metrics: gold ranks over the vocabulary, P@k, MRR and macro averages."""

from __future__ import annotations

import pytest
import torch

from softprompt.metrics import accuracy, answer_ranks, choice_predictions, macro_average, ranking_metrics


def test_answer_ranks_hand_built():
    """The rank is the number of logits at least as high as the gold one: ties count against the answer, so a
    constant row ranks the answer last."""
    logits = torch.tensor([
        [1.0, 3.0, 2.0, 3.0],
        [0.0, 0.0, 0.0, 0.0],
        [5.0, 1.0, 1.0, 1.0],
        [1.0, 3.0, 2.0, 3.0],
        [-1.0, -2.0, -3.0, -4.0],
    ])
    answers = torch.tensor([2, 3, 1, 3, 3])
    assert answer_ranks(logits, answers).tolist() == [3, 4, 4, 2, 4]


def test_degenerate_scores_never_look_like_success():
    """A collapsed (constant) or NaN prompt ranks every answer last and predicts no choice."""
    vocab = 50
    constant = torch.zeros(3, vocab)
    nan = torch.full((3, vocab), float("nan"))
    partly = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    partly[:, 7] = float("nan")
    answers = torch.tensor([0, 1, 2])
    for logits in (constant, nan, partly):
        assert answer_ranks(logits, answers).tolist() == [vocab] * 3
        assert ranking_metrics(answer_ranks(logits, answers)) == {"p@1": 0.0, "p@10": 0.0, "mrr": 1 / vocab, "n": 3}
    inf = torch.tensor([[float("inf"), float("inf"), 0.0]])
    assert answer_ranks(inf, torch.tensor([0])).tolist() == [2]  # a tie at +inf counts against the answer too
    scores = torch.tensor([[0.1, 0.9], [float("nan"), 0.0], [float("-inf"), 0.0], [0.7, 0.2]])
    assert choice_predictions(scores).tolist() == [1, -1, -1, 0]
    assert accuracy(choice_predictions(scores).tolist(), [1, 1, 1, 0]) == 0.5


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
