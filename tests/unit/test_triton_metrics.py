"""Triton's nv_* metrics: read from VersionStats, written as Triton writes them."""

from __future__ import annotations

import pytest

from turnout.server.errors import (
    Cancelled,
    InferenceFailed,
    InvalidInput,
    QueueFull,
    RequestTimeout,
    wire_status,
)
from turnout.server.observe.stats import VersionStats
from turnout.server.observe.triton_metrics import failure_reason, nv_samples, render


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (QueueFull("full"), "REJECTED"),
        (RequestTimeout("late"), "REJECTED"),
        (Cancelled("gone"), "CANCELED"),
        (InferenceFailed("ort"), "BACKEND"),
        (InvalidInput("shape"), "OTHER"),
    ],
)
def test_failure_reasons_follow_triton(exc: Exception, reason: str) -> None:
    assert failure_reason(wire_status(exc).grpc.name.lower()) == reason


def test_samples_and_text_come_from_the_statistics() -> None:
    s = VersionStats("m", "2")
    s.record_success(rows=3, ns=2_500)
    s.record_success(rows=1, ns=1_600)
    s.record_failure(ns=100, reason="BACKEND")
    s.record_batch(rows=4, n_requests=2, queue_ns_total=7_999, infer_ns=12_345)
    got = {(name, tuple(sorted(labels.items()))): v for name, labels, v in nv_samples([s])}
    labels = (("model", "m"), ("version", "2"))
    assert got[("nv_inference_request_success", labels)] == 2
    assert got[("nv_inference_count", labels)] == 4
    assert got[("nv_inference_exec_count", labels)] == 1
    assert got[("nv_inference_request_duration_us", labels)] == 4  # 4,100 ns
    assert got[("nv_inference_queue_duration_us", labels)] == 7
    # as in Triton, each of the batch's 2 requests waited its whole execution (2 x 12,345 ns)
    assert got[("nv_inference_compute_infer_duration_us", labels)] == 24
    assert (
        got[("nv_inference_request_failure", (("model", "m"), ("reason", "BACKEND"), ("version", "2")))] == 1
    )
    assert got[("nv_inference_request_failure", (("model", "m"), ("reason", "OTHER"), ("version", "2")))] == 0
    text = render(nv_samples([s])).decode()
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="m",version="2"} 2\n' in text
    assert 'nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 1\n' in text
    assert "_total" not in text
    assert render([]) == b""
