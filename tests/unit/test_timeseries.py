"""The dashboard's time series without I/O: readings in, points out, a fake clock."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from turnout.server.observe.dashboard import error_counts, latency_buckets, policy_weights
from turnout.server.observe.timeseries import FIELDS, Key, Reading, TimeSeries, point, quantile, shares

BOUNDS = (0.001, 0.01, 0.1, math.inf)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 2 observations under 1 ms, 8 between 1 and 10 ms
    cum = [2, 10, 10, 10]
    assert quantile(BOUNDS, cum, 0.5) == pytest.approx(0.001 + 0.009 * 3 / 8)
    assert quantile(BOUNDS, cum, 0.1) == pytest.approx(0.001 * 1 / 2)
    assert quantile(BOUNDS, cum, 1.0) == pytest.approx(0.01)


def test_quantile_in_the_inf_bucket_is_the_largest_finite_bound() -> None:
    assert quantile(BOUNDS, [0, 0, 1, 5], 0.99) == 0.1


def test_quantile_without_observations_is_none() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 0], 0.5) is None
    assert quantile(BOUNDS, [], 0.5) is None


def test_a_point_is_the_difference_of_two_readings() -> None:
    prev = Reading(
        requests=100, rows=300, batches=50, queued=100, queue_ns=10_000_000, latency=(10, 90, 100, 100)
    )
    cur = Reading(
        requests=150,
        rows=500,
        batches=70,
        queued=150,
        queue_ns=20_000_000,
        latency=(10, 90, 150, 150),
        errors={"unavailable": 3},
        accuracy=0.9,
        estimated_accuracy=0.85,
        drift="warning",
        weight=0.25,
    )
    pt = point(prev, cur, 10.0, BOUNDS, now=2000.0)
    assert pt["t"] == 2000.0
    assert pt["rate"] == 5.0
    assert pt["requests"] == 50
    assert pt["batch"] == 10.0  # 200 rows in 20 batches
    assert pt["queue_ms"] == pytest.approx(0.2)  # 10 ms over 50 requests
    # the 50 new observations are all between 10 and 100 ms
    assert 10 < pt["p50_ms"] < pt["p99_ms"] <= 100
    assert pt["p50_ms"] == pytest.approx(10 + 90 * 0.5)
    assert pt["errors"] == {"unavailable": 3}
    assert (pt["accuracy"], pt["estimated_accuracy"], pt["drift"], pt["weight"]) == (
        0.9,
        0.85,
        "warning",
        0.25,
    )
    assert set(pt) == set(FIELDS)


def test_an_idle_interval_has_no_latency_or_batch() -> None:
    r = Reading(requests=5, rows=5, batches=5, latency=(5, 5, 5, 5))
    pt = point(r, r, 10.0, BOUNDS, now=0.0)
    assert pt["rate"] == 0.0
    assert pt["p50_ms"] is None and pt["p99_ms"] is None and pt["batch"] is None and pt["queue_ms"] is None
    assert pt["errors"] == {}


def test_a_reset_counter_counts_from_zero() -> None:
    prev = Reading(requests=100, latency=(0, 100, 100, 100), errors={"internal": 4})
    cur = Reading(requests=7, latency=(7, 7, 7, 7), errors={"internal": 1})
    pt = point(prev, cur, 1.0, BOUNDS, now=0.0)
    assert pt["requests"] == 7
    assert pt["p99_ms"] is not None and pt["p99_ms"] <= 1.0
    assert pt["errors"] == {"internal": 1}


def test_shadow_agreement_is_per_interval() -> None:
    prev = Reading(shadow_rows=100, shadow_agreements=100)
    cur = Reading(shadow_rows=200, shadow_agreements=170)
    assert point(prev, cur, 1.0, BOUNDS, now=0.0)["shadow_agreement"] == pytest.approx(0.7)


def test_shares_split_each_models_requests() -> None:
    points: dict[Key, dict[str, Any]] = {
        ("m", "1"): {"requests": 30},
        ("m", "2"): {"requests": 10},
        ("n", "1"): {"requests": 0},
    }
    shares(points)
    assert points[("m", "1")]["share"] == 0.75
    assert points[("m", "2")]["share"] == 0.25
    assert points[("n", "1")]["share"] is None


class Source:
    def __init__(self) -> None:
        self.readings: dict[Key, Reading] = {}

    def __call__(self) -> dict[Key, Reading]:
        return dict(self.readings)


def test_the_series_samples_every_version_on_the_clock_and_stays_bounded() -> None:
    clock, src = FakeClock(), Source()
    ts = TimeSeries(src, BOUNDS, clock=clock, interval=10.0, capacity=3)
    src.readings = {("m", "1"): Reading(), ("m", "2"): Reading()}
    ts.start()
    for i in range(1, 6):
        clock.t += 10.0
        src.readings = {("m", "1"): Reading(requests=30 * i), ("m", "2"): Reading(requests=10 * i)}
        ts.sample()
    s1 = ts.series(("m", "1"))
    assert s1["t"] == [1030.0, 1040.0, 1050.0]  # the last 3 of 5 points
    assert s1["rate"] == [3.0, 3.0, 3.0]
    assert s1["share"] == [0.75, 0.75, 0.75]
    assert ts.series(("m", "2"))["share"] == [0.25, 0.25, 0.25]
    assert all(len(ring) == 3 for ring in ts._rings.values())
    # rates use the time that actually passed
    clock.t += 20.0
    src.readings = {("m", "1"): Reading(requests=30 * 5 + 60)}
    ts.sample()
    assert ts.series(("m", "1"))["rate"][-1] == 3.0
    # a version no longer loaded drops its ring
    assert ts.keys() == [("m", "1")]
    assert ts.series(("m", "2"))["t"] == []


def test_a_version_loaded_later_starts_its_own_series() -> None:
    clock, src = FakeClock(), Source()
    ts = TimeSeries(src, BOUNDS, clock=clock, interval=5.0, capacity=10)
    src.readings = {("m", "1"): Reading()}
    ts.start()
    clock.t += 5.0
    src.readings = {("m", "1"): Reading(requests=5), ("m", "10"): Reading(requests=10)}
    ts.sample()
    assert ts.keys() == [("m", "1"), ("m", "10")]
    assert ts.series(("m", "10"))["requests"] == [10]
    doc = ts.to_json()
    assert doc["interval_s"] == 5.0 and doc["capacity"] == 10
    assert [v["version"] for v in doc["versions"]] == ["1", "10"]


def test_policy_weights() -> None:
    policy = {"stable": "1", "canaries": [{"version": "2", "weight": 0.3}], "shadows": []}
    assert policy_weights(policy) == pytest.approx({"1": 0.7, "2": 0.3})
    assert policy_weights({"stable": "1"}) == {"1": 1.0}


def _sample(name: str, value: float, **labels: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, value=value, labels=labels)


def test_latency_buckets_sum_the_protocols() -> None:
    from turnout.server.observe.dashboard import BOUNDS as B

    samples = [
        _sample("x_bucket", 1, model="m", version="1", protocol="http", le=str(B[0])),
        _sample("x_bucket", 2, model="m", version="1", protocol="grpc", le=str(B[0])),
        _sample("x_bucket", 5, model="m", version="1", protocol="http", le="+Inf"),
        _sample("x_count", 5, model="m", version="1", protocol="http"),
    ]
    got = latency_buckets(samples)[("m", "1")]
    assert got[0] == 3 and got[-1] == 5 and len(got) == len(B)


def test_error_counts_leave_out_ok_and_unresolved_requests() -> None:
    samples = [
        _sample("t_total", 9, model="m", version="1", protocol="http", code="ok"),
        _sample("t_total", 2, model="m", version="1", protocol="http", code="invalid_argument"),
        _sample("t_total", 1, model="m", version="1", protocol="grpc", code="invalid_argument"),
        _sample("t_created", 1.0, model="m", version="1", protocol="grpc", code="invalid_argument"),
        _sample("t_total", 4, model="m", version="", protocol="http", code="not_found"),
    ]
    assert error_counts(samples) == {("m", "1"): {"invalid_argument": 3}}


def test_quantiles_from_the_servers_buckets_land_in_the_bucket_of_the_exact_quantile() -> None:
    import bisect

    import numpy as np

    from turnout.server.observe.dashboard import BOUNDS as B

    rng = np.random.default_rng(7)
    for scale in (0.0002, 0.003, 0.05):
        latencies = rng.lognormal(np.log(scale), 0.8, 5000)
        cum = np.cumsum(np.bincount([bisect.bisect_left(B, v) for v in latencies], minlength=len(B)))
        for q in (0.5, 0.99):
            exact = float(np.quantile(latencies, q))
            got = quantile(B, [int(c) for c in cum], q)
            assert got is not None
            i = bisect.bisect_left(B, exact)
            lo = B[i - 1] if i else 0.0
            hi = B[i] if not math.isinf(B[i]) else B[i - 1]
            assert lo <= got <= hi, (scale, q, exact, got)
