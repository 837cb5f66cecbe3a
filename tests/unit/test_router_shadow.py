"""Shadow output comparison, pair statistics and the background mirror."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from turnout.router.shadow import PairStats, ShadowMirror, ShadowStats, compare_outputs

Outputs = Mapping[str, np.ndarray]


def test_classification_by_argmax_of_probabilities() -> None:
    primary = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)}
    shadow = {"probabilities": np.array([[0.8, 0.2], [0.7, 0.3], [0.55, 0.45], [0.1, 0.9]], dtype=np.float32)}
    result = compare_outputs(primary, shadow, "classification")
    assert (result.rows, result.classified_rows, result.agreements) == (4, 4, 3)
    assert result.disagreement_rate == pytest.approx(0.25)
    assert result.mean_abs_diff is not None and result.mean_abs_diff > 0  # scores are diffed too


def test_classification_of_integer_and_string_labels() -> None:
    ints = compare_outputs(
        {"label": np.array([0, 1, 2, 1])}, {"label": np.array([0, 1, 1, 1])}, "classification"
    )
    assert (ints.classified_rows, ints.agreements, ints.diffed_rows) == (4, 3, 0)
    words = compare_outputs(
        {"label": np.array(["cat", "dog"], dtype=object)}, {"label": np.array(["cat", "cow"], dtype=object)}
    )
    assert (words.classified_rows, words.agreements) == (2, 1)


def test_classification_of_single_score_is_thresholded() -> None:
    result = compare_outputs(
        {"p": np.array([[0.9], [0.4], [0.51]])}, {"p": np.array([[0.7], [0.6], [0.52]])}, "classification"
    )
    assert result.agreements == 2


def test_row_agrees_only_if_every_classification_output_agrees() -> None:
    primary = {"label": np.array([1, 0, 1]), "probabilities": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])}
    shadow = {"label": np.array([1, 0, 0]), "probabilities": np.array([[0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])}
    result = compare_outputs(primary, shadow, "auto")
    assert (result.classified_rows, result.agreements) == (3, 1)


def test_regression_differences() -> None:
    primary = {"y": np.array([1.0, 2.0, 0.0, -4.0])}
    shadow = {"y": np.array([1.5, 2.0, 0.0, 4.0])}
    result = compare_outputs(primary, shadow, "regression")
    assert result.classified_rows == 0 and result.disagreement_rate is None
    assert result.diffed_rows == 4
    assert result.mean_abs_diff == pytest.approx((0.5 + 0 + 0 + 8) / 4)
    assert result.mean_rel_diff == pytest.approx((0.5 / 1.5 + 0 + 0 + 2.0) / 4)


def test_regression_of_multi_column_rows_and_integer_outputs() -> None:
    result = compare_outputs(
        {"y": np.array([[1, 3], [2, 2]])}, {"y": np.array([[2, 3], [2, 2]])}, "regression"
    )
    assert result.mean_abs_diff == pytest.approx(0.25)


def test_non_finite_values() -> None:
    primary = {"y": np.array([np.nan, np.inf, 1.0, np.nan])}
    shadow = {"y": np.array([np.nan, np.inf, np.nan, 2.0])}
    result = compare_outputs(primary, shadow, "regression")
    assert result.mean_abs_diff == 0.0  # equal NaN/inf pairs differ by 0, broken ones are left out
    assert result.mean_rel_diff == pytest.approx(0.5)  # two broken elements count as 1 each


def test_auto_rules() -> None:
    auto = compare_outputs(
        {
            "label": np.array([1, 2]),
            "scores": np.array([[0.2, 0.8], [0.9, 0.1]]),
            "value": np.array([1.0, 2.0]),
        },
        {
            "label": np.array([1, 2]),
            "scores": np.array([[0.3, 0.7], [0.9, 0.1]]),
            "value": np.array([1.0, 3.0]),
        },
        "auto",
    )
    assert (auto.classified_rows, auto.agreements) == (2, 2)
    assert auto.diffed_rows == 2
    regression = compare_outputs({"v": np.array([[0.5], [0.6]])}, {"v": np.array([[0.5], [0.4]])})
    assert regression.classified_rows == 0 and regression.diffed_rows == 2


def test_structural_mismatches() -> None:
    missing = compare_outputs({"a": np.zeros((2, 3)), "b": np.zeros(2)}, {"a": np.zeros((2, 3))})
    assert missing.mismatched == ("b",)
    shapes = compare_outputs({"p": np.eye(3)}, {"p": np.eye(3)[:2]}, "classification")
    assert shapes.mismatched == ("p",) and shapes.agreements == 0 and shapes.classified_rows == 3
    nothing = compare_outputs({"a": np.zeros(4)}, {"b": np.zeros(4)})
    assert nothing.rows == 4 and nothing.mismatched == ("a", "b")
    empty = compare_outputs({"a": np.zeros((0, 3))}, {"a": np.zeros((0, 3))})
    assert empty.rows == 0
    with pytest.raises(ValueError, match="task"):
        compare_outputs({}, {}, "ranking")


def test_pair_stats_aggregate() -> None:
    stats = PairStats("m", "1", "2")
    assert stats.disagreement_rate is None and stats.mean_primary_latency_s is None
    stats.add(compare_outputs({"l": np.array([1, 2])}, {"l": np.array([1, 3])}), 0.01, 0.03)
    stats.add(compare_outputs({"l": np.array([1, 2])}, {"l": np.array([1, 2])}), 0.03, 0.05)
    assert (stats.requests, stats.rows, stats.classified_rows, stats.agreements) == (2, 4, 4, 3)
    assert stats.disagreement_rate == pytest.approx(0.25)
    assert stats.mean_primary_latency_s == pytest.approx(0.02)
    assert stats.mean_shadow_latency_s == pytest.approx(0.04)
    assert stats.to_json()["disagreement_rate"] == pytest.approx(0.25)


def test_shadow_stats_registry() -> None:
    book = ShadowStats()
    book.pair("a", "1", "2").dropped += 1
    book.pair("b", "1", "2").dropped += 2
    assert book.pair("a", "1", "2").dropped == 1  # same object on second use
    assert [p.model for p in book.pairs()] == ["a", "b"]
    assert [p.dropped for p in book.pairs("b")] == [2]
    book.reset("a", frozenset({"9"}))
    assert book.get("a", "1", "2") is not None
    book.reset("a")
    assert book.get("a", "1", "2") is None and book.get("b", "1", "2") is not None


PRIMARY = {"label": np.array([0, 1, 1, 0])}


async def _answer(outputs: Outputs, latency: float = 0.02) -> tuple[Outputs, float]:
    await asyncio.sleep(0)
    return outputs, latency


async def test_mirror_records_comparisons() -> None:
    mirror = ShadowMirror(max_in_flight=4)
    assert mirror.mirror(
        lambda: _answer({"label": np.array([0, 1, 0, 0])}), PRIMARY, 0.01, ("1", "2"), model="m"
    )
    assert mirror.in_flight == 1
    await mirror.close(grace_s=1.0)
    stats = mirror.stats.get("m", "1", "2")
    assert stats is not None
    assert (stats.requests, stats.classified_rows, stats.agreements) == (1, 4, 3)
    assert stats.shadow_latency_sum_s == pytest.approx(0.02)
    assert mirror.in_flight == 0


async def test_mirror_drops_beyond_max_in_flight() -> None:
    release = asyncio.Event()
    started = 0

    async def slow() -> tuple[Outputs, float]:
        nonlocal started
        started += 1
        await release.wait()
        return PRIMARY, 0.01

    mirror = ShadowMirror(max_in_flight=3)
    accepted = [mirror.mirror(slow, PRIMARY, 0.01, ("1", "2")) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    stats = mirror.stats.pair("", "1", "2")
    assert stats.dropped == 2 and mirror.in_flight == 3
    await asyncio.sleep(0)
    assert started == 3
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert mirror.in_flight == 0 and stats.requests == 3 and stats.agreements == 12
    # Slots are free again.
    assert mirror.mirror(lambda: _answer(PRIMARY), PRIMARY, 0.01, ("1", "2"))
    await mirror.close(grace_s=1.0)
    assert stats.requests == 4


async def test_mirror_swallows_errors_and_timeouts() -> None:
    async def broken() -> tuple[Outputs, float]:
        raise RuntimeError("shadow model exploded")

    async def hangs() -> tuple[Outputs, float]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def garbage() -> tuple[Outputs, float]:
        return "not outputs", 0.1  # type: ignore[return-value]

    mirror = ShadowMirror(max_in_flight=8, timeout_s=0.05)
    assert mirror.mirror(broken, PRIMARY, 0.01, ("1", "2"), model="m")
    assert mirror.mirror(hangs, PRIMARY, 0.01, ("1", "2"), model="m")
    assert mirror.mirror(garbage, PRIMARY, 0.01, ("1", "2"), model="m")
    assert mirror.mirror(lambda: _answer(PRIMARY), PRIMARY, 0.01, ("1", "2"), model="m")
    await mirror.close(grace_s=2.0)
    stats = mirror.stats.get("m", "1", "2")
    assert stats is not None
    assert stats.shadow_errors == 3 and stats.requests == 1


async def test_close_cancels_in_flight_and_refuses_new_work() -> None:
    cancelled = asyncio.Event()

    async def forever() -> tuple[Outputs, float]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    mirror = ShadowMirror(max_in_flight=2)
    assert mirror.mirror(forever, PRIMARY, 0.01, ("1", "2"))
    await asyncio.sleep(0)
    await mirror.close()
    assert cancelled.is_set() and mirror.in_flight == 0
    assert not mirror.mirror(lambda: _answer(PRIMARY), PRIMARY, 0.01, ("1", "2"))
    assert mirror.stats.pair("", "1", "2").dropped == 1
    assert mirror.stats.pair("", "1", "2").shadow_errors == 0  # cancellation is not an error


def test_mirror_without_running_loop_drops() -> None:
    mirror = ShadowMirror()
    assert not mirror.mirror(lambda: _answer(PRIMARY), PRIMARY, 0.01, ("1", "2"))
    assert mirror.stats.pair("", "1", "2").dropped == 1


def test_mirror_validates_configuration() -> None:
    with pytest.raises(ValueError):
        ShadowMirror(max_in_flight=0)
    with pytest.raises(ValueError):
        ShadowMirror(task="ranking")  # type: ignore[arg-type]
