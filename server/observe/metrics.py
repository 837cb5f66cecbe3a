"""Prometheus metrics on an injected registry (no global state)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

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


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition: this process's registry, or every worker's when the server runs
    several processes (PROMETHEUS_MULTIPROC_DIR set by the supervisor)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(registry)
