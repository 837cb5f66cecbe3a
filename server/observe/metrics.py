"""Prometheus metrics on an injected registry (no global state).

The per-request metrics (request counts, latency, batch size, queue and compute time) are
kept as tallies: plain counts on the event loop thread, added to their Prometheus children by
:meth:`Metrics.flush` before every scrape and once a second. A Prometheus child takes a lock
and walks its buckets on every update, which costs the event loop far more per request than a
plain count (benchmarks/results/NOTES.md).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from turnout.server.observe.triton_metrics import Split, TritonMetrics, render

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class HistogramTally:
    """Observations for one labelled histogram, counted per bucket until :meth:`flush`.
    Event loop thread only (no lock)."""

    __slots__ = ("_bounds", "_child", "_counts", "_dirty", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        # the child's upper bounds, +Inf last; a value goes to the first bound >= it, as
        # Histogram.observe does
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._dirty = False

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        # prometheus_client has no public call that adds n observations at once; its buckets
        # and sum are value objects with inc(), which also work in multiprocess mode
        # (tests/unit/test_metrics.py checks the exposition against plain observe()).
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._dirty = False
        for bucket, n in zip(self._child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self._child._sum.inc(total)


class CounterTally:
    """Increments of one labelled counter, added to it by :meth:`flush`."""

    __slots__ = ("_child", "_n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._n = 0

    def inc(self, n: int = 1) -> None:
        self._n += n

    def flush(self) -> None:
        if self._n:
            n, self._n = self._n, 0
            self._child.inc(n)


_T = TypeVar("_T", HistogramTally, CounterTally)


def multiprocess_mode() -> bool:
    """Whether the server runs several workers whose metrics meet in PROMETHEUS_MULTIPROC_DIR
    (set by the supervisor; prometheus_client reads it when first imported)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ProcessMetrics:
    """The process_* metrics (CPU seconds, memory, open files, start time) of this process.

    One process: prometheus_client's ProcessCollector and PlatformCollector, on the registry.
    Several workers: a scrape reads the files every worker writes, not a registry, so each
    worker copies its process samples into gauges of the same names in multiprocess mode
    "liveall" by :meth:`flush`: one series per live worker, labelled ``pid``, and dropped when
    the supervisor marks a dead worker's files."""

    def __init__(self, registry: CollectorRegistry, multiprocess: bool) -> None:
        self._registry = registry
        self._multiprocess = multiprocess
        self._gauges: dict[str, Gauge] = {}
        if multiprocess:
            self._collector = ProcessCollector(registry=None)
        else:
            self._collector = ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def flush(self) -> None:
        if not self._multiprocess:
            return  # the collector reads /proc when scraped
        for family in self._collector.collect():
            for sample in family.samples:
                gauge = self._gauges.get(sample.name)
                if gauge is None:
                    gauge = self._gauges[sample.name] = Gauge(
                        sample.name,
                        family.documentation + " (per worker process)",
                        registry=self._registry,
                        multiprocess_mode="liveall",
                    )
                gauge.set(sample.value)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._tallies: dict[tuple[Any, ...], HistogramTally | CounterTally] = {}
        self.process = ProcessMetrics(registry, multiprocess_mode())
        # Triton's nv_* names, read from the statistics (attached by the runtime)
        self.triton = TritonMetrics(registry, multiprocess_mode())
        self.requests = Counter(
            "turnout_requests",
            "Inference requests by outcome",
            ["model", "version", "protocol", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "turnout_request_duration_seconds",
            "Server-side time of successful inference requests",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "turnout_batch_size",
            "Rows per executed batch",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            "turnout_queue_duration_seconds",
            "Time requests wait in the batch queue",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_time = Histogram(
            "turnout_compute_duration_seconds",
            "onnxruntime time per batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "turnout_inflight_requests",
            "Inference requests in progress (being validated, queued or run), sampled before each"
            " scrape and once a second",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._samplers: list[Callable[[], None]] = []
        self.queue_depth = Gauge(
            "turnout_queue_depth",
            "Requests waiting in the batch queue",
            ["model", "version"],
            registry=registry,
        )
        self.rejected = Counter(
            "turnout_rejected_requests",
            "Requests rejected by the batcher",
            ["model", "version", "reason"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "turnout_model_ready",
            "1 when the version serves",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.load_failures = Counter(
            "turnout_model_load_failures", "Failed model version loads", ["model"], registry=registry
        )
        self.shadow = Counter(
            "turnout_shadow_requests",
            "Mirrored requests by outcome",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.shadow_disagreement = Gauge(
            "turnout_shadow_disagreement",
            "Share of mirrored rows whose output disagrees",
            ["model", "primary", "shadow"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.drift_status = Gauge(
            "turnout_drift_status",
            "Drift status: 0 collecting, 1 ok, 2 warning, 3 drift",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.drift_score = Gauge(
            "turnout_drift_score",
            "Drift score per feature",
            ["model", "version", "feature"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.drift_dropped = Counter(
            "turnout_drift_dropped", "Observations dropped by the drift queue", registry=registry
        )
        self.drift_malformed = Counter(
            "turnout_drift_malformed",
            "Batches of rows left out of drift monitoring because they did not fit the version's "
            "earlier rows or reference (another width, mismatched rows)",
            registry=registry,
        )
        self.drift_restarts = Counter(
            "turnout_drift_monitor_restarts",
            "Drift monitor processes started to replace one that died",
            registry=registry,
        )
        self.request_log_written = Counter(
            "turnout_request_log_written",
            "Request records written to the request log",
            ["model", "version"],
            registry=registry,
        )
        self.request_log_dropped = Counter(
            "turnout_request_log_dropped",
            "Request records dropped because the log writer's queue was full or writing failed",
            ["model", "version"],
            registry=registry,
        )
        self.feedback = Counter(
            "turnout_feedback",
            "Ground-truth feedback items by outcome (accepted, duplicate, unknown, late, invalid)",
            ["model", "outcome"],
            registry=registry,
        )
        self.feedback_evictions = Counter(
            "turnout_feedback_evictions",
            "Predictions evicted from the feedback store before any feedback arrived",
            ["model"],
            registry=registry,
        )
        self.accuracy = Gauge(
            "turnout_model_accuracy",
            "Accuracy of a classifier version on the rows that received feedback (cumulative)",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.estimated_accuracy = Gauge(
            "turnout_model_estimated_accuracy",
            "Label-free accuracy estimate (mean top-class probability) of recent predictions",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.retrain_events = Counter(
            "turnout_retrain_events",
            "Retraining webhook events by reason (drift, accuracy) and outcome (delivered, failed,"
            " dropped: the queue was full)",
            ["reason", "outcome"],
            registry=registry,
        )
        self.edge_events = Counter(
            "turnout_edge_events",
            "Connections and requests the edge refused or closed, by protocol and defence",
            ["protocol", "event"],
            registry=registry,
        )

    def sample(self, sampler: Callable[[], None]) -> None:
        """Call ``sampler`` at every :meth:`flush` (it sets gauges read from live state)."""
        self._samplers.append(sampler)

    def edge_event(self, protocol: str) -> Callable[[str], None]:
        """A function that counts one event of the edge's defences for ``protocol``."""

        def count(event: str) -> None:
            self.edge_events.labels(protocol, event).inc()

        return count

    def histogram_tally(self, metric: Histogram, *labels: str) -> HistogramTally:
        """The tally of ``metric`` for ``labels`` (one per label set, created once)."""
        return self._tally(HistogramTally, metric, labels)

    def counter_tally(self, metric: Counter, *labels: str) -> CounterTally:
        return self._tally(CounterTally, metric, labels)

    def _tally(self, kind: type[_T], metric: Histogram | Counter, labels: tuple[str, ...]) -> _T:
        key = (metric, *labels)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = kind(metric.labels(*labels))
        assert isinstance(tally, kind)
        return tally

    def flush(self) -> None:
        """Add every tally to its Prometheus child (event loop thread), and copy this worker's
        process metrics when several workers share the metrics."""
        for tally in self._tallies.values():
            tally.flush()
        for sampler in self._samplers:
            sampler()
        self.process.flush()
        self.triton.flush()

    def exposition(self) -> bytes:
        self.flush()
        return exposition(self.registry) + self.triton.exposition()


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition: this process's registry, or every worker's when the server runs
    several processes (PROMETHEUS_MULTIPROC_DIR set by the supervisor), the nv_* counters
    summed over the workers."""
    if multiprocess_mode():
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        PlatformCollector(registry=merged)  # python_info: the same in every worker
        split = Split(merged.collect())  # the nv_* sums are written as Triton's counters
        return generate_latest(split) + render(split.nv)
    return generate_latest(registry)
