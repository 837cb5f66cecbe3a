"""Per-version inference statistics in the shape of the Triton statistics extension.

Plain integer counters updated on the event loop thread (no locks needed); the transports
encode :meth:`VersionStats.to_json` / the gRPC message from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, n: int = 1) -> None:
        self.count += n
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=dict)  # Triton's reason: failures

    def record_success(self, rows: int, ns: int) -> None:
        self.success.add(ns)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, ns: int, reason: str = "OTHER") -> None:
        self.fail.add(ns)
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1
        self.last_inference_ms = int(time.time() * 1000)

    def record_batch(self, rows: int, n_requests: int, queue_ns_total: int, infer_ns: int) -> None:
        self.execution_count += 1
        self.queue.add(queue_ns_total, n_requests)
        # each request of the batch waited the whole execution: Triton adds it to every one
        self.compute_infer.add(infer_ns * n_requests, n_requests)
        self.compute_input.add(0, n_requests)
        self.compute_output.add(0, n_requests)
        b = self.batches.get(rows)
        if b is None:
            b = self.batches[rows] = BatchStats()
        b.compute_infer.add(infer_ns)
        b.compute_input.add(0)
        b.compute_output.add(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
