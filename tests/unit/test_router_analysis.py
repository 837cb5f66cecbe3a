"""Version windows (histogram quantiles, merging) and canary gates."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from turnout.router.gates import GateResult, Gates, Labelled, evaluate_gates, wilson_lower_bound
from turnout.router.window import (
    BUCKET_EDGES,
    HIGHEST_LATENCY_S,
    LOWEST_LATENCY_S,
    NUM_BUCKETS,
    VersionWindow,
    WindowSnapshot,
    bucket_index,
)


def _window(requests: int, errors: int = 0, latency_s: float = 0.01, seed: int = 0) -> WindowSnapshot:
    """A window whose successful latencies are lognormal around ``latency_s``."""
    rng = random.Random(seed)
    window = VersionWindow()
    for i in range(requests):
        window.record(latency_s * math.exp(rng.gauss(0, 0.2)), ok=i >= errors)
    return window.snapshot()


def _gate(results: list[GateResult], name: str) -> GateResult:
    (result,) = [r for r in results if r.name == name]
    return result


def test_bucket_layout() -> None:
    assert NUM_BUCKETS == len(BUCKET_EDGES) + 1
    assert BUCKET_EDGES[0] == pytest.approx(LOWEST_LATENCY_S)
    assert BUCKET_EDGES[-1] == pytest.approx(HIGHEST_LATENCY_S)
    assert bucket_index(0.0) == 0
    assert bucket_index(math.nan) == 0
    assert bucket_index(5e-6) == 0
    assert bucket_index(1e-5) == 1
    assert bucket_index(1e3) == NUM_BUCKETS - 1
    for i in range(1, len(BUCKET_EDGES)):
        middle = math.sqrt(BUCKET_EDGES[i - 1] * BUCKET_EDGES[i])
        assert bucket_index(middle) == i


@pytest.mark.parametrize("scale", [50e-6, 3e-3, 0.2, 4.0])
def test_histogram_quantiles_are_close_to_exact(scale: float) -> None:
    rng = np.random.default_rng(11)
    samples = scale * rng.lognormal(0.0, 0.6, size=5000)
    window = VersionWindow()
    for s in samples:
        window.record(float(s), True)
    snap = window.snapshot()
    for q in (0.5, 0.9, 0.99):
        estimate = snap.quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(float(np.quantile(samples, q)), rel=0.13)
    assert snap.p50 == snap.quantile(0.5)
    assert snap.mean_latency_s == pytest.approx(float(samples.mean()))
    assert snap.quantile(1.0) == pytest.approx(float(samples.max()))


def test_quantiles_are_clamped_to_seen_range_and_handle_extremes() -> None:
    window = VersionWindow()
    for _ in range(10):
        window.record(0.0123, True)
    snap = window.snapshot()
    assert snap.p50 == 0.0123 and snap.p99 == 0.0123
    window.record(500.0, True)
    window.record(-1.0, True)  # clock hiccup counts as 0
    assert window.snapshot().quantile(1.0) == 500.0
    assert window.snapshot().min_latency_s == 0.0


def test_errors_are_counted_but_not_timed() -> None:
    window = VersionWindow()
    window.record(0.01, True)
    window.record(5.0, False)
    snap = window.snapshot()
    assert (snap.requests, snap.errors, snap.latency_samples) == (2, 1, 1)
    assert snap.error_rate == 0.5
    assert snap.p99 == 0.01


def test_empty_window() -> None:
    snap = VersionWindow().snapshot()
    assert snap.p99 is None and snap.mean_latency_s is None and snap.error_rate == 0.0
    assert snap.to_json()["max_latency_s"] is None
    with pytest.raises(ValueError):
        snap.quantile(0.0)


def test_snapshots_merge_like_one_window() -> None:
    rng = random.Random(5)
    a, b, both = VersionWindow(), VersionWindow(), VersionWindow()
    for i in range(2000):
        latency, ok = rng.expovariate(50), rng.random() > 0.05
        (a if i % 3 else b).record(latency, ok)
        both.record(latency, ok)
    merged = a.snapshot().merge(b.snapshot())
    expected = both.snapshot()
    assert merged.counts == expected.counts
    assert (merged.requests, merged.errors) == (expected.requests, expected.errors)
    assert merged.latency_sum_s == pytest.approx(expected.latency_sum_s)
    assert merged.p99 == pytest.approx(expected.p99)


def test_reset_and_constant_memory() -> None:
    window = VersionWindow()
    for i in range(10_000):
        window.record(i * 1e-4, i % 7 != 0)
    assert len(window.snapshot().counts) == NUM_BUCKETS
    window.reset()
    assert window.snapshot() == WindowSnapshot()


def test_wilson_lower_bound() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 100) == 0.0
    assert 0.001 < wilson_lower_bound(1, 100) < 0.004
    assert 0.02 < wilson_lower_bound(5, 100) < 0.03
    assert wilson_lower_bound(500, 10_000) == pytest.approx(0.05, abs=0.005)
    assert wilson_lower_bound(100, 100) > 0.95


def test_all_gates_pass_for_a_good_canary() -> None:
    labelled = (Labelled(897, 1000), Labelled(900, 1000))
    results = evaluate_gates(_window(500, 1), _window(5000, 5, seed=1), 0.01, "ok", Gates(), labelled)
    assert [r.name for r in results] == ["error_rate", "p99_latency", "disagreement", "drift", "accuracy"]
    assert all(r.passed is True for r in results), [r.detail for r in results]


def test_error_rate_gate_fails_on_clearly_more_errors() -> None:
    result = _gate(evaluate_gates(_window(400, 40), _window(5000, 5), None, None, Gates()), "error_rate")
    assert result.passed is False
    assert result.observed == pytest.approx(0.1)
    assert result.threshold == pytest.approx(0.001 + 0.01)
    assert "40/400" in result.detail


def test_error_rate_gate_does_not_fail_on_one_error_in_few_requests() -> None:
    result = _gate(evaluate_gates(_window(100, 1), _window(5000, 0), None, None, Gates()), "error_rate")
    assert result.passed is True


def test_error_rate_gate_is_relative_to_stable() -> None:
    # 5% errors is fine when stable also has 5%.
    gates = evaluate_gates(_window(1000, 50), _window(10_000, 500), None, None, Gates())
    assert _gate(gates, "error_rate").passed is True


def test_p99_gate_fails_on_a_much_slower_canary() -> None:
    result = _gate(
        evaluate_gates(_window(500, latency_s=0.05), _window(5000, latency_s=0.01), None, None, Gates()),
        "p99_latency",
    )
    assert result.passed is False
    assert isinstance(result.observed, float) and result.observed > 3
    assert result.threshold == 1.5


def test_p99_gate_ignores_large_ratios_of_tiny_latencies() -> None:
    canary, stable = _window(500, latency_s=200e-6), _window(5000, latency_s=50e-6)
    assert _gate(evaluate_gates(canary, stable, None, None, Gates()), "p99_latency").passed is True
    strict = Gates(p99_slack_s=0.0)
    assert _gate(evaluate_gates(canary, stable, None, None, strict), "p99_latency").passed is False


def test_p99_gate_without_stable_baseline_has_no_verdict() -> None:
    result = _gate(evaluate_gates(_window(500), WindowSnapshot(), None, None, Gates()), "p99_latency")
    assert result.passed is None


def test_disagreement_gate() -> None:
    gates = Gates(max_disagreement=0.05)
    assert (
        _gate(evaluate_gates(_window(500), _window(500), 0.12, None, gates), "disagreement").passed is False
    )
    assert _gate(evaluate_gates(_window(500), _window(500), 0.05, None, gates), "disagreement").passed is True
    assert _gate(evaluate_gates(_window(500), _window(500), None, None, gates), "disagreement").passed is None


def test_drift_gate() -> None:
    def verdict(status: str | None, worst: str = "warning") -> bool | None:
        results = evaluate_gates(_window(500), _window(500), None, status, Gates(max_drift_status=worst))
        return _gate(results, "drift").passed

    assert verdict("ok") is True
    assert verdict("warning") is True
    assert verdict("DRIFT") is False
    assert verdict("warning", worst="ok") is False
    assert verdict(None) is None
    assert verdict("collecting") is None


def test_too_few_samples_give_no_verdict() -> None:
    results = evaluate_gates(
        _window(20, 20, latency_s=5.0), _window(5000), None, None, Gates(min_requests=100)
    )
    assert _gate(results, "error_rate").passed is None
    assert _gate(results, "p99_latency").passed is None
    assert "20 canary requests, need 100" in _gate(results, "error_rate").detail


def test_gate_result_json_has_no_infinities() -> None:
    canary, stable = (
        _window(500, latency_s=0.01),
        WindowSnapshot(counts=(1,) + (0,) * (NUM_BUCKETS - 1), min_latency_s=0.0),
    )
    result = _gate(evaluate_gates(canary, stable, None, None, Gates()), "p99_latency")
    assert result.observed == math.inf and result.passed is False
    assert result.to_json()["observed"] is None


def test_gates_validation_and_json() -> None:
    gates = Gates(max_error_rate_increase=0.02, max_drift_status="ok", min_requests=10)
    assert Gates.from_json(gates.to_json()) == gates
    assert Gates.from_json(None) == Gates()
    for bad in (
        {"max_error_rate_increase": 2},
        {"max_p99_ratio": 0.5},
        {"max_drift_status": "bad"},
        {"min_requests": -1},
        {"nonsense": 1},
    ):
        with pytest.raises(ValueError):
            Gates.from_json(bad)
