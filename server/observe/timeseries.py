"""A bounded in-process time series per model version, for the dashboard.

Every ``interval`` seconds the sampler takes one :class:`Reading` per loaded version: the
cumulative counters the request path already keeps (statistics, the latency histogram's
buckets, request counts by code, shadow comparisons) and a few point-in-time values
(accuracy, the label-free estimate, drift status, the configured weight). A point is the
difference of two readings over the time between them, so sampling costs the request path
nothing. Each version keeps its last ``points`` points in ring buffers (fixed memory).

Everything here is pure: readings come in, points and JSON go out, time is whatever the
injected clock says (tests use a fake one).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (model, version)

# the fields of a point, in the order the JSON lists them
FIELDS = (
    "t",
    "rate",
    "requests",
    "p50_ms",
    "p99_ms",
    "batch",
    "queue_ms",
    "errors",
    "share",
    "weight",
    "shadow_agreement",
    "accuracy",
    "estimated_accuracy",
    "calibrated_accuracy",
    "drift",
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One version's counters (cumulative since it was loaded) and gauges at one instant."""

    requests: int = 0  # answered requests, failed ones included
    rows: int = 0  # rows of successful requests
    batches: int = 0  # executions
    queued: int = 0  # requests that went through the queue
    queue_ns: int = 0  # their total wait
    latency: tuple[int, ...] = ()  # cumulative bucket counts (le), one per bound, +Inf last
    errors: Mapping[str, int] = field(default_factory=dict)  # failed requests by code
    shadow_rows: int = 0  # rows compared with this version as the shadow
    shadow_agreements: int = 0
    accuracy: float | None = None  # live accuracy on the feedback received so far
    labelled: int = 0
    estimated_accuracy: float | None = None  # mean top-class probability (no labels)
    calibrated_accuracy: float | None = None  # the estimate calibrated on the labelled rows
    drift: str | None = None
    weight: float | None = None  # share of the model's unpinned traffic its policy gives it


def quantile(bounds: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram given by its upper ``bounds`` (+Inf last) and
    cumulative counts, interpolated linearly inside the bucket it falls in (as Prometheus'
    histogram_quantile does). The first bucket starts at 0; a quantile in the +Inf bucket is
    the largest finite bound. None without observations."""
    if not cumulative or len(cumulative) != len(bounds):
        return None
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    lower_count = 0
    lower_bound = 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_count = count
        if not math.isinf(bound):
            lower_bound = bound
    return lower_bound


def _delta(cur: int, prev: int) -> int:
    # a counter that went down was reset (the version was reloaded): count from zero
    return cur - prev if cur >= prev else cur


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def point(
    prev: Reading | None, cur: Reading, seconds: float, bounds: Sequence[float], now: float
) -> dict[str, Any]:
    """The point for the interval from ``prev`` to ``cur`` (``seconds`` long, ending at
    ``now``); without ``prev`` (a version's first reading) the counters count from zero."""
    p = prev or Reading()
    requests = _delta(cur.requests, p.requests)
    latency: list[int] = []
    if cur.latency:
        before = p.latency if len(p.latency) == len(cur.latency) else (0,) * len(cur.latency)
        reset = any(c < b for c, b in zip(cur.latency, before, strict=True))
        latency = [c if reset else c - b for c, b in zip(cur.latency, before, strict=True)]
    p50 = quantile(bounds, latency, 0.5)
    p99 = quantile(bounds, latency, 0.99)
    errors = {code: d for code, n in cur.errors.items() if (d := _delta(n, p.errors.get(code, 0))) > 0}
    return {
        "t": now,
        "rate": requests / seconds if seconds > 0 else None,
        "requests": requests,
        "p50_ms": p50 * 1e3 if p50 is not None else None,
        "p99_ms": p99 * 1e3 if p99 is not None else None,
        "batch": _ratio(_delta(cur.rows, p.rows), _delta(cur.batches, p.batches)),
        "queue_ms": _ms(_ratio(_delta(cur.queue_ns, p.queue_ns), _delta(cur.queued, p.queued))),
        "errors": errors,
        "share": None,  # filled in by shares() once every version of the model has its point
        "weight": cur.weight,
        "shadow_agreement": _ratio(
            _delta(cur.shadow_agreements, p.shadow_agreements), _delta(cur.shadow_rows, p.shadow_rows)
        ),
        "accuracy": cur.accuracy,
        "estimated_accuracy": cur.estimated_accuracy,
        "calibrated_accuracy": cur.calibrated_accuracy,
        "drift": cur.drift,
    }


def _ms(ns: float | None) -> float | None:
    return ns / 1e6 if ns is not None else None


def shares(points: Mapping[Key, dict[str, Any]]) -> None:
    """Set each point's ``share``: its part of its model's requests in the interval (None when
    the model answered none)."""
    totals: dict[str, int] = {}
    for (model, _), pt in points.items():
        totals[model] = totals.get(model, 0) + pt["requests"]
    for (model, _), pt in points.items():
        pt["share"] = _ratio(pt["requests"], totals[model])


class Ring:
    """The last ``capacity`` points of one version, one ring buffer per field."""

    __slots__ = ("columns",)

    def __init__(self, capacity: int) -> None:
        self.columns: dict[str, deque[Any]] = {f: deque(maxlen=capacity) for f in FIELDS}

    def append(self, pt: Mapping[str, Any]) -> None:
        for f, column in self.columns.items():
            column.append(pt.get(f))

    def __len__(self) -> int:
        return len(self.columns["t"])

    def to_json(self) -> dict[str, list[Any]]:
        return {f: list(column) for f, column in self.columns.items()}


class TimeSeries:
    """Every loaded version's ring of points, fed by :meth:`sample`.

    ``read`` returns the readings of the versions loaded now; ``bounds`` are the latency
    histogram's upper bounds in seconds (+Inf last); ``clock`` gives the time in seconds.
    A version that is no longer loaded drops its ring, so memory is bounded by the loaded
    versions times ``capacity``."""

    def __init__(
        self,
        read: Callable[[], Mapping[Key, Reading]],
        bounds: Sequence[float],
        *,
        clock: Callable[[], float],
        interval: float = 10.0,
        capacity: int = 360,
    ) -> None:
        if interval <= 0 or capacity < 1:
            raise ValueError("the interval must be positive and the capacity at least 1")
        self.read = read
        self.bounds = tuple(bounds)
        self.clock = clock
        self.interval = interval
        self.capacity = capacity
        self._rings: dict[Key, Ring] = {}
        self._last: dict[Key, Reading] = {}
        self._last_at: float | None = None
        self.latest: dict[Key, Reading] = {}

    def start(self) -> None:
        """Take the readings the first interval is measured from (no point yet)."""
        self._last = dict(self.read())
        self._last_at = self.clock()
        self.latest = dict(self._last)

    def sample(self) -> dict[Key, dict[str, Any]]:
        """Read every version, append one point per version, and return the points."""
        now = self.clock()
        readings = dict(self.read())
        seconds = now - self._last_at if self._last_at is not None else self.interval
        points = {
            key: point(self._last.get(key), cur, seconds, self.bounds, now) for key, cur in readings.items()
        }
        shares(points)
        for key in [k for k in self._rings if k not in readings]:
            del self._rings[key]
        for key, pt in points.items():
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = Ring(self.capacity)
            ring.append(pt)
        self._last, self._last_at, self.latest = readings, now, readings
        return points

    def keys(self) -> list[Key]:
        return sorted(self._rings, key=_order)

    def series(self, key: Key) -> dict[str, list[Any]]:
        ring = self._rings.get(key)
        return ring.to_json() if ring is not None else {f: [] for f in FIELDS}

    def to_json(self, keys: Iterable[Key] | None = None) -> dict[str, Any]:
        wanted = self.keys() if keys is None else sorted(keys, key=_order)
        return {
            "interval_s": self.interval,
            "capacity": self.capacity,
            "versions": [{"model": m, "version": v, "series": self.series((m, v))} for m, v in wanted],
        }


def _order(key: Key) -> tuple[str, int, str]:
    model, version = key
    return (model, len(version), version)  # versions in numeric order
