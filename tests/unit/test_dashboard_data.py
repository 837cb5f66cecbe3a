"""The dashboard's readings and /dashboard/data document from fake sources (no server)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from turnout.server.observe.dashboard import BOUNDS, Dashboard, Readings
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.stats import VersionStats
from turnout.server.observe.timeseries import TimeSeries


@dataclass
class FakePair:
    model: str
    primary_version: str
    shadow_version: str
    classified_rows: int
    agreements: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_version": self.primary_version,
            "shadow_version": self.shadow_version,
        }


class FakePolicy:
    def to_json(self) -> dict[str, Any]:
        return {
            "stable": "1",
            "canaries": [{"version": "2", "weight": 0.2}],
            "shadows": [{"version": "3", "fraction": 1.0}],
        }


class FakeRecord:
    def to_json(self) -> dict[str, Any]:
        return {"ts": 1.0, "who": "ops", "action": "set_policy", "model": "m", "reason": "try 2"}


class FakeController:
    def __init__(self) -> None:
        self.pairs = [FakePair("m", "1", "3", 0, 0)]

    def policies(self) -> dict[str, FakePolicy]:
        return {"m": FakePolicy()}

    def pair_stats(self, model: str | None = None) -> list[FakePair]:
        return [p for p in self.pairs if model in (None, p.model)]

    def rollout_status(self, model: str) -> dict[str, Any] | None:
        return {"rollout": {"canary": "2", "status": "running", "history": []}}

    def audit(self, limit: int = 100, model: str | None = None) -> list[FakeRecord]:
        return [FakeRecord()]


class FakeFeedback:
    def tracks(self, model: str) -> bool:
        return True

    def counts(self, model: str, version: str) -> tuple[int, int] | None:
        return (9, 10) if version == "1" else None

    def report(self, model: str, version: str) -> dict[str, Any]:
        return {"estimate": {"expected_accuracy": 0.8, "calibrated_accuracy": 0.88}}


class FakeDrift:
    def status(self, model: str, version: str) -> str | None:
        return "drift" if version == "2" else "ok"

    async def report_async(
        self, model: str, version: str, view: str = "window", histograms: bool = True
    ) -> dict[str, Any]:
        return {
            "model_name": model,
            "model_version": version,
            "status": self.status(model, version),
            "features": [],
        }


def test_readings_and_data() -> None:
    metrics = Metrics(CollectorRegistry())
    stats = [VersionStats("m", v) for v in ("1", "2", "3")]
    controller, clock = FakeController(), [100.0]
    read = Readings(lambda: stats, metrics, controller, FakeFeedback(), FakeDrift())
    ts = TimeSeries(read, BOUNDS, clock=lambda: clock[0], interval=10.0, capacity=5)
    ts.start()

    # 8 requests on version 1 (one failed), 2 on version 2; 10 shadow rows, 9 agreeing
    for _ in range(7):
        stats[0].record_success(1, 2_000_000)
        metrics.histogram_tally(metrics.latency, "m", "1", "http").observe(0.002)
    stats[0].record_failure(1_000_000, "OTHER")
    metrics.requests.labels("m", "1", "http", "internal").inc()
    for _ in range(2):
        stats[1].record_success(1, 20_000_000)
        metrics.histogram_tally(metrics.latency, "m", "2", "grpc").observe(0.02)
    controller.pairs[0].classified_rows, controller.pairs[0].agreements = 10, 9
    clock[0] += 10.0
    points = ts.sample()

    p1, p2, p3 = points[("m", "1")], points[("m", "2")], points[("m", "3")]
    assert p1["requests"] == 8 and p1["rate"] == 0.8 and p1["share"] == 0.8
    assert p2["share"] == 0.2
    assert 1.0 < p1["p50_ms"] <= 2.5 and 10 < p2["p99_ms"] <= 25
    assert p1["errors"] == {"internal": 1}
    assert p1["weight"] == pytest.approx(0.8) and p2["weight"] == pytest.approx(0.2) and p3["weight"] is None
    assert p3["shadow_agreement"] == pytest.approx(0.9)
    assert p1["accuracy"] == 0.9 and p2["accuracy"] is None
    assert p1["estimated_accuracy"] == 0.8 and p1["calibrated_accuracy"] == 0.88
    # one estimate is refreshed per reading (each walks the prediction store): version 1's at
    # start, version 2's now, version 3's next
    assert p2["estimated_accuracy"] == 0.8 and p3["estimated_accuracy"] is None
    clock[0] += 10.0
    assert ts.sample()[("m", "3")]["estimated_accuracy"] == 0.8
    assert (p1["drift"], p2["drift"]) == ("ok", "drift")

    doc = asyncio.run(
        Dashboard(ts, controller, lambda: stats, drift=FakeDrift(), clock=lambda: clock[0]).data()
    )
    assert doc["now"] == clock[0]
    v1 = doc["versions"][0]
    assert (v1["model"], v1["version"]) == ("m", "1")
    assert v1["totals"] == {"requests": 8, "success": 7, "failed": 1, "rows": 7, "batches": 0}
    assert v1["labelled"] == 10
    assert v1["series"]["requests"] == [8, 0]
    (m,) = doc["models"]
    assert m["weights"] == pytest.approx({"1": 0.8, "2": 0.2})
    assert m["rollout"]["rollout"]["status"] == "running"
    assert [d["status"] for d in doc["drift"]] == ["ok", "drift", "ok"]
    assert doc["audit"][0]["action"] == "set_policy"


def test_the_sampling_loop_survives_a_failing_read() -> None:
    calls = [0]
    enough = asyncio.Event()

    def read() -> dict[Any, Any]:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("a source failed")
        if calls[0] >= 4:
            enough.set()
        return {}

    ts = TimeSeries(read, BOUNDS, clock=lambda: float(calls[0]), interval=0.001, capacity=5)
    dash = Dashboard(ts, FakeController(), list, clock=lambda: 0.0)

    async def run() -> None:
        task = asyncio.create_task(dash.sample_forever())
        await asyncio.wait_for(enough.wait(), 5)
        task.cancel()

    asyncio.run(run())
    assert calls[0] >= 4
