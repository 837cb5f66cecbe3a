"""Per-version request statistics: request and error counts and a latency histogram.

A :class:`VersionWindow` counts requests, errors and latencies of one version in constant
memory: latencies of successful requests go into a fixed histogram with
:data:`BUCKETS_PER_DECADE` logarithmic buckets per decade from 10 µs to 100 s (plus an
underflow and an overflow bucket). Because every window uses the same buckets, snapshots
from several windows (or processes) merge by adding counts. Quantiles are read off the
histogram with geometric interpolation inside a bucket, so they are within about
``10 ** (1 / BUCKETS_PER_DECADE) - 1`` (≈ 12%) of the exact value, and clamped to the
exact minimum and maximum seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BUCKETS_PER_DECADE = 20
LOWEST_LATENCY_S = 1e-5
HIGHEST_LATENCY_S = 100.0
_DECADES = 7  # log10(HIGHEST / LOWEST)
_LOG10_LOWEST = -5.0
# Bucket 0 is [0, 10 µs); bucket i (1..N) is [edge[i-1], edge[i]); bucket N+1 is [100 s, inf).
_FINITE_BUCKETS = _DECADES * BUCKETS_PER_DECADE
NUM_BUCKETS = _FINITE_BUCKETS + 2
BUCKET_EDGES: tuple[float, ...] = tuple(
    10.0 ** (_LOG10_LOWEST + i / BUCKETS_PER_DECADE) for i in range(_FINITE_BUCKETS + 1)
)


def bucket_index(latency_s: float) -> int:
    """Index of the histogram bucket that holds ``latency_s`` (NaN and negatives go to 0)."""
    if not latency_s >= LOWEST_LATENCY_S:  # also catches NaN
        return 0
    if latency_s >= HIGHEST_LATENCY_S:
        return NUM_BUCKETS - 1
    index = int((math.log10(latency_s) - _LOG10_LOWEST) * BUCKETS_PER_DECADE) + 1
    return min(index, _FINITE_BUCKETS)


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """An immutable copy of a :class:`VersionWindow`; snapshots merge with :meth:`merge`.

    ``requests`` counts every request, ``errors`` the failed ones; the latency fields only
    describe successful requests (``latency_samples`` of them).
    """

    requests: int = 0
    errors: int = 0
    counts: tuple[int, ...] = (0,) * NUM_BUCKETS
    latency_sum_s: float = 0.0
    min_latency_s: float = math.inf
    max_latency_s: float = 0.0

    @property
    def latency_samples(self) -> int:
        return sum(self.counts)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_s(self) -> float | None:
        samples = self.latency_samples
        return self.latency_sum_s / samples if samples else None

    @property
    def p50(self) -> float | None:
        return self.quantile(0.5)

    @property
    def p99(self) -> float | None:
        return self.quantile(0.99)

    def quantile(self, q: float) -> float | None:
        """Estimated ``q``-quantile (0 < q <= 1) of successful-request latency, or None if empty."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {q}")
        total = self.latency_samples
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            if count == 0:
                continue
            if seen + count >= rank:
                fraction = (rank - seen) / count
                estimate = _interpolate(index, fraction, self.max_latency_s)
                return min(max(estimate, self.min_latency_s), self.max_latency_s)
            seen += count
        return self.max_latency_s

    def merge(self, other: WindowSnapshot) -> WindowSnapshot:
        return WindowSnapshot(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            latency_sum_s=self.latency_sum_s + other.latency_sum_s,
            min_latency_s=min(self.min_latency_s, other.min_latency_s),
            max_latency_s=max(self.max_latency_s, other.max_latency_s),
        )

    def to_json(self) -> dict[str, Any]:
        """Summary for status pages (not the full histogram)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_samples": self.latency_samples,
            "mean_latency_s": self.mean_latency_s,
            "p50_s": self.p50,
            "p99_s": self.p99,
            "max_latency_s": self.max_latency_s if self.latency_samples else None,
        }


def _interpolate(index: int, fraction: float, max_latency_s: float) -> float:
    """Latency ``fraction`` of the way through bucket ``index`` (geometric within a bucket;
    the overflow bucket ends at the largest latency seen)."""
    if index == 0:
        return LOWEST_LATENCY_S * fraction
    if index == NUM_BUCKETS - 1:
        return HIGHEST_LATENCY_S * (max(max_latency_s, HIGHEST_LATENCY_S) / HIGHEST_LATENCY_S) ** fraction
    low = BUCKET_EDGES[index - 1]
    high = BUCKET_EDGES[index]
    return low * (high / low) ** fraction


class VersionWindow:
    """Mutable request/error/latency accumulator for one version. Constant memory.

    Not thread-safe: call it from one thread (the event loop).
    """

    __slots__ = ("_counts", "_errors", "_latency_sum", "_max", "_min", "_requests")

    _counts: list[int]
    _requests: int
    _errors: int
    _latency_sum: float
    _min: float
    _max: float

    def __init__(self) -> None:
        self.reset()

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def errors(self) -> int:
        return self._errors

    def record(self, latency_s: float, ok: bool) -> None:
        """Count one request; the latency of a failed request is not put in the histogram."""
        self._requests += 1
        if not ok:
            self._errors += 1
            return
        if not latency_s >= 0.0:  # negative or NaN: a clock hiccup, count it as instant
            latency_s = 0.0
        self._counts[bucket_index(latency_s)] += 1
        self._latency_sum += latency_s
        if latency_s < self._min:
            self._min = latency_s
        if latency_s > self._max:
            self._max = latency_s

    def reset(self) -> None:
        self._counts = [0] * NUM_BUCKETS
        self._requests = 0
        self._errors = 0
        self._latency_sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def snapshot(self) -> WindowSnapshot:
        return WindowSnapshot(
            requests=self._requests,
            errors=self._errors,
            counts=tuple(self._counts),
            latency_sum_s=self._latency_sum,
            min_latency_s=self._min,
            max_latency_s=self._max,
        )
