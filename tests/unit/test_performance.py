"""Live performance statistics: pure functions and the per-version tally."""

from __future__ import annotations

import math

import numpy as np
import pytest

from turnout.server.observe.performance import (
    PerformanceTally,
    binned_estimate,
    expected_accuracy,
    same_label,
    top_probability,
)


def test_top_probability_of_probabilities_and_logits() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert top_probability(probs).tolist() == pytest.approx([0.7, 0.8])
    logits = np.array([[2.0, 0.0, -1.0]])
    e = np.exp([2.0, 0.0, -1.0])
    assert top_probability(logits)[0] == pytest.approx(e[0] / e.sum())
    assert top_probability(np.array([0.25, 0.75])).tolist() == pytest.approx([0.75])  # one row, 1-D


def test_same_label_compares_numbers_as_numbers_and_the_rest_as_text() -> None:
    assert same_label(np.int64(2), 2)
    assert same_label(np.int64(2), 2.0)
    assert same_label(np.int64(2), "2")
    assert not same_label(np.int64(2), 1)
    assert same_label(b"setosa", "setosa")


def test_expected_accuracy_is_the_mean_confidence() -> None:
    assert expected_accuracy([]) is None
    assert expected_accuracy([0.5, 1.0]) == pytest.approx(0.75)


def test_binned_estimate_uses_observed_accuracy_per_bin() -> None:
    # labelled rows at confidence 0.95 are right only half the time: the estimate follows them
    lc = np.full(100, 0.95)
    ok = np.arange(100) % 2 == 0
    assert binned_estimate(lc, ok, [0.95, 0.95]) == pytest.approx(0.5)
    # a bin without enough labelled rows falls back to the confidence itself
    assert binned_estimate(lc, ok, [0.35]) == pytest.approx(0.35)
    assert binned_estimate(lc, ok, []) is None
    with pytest.raises(ValueError):
        binned_estimate([0.5], [True, False], [0.5])


def test_tally_classification_cumulative_and_window() -> None:
    t = PerformanceTally(window=4, task="classification")
    t.add_classified([True, True, False, True, False, False], [0.9, 0.8, 0.6, 0.7, 0.5, 0.4])
    assert t.labelled == 6 and t.correct == 3
    assert t.accuracy == pytest.approx(0.5)
    doc = t.to_json()
    assert doc["window"] == {"rows": 4, "size": 4, "accuracy": pytest.approx(0.25)}
    assert doc["labelled_mean_confidence"] == pytest.approx(sum([0.9, 0.8, 0.6, 0.7, 0.5, 0.4]) / 6)


def test_tally_regression_mae_rmse() -> None:
    t = PerformanceTally(window=2, task="regression")
    t.add_regressed([1.0, -3.0, 2.0])
    doc = t.to_json()
    assert doc["mae"] == pytest.approx(2.0)
    assert doc["rmse"] == pytest.approx(math.sqrt((1 + 9 + 4) / 3))
    assert doc["window"]["mae"] == pytest.approx(2.5)
    assert doc["window"]["rmse"] == pytest.approx(math.sqrt((9 + 4) / 2))
    assert t.accuracy is None


def test_tally_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PerformanceTally(window=0, task="classification")
    with pytest.raises(ValueError):
        PerformanceTally(window=1, task="ranking")
