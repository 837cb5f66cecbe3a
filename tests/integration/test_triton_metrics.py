"""Triton's nv_* metrics on the real server agree with the statistics extension and with the
requests sent (some of them failing), over both protocols."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.prom import nv, parse_nv
from tests.server_proc import ServerProc, running_server

NV = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def send(server: ServerProc, good: int, bad: int) -> None:
    """``good`` iris requests of 2 rows each and ``bad`` of the wrong width, half per protocol."""
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    wrong = np.zeros((2, 3), dtype=np.float32)
    clients = [
        (grpcclient, grpcclient.InferenceServerClient(server.grpc_url)),
        (httpclient, httpclient.InferenceServerClient(server.http_url)),
    ]
    for i in range(good + bad):
        module, client = clients[i % 2]
        data = x if i < good else wrong
        inp = module.InferInput("input", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        if i < good:
            client.infer("iris", [inp])
        else:
            with pytest.raises(InferenceServerException):
                client.infer("iris", [inp])


def test_nv_metrics_match_statistics_and_requests(tmp_path: Path) -> None:
    good, bad = 30, 7
    with running_server(tmp_path, args=["--no-drift"]) as server:
        send(server, good, bad)
        text = httpx.get(f"{server.base}/metrics").text
        stats = httpx.get(f"{server.base}/v2/models/iris/versions/1/stats").json()["model_stats"][0]
        grpc_stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
            "iris", "1", as_json=True
        )["model_stats"][0]
    for name in NV:
        assert f"# TYPE {name} counter" in text, name
    samples = parse_nv(text)
    iris = {"model": "iris", "version": "1"}
    assert (
        nv(samples, "nv_inference_request_success", **iris)
        == good
        == stats["inference_stats"]["success"]["count"]
    )
    assert (
        nv(samples, "nv_inference_request_failure", **iris)
        == bad
        == stats["inference_stats"]["fail"]["count"]
    )
    assert nv(samples, "nv_inference_request_failure", reason="OTHER", **iris) == bad  # bad input
    assert nv(samples, "nv_inference_count", **iris) == 2 * good == stats["inference_count"]
    assert nv(samples, "nv_inference_exec_count", **iris) == stats["execution_count"]
    assert 1 <= stats["execution_count"] <= good
    inference = stats["inference_stats"]
    # gRPC ModelStatistics says the same (int64 fields come as strings in protobuf's JSON)
    assert int(grpc_stats["inference_stats"]["success"]["count"]) == good
    assert int(grpc_stats["inference_stats"]["fail"]["count"]) == bad
    assert int(grpc_stats["inference_count"]) == 2 * good
    assert nv(samples, "nv_inference_request_duration_us", **iris) == inference["success"]["ns"] // 1000 > 0
    assert nv(samples, "nv_inference_queue_duration_us", **iris) == inference["queue"]["ns"] // 1000
    assert (
        nv(samples, "nv_inference_compute_infer_duration_us", **iris)
        == inference["compute_infer"]["ns"] // 1000
    )
    # the other models are there, at zero
    assert nv(samples, "nv_inference_request_success", model="mlp", version="2") == 0
    assert ("nv_inference_request_success", frozenset({("model", "mlp"), ("version", "2")})) in samples


def test_nv_metrics_sum_over_workers(tmp_path: Path) -> None:
    good, bad = 40, 6
    with running_server(tmp_path, args=["--no-drift", "--workers", "2"]) as server:
        send(server, good, bad)
        # each worker's values reach the shared files within a second of its last request
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"{server.base}/metrics").text
            samples = parse_nv(text)
            total = nv(samples, "nv_inference_request_success", model="iris")
            if total == good or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert total == good
    assert "# TYPE nv_inference_count counter" in text
    assert nv(samples, "nv_inference_request_failure", model="iris") == bad
    assert nv(samples, "nv_inference_count", model="iris") == 2 * good
