"""What the dashboard shows: readings of every loaded version for the time series
(server/observe/timeseries.py), sampled on the event loop every interval, and the current
state beside them (traffic policies, rollouts with their history, shadow pairs, drift
reports with their histograms, the audit log) for ``GET /dashboard/data``.

The readings come from counters the request path keeps anyway (the statistics extension,
the Prometheus tallies, shadow pair totals, feedback tallies); the sources are injected."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from turnout.server.observe.metrics import LATENCY_BUCKETS, Metrics
from turnout.server.observe.stats import VersionStats
from turnout.server.observe.timeseries import Key, Reading, TimeSeries

log = logging.getLogger("turnout.dashboard")

BOUNDS = (*LATENCY_BUCKETS, math.inf)
AUDIT_ENTRIES = 30


class Pair(Protocol):
    model: str
    primary_version: str
    shadow_version: str
    classified_rows: int
    agreements: int

    def to_json(self) -> dict[str, Any]: ...


class Policy(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class Record(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class Controller(Protocol):
    """What the dashboard reads of the traffic controller (router/controller.py)."""

    def policies(self) -> Mapping[str, Policy]: ...

    def pair_stats(self, model: str | None = None) -> Iterable[Pair]: ...

    def rollout_status(self, model: str) -> dict[str, Any] | None: ...

    def audit(self, limit: int = 100, model: str | None = None) -> Iterable[Record]: ...


class FeedbackSource(Protocol):
    def tracks(self, model: str) -> bool: ...

    def counts(self, model: str, version: str) -> tuple[int, int] | None: ...

    def report(self, model: str, version: str) -> dict[str, Any]: ...


class DriftSource(Protocol):
    def status(self, model: str, version: str) -> str | None: ...

    async def report_async(
        self, model: str, version: str, view: str = "window", histograms: bool = True
    ) -> dict[str, Any]: ...


def policy_weights(policy: Mapping[str, Any]) -> dict[str, float]:
    """The share of a model's unpinned requests each version of a policy (its JSON) gets."""
    canaries = {str(c["version"]): float(c["weight"]) for c in policy.get("canaries", [])}
    out = {str(policy["stable"]): max(0.0, 1.0 - sum(canaries.values()))}
    for version, weight in canaries.items():
        out[version] = out.get(version, 0.0) + weight
    return out


def latency_buckets(samples: Iterable[Any]) -> dict[Key, list[int]]:
    """Cumulative latency bucket counts per (model, version), summed over protocols, from the
    samples of ``turnout_request_duration_seconds`` (one per ``le``, in bound order)."""
    index = {b: i for i, b in enumerate(BOUNDS)}
    out: dict[Key, list[int]] = {}
    for s in samples:
        if not s.name.endswith("_bucket"):
            continue
        key = (s.labels["model"], s.labels["version"])
        i = index.get(float(s.labels["le"]))
        if i is None:
            continue
        counts = out.setdefault(key, [0] * len(BOUNDS))
        counts[i] += int(s.value)
    return out


def error_counts(samples: Iterable[Any]) -> dict[Key, dict[str, int]]:
    """Failed requests per (model, version) and code, from ``turnout_requests`` samples."""
    out: dict[Key, dict[str, int]] = {}
    for s in samples:
        if not s.name.endswith("_total"):
            continue
        code, version = s.labels["code"], s.labels["version"]
        if code == "ok" or not version:
            continue
        errors = out.setdefault((s.labels["model"], version), {})
        errors[code] = errors.get(code, 0) + int(s.value)
    return out


class Readings:
    """Reads every loaded version's counters and gauges (a :class:`TimeSeries` ``read``).

    The label-free estimate walks a model's recent predictions (about 10 ms for a store of
    100,000), so one call refreshes one version's, the one refreshed longest ago, and the others
    keep their last value: a sample costs the event loop that much at most, and each version's
    estimate is at most as many intervals old as there are versions that keep predictions."""

    def __init__(
        self,
        statistics: Callable[[], list[VersionStats]],
        metrics: Metrics,
        controller: Controller,
        feedback: FeedbackSource | None = None,
        drift: DriftSource | None = None,
    ) -> None:
        self.statistics = statistics
        self.metrics = metrics
        self.controller = controller
        self.feedback = feedback
        self.drift = drift
        self._calls = 0
        self._estimates: dict[Key, tuple[int, float | None, float | None]] = {}  # (call, raw, calibrated)

    def __call__(self) -> dict[Key, Reading]:
        self._calls += 1
        self.metrics.flush()  # the request path's tallies reach their Prometheus children
        latency: dict[Key, list[int]] = {}
        for family in self.metrics.latency.collect():
            latency.update(latency_buckets(family.samples))
        errors: dict[Key, dict[str, int]] = {}
        for family in self.metrics.requests.collect():
            errors.update(error_counts(family.samples))
        shadow: dict[Key, tuple[int, int]] = {}
        for p in self.controller.pair_stats():
            key = (p.model, p.shadow_version)
            rows, agreed = shadow.get(key, (0, 0))
            shadow[key] = (rows + p.classified_rows, agreed + p.agreements)
        weights: dict[Key, float] = {}
        for model, policy in self.controller.policies().items():
            for version, w in policy_weights(policy.to_json()).items():
                weights[(model, version)] = w
        stats = self.statistics()
        self._refresh_estimate([(st.name, st.version) for st in stats])
        out: dict[Key, Reading] = {}
        for st in stats:
            key = (st.name, st.version)
            rows, agreed = shadow.get(key, (0, 0))
            accuracy, labelled = self._accuracy(st.name, st.version)
            _, estimate, calibrated = self._estimates.get(key, (0, None, None))
            out[key] = Reading(
                requests=st.success.count + st.fail.count,
                rows=st.inference_count,
                batches=st.execution_count,
                queued=st.queue.count,
                queue_ns=st.queue.ns,
                latency=tuple(latency.get(key, ())),
                errors=errors.get(key, {}),
                shadow_rows=rows,
                shadow_agreements=agreed,
                accuracy=accuracy,
                labelled=labelled,
                estimated_accuracy=estimate,
                calibrated_accuracy=calibrated,
                drift=self.drift.status(st.name, st.version) if self.drift is not None else None,
                weight=weights.get(key),
            )
        return out

    def _accuracy(self, model: str, version: str) -> tuple[float | None, int]:
        fb = self.feedback
        if fb is None or not fb.tracks(model):
            return None, 0
        counts = fb.counts(model, version)
        return (None, 0) if counts is None else (_div(*counts), counts[1])

    def _refresh_estimate(self, keys: list[Key]) -> None:
        """Refresh the estimate of the one version of ``keys`` refreshed longest ago (never
        refreshed first); forget the versions no longer loaded."""
        fb = self.feedback
        loaded = set(keys)
        for key in [k for k in self._estimates if k not in loaded]:
            del self._estimates[key]
        tracked = [k for k in keys if fb is not None and fb.tracks(k[0])]
        if fb is None or not tracked:
            return
        model, version = min(tracked, key=lambda k: self._estimates.get(k, (-1, None, None))[0])
        estimate = fb.report(model, version).get("estimate") or {}
        self._estimates[(model, version)] = (
            self._calls,
            estimate.get("expected_accuracy"),
            estimate.get("calibrated_accuracy"),
        )


def _div(num: int, den: int) -> float | None:
    return num / den if den else None


class Dashboard:
    """The time series and the current state behind ``GET /dashboard/data``."""

    def __init__(
        self,
        series: TimeSeries,
        controller: Controller,
        statistics: Callable[[], list[VersionStats]],
        *,
        drift: DriftSource | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.series = series
        self.controller = controller
        self.statistics = statistics
        self.drift = drift
        self.clock = clock

    async def sample_forever(self) -> None:
        self.series.start()
        while True:
            await asyncio.sleep(self.series.interval)
            try:
                self.series.sample()
            except Exception:  # the dashboard must never take the server down
                log.exception("dashboard sample failed")

    async def data(self) -> dict[str, Any]:
        now = self.clock()
        stats = self.statistics()
        keys = [(s.name, s.version) for s in stats]
        out = self.series.to_json(keys)
        out["now"] = now
        totals = {(s.name, s.version): s for s in stats}
        for entry in out["versions"]:
            st = totals[(entry["model"], entry["version"])]
            latest = self.series.latest.get((entry["model"], entry["version"]))
            entry["totals"] = {
                "requests": st.success.count + st.fail.count,
                "success": st.success.count,
                "failed": st.fail.count,
                "rows": st.inference_count,
                "batches": st.execution_count,
            }
            entry["labelled"] = latest.labelled if latest is not None else 0
        policies = {m: p.to_json() for m, p in self.controller.policies().items()}
        models = sorted({m for m, _ in keys} | set(policies))
        out["models"] = [
            {
                "model": m,
                "policy": policies.get(m),
                "weights": policy_weights(policies[m]) if m in policies else None,
                "rollout": self.controller.rollout_status(m),
                "shadows": [p.to_json() for p in self.controller.pair_stats(m)],
            }
            for m in models
        ]
        out["drift"] = await self._drift(keys)
        out["audit"] = [r.to_json() for r in self.controller.audit(AUDIT_ENTRIES)]
        return out

    async def _drift(self, keys: list[Key]) -> list[dict[str, Any]]:
        if self.drift is None:
            return []
        drift = self.drift

        async def one(model: str, version: str) -> dict[str, Any] | None:
            try:
                return await drift.report_async(model, version)
            except Exception as exc:  # a version unloaded meanwhile, a monitor restarting
                log.debug("drift report of %s/%s: %s", model, version, exc)
                return None

        reports = await asyncio.gather(*(one(m, v) for m, v in keys))
        return [r for r in reports if r is not None]


def dashboard(
    settings: Any,
    core: Any,
    metrics: Metrics,
    controller: Controller,
    feedback: FeedbackSource | None,
    drift: DriftSource | None,
    *,
    clock: Callable[[], float] = time.time,
) -> Dashboard:
    """The server's dashboard, from its settings (``dashboard_interval_secs``,
    ``dashboard_points``) and the sources it reads."""
    read = Readings(core.statistics, metrics, controller, feedback, drift)
    series = TimeSeries(
        read,
        BOUNDS,
        clock=clock,
        interval=settings.dashboard_interval_secs,
        capacity=settings.dashboard_points,
    )
    return Dashboard(series, controller, core.statistics, drift=drift, clock=clock)
