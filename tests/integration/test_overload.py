"""Overload: requests beyond the in-flight limit or the batch queue are answered at once
with RESOURCE_EXHAUSTED / 503, the accepted ones are served, nothing is lost, and the server
serves normally as soon as the burst is over."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2

from tests.server_proc import ServerProc, start_server

BURST = 400


def heavy_repo(root: Path, max_queue_size: int) -> Path:
    """A model that takes milliseconds per 64-row batch, so requests really pile up."""
    rng = np.random.default_rng(0)
    dims = [256, 1024, 1024, 1024, 16]
    nodes, inits, x = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits.append(numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32) * 0.05, f"W{i}"))
        y = "output" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [y]))
        x = y
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    repo = root / "repo"
    (repo / "heavy" / "1").mkdir(parents=True)
    (repo / "heavy" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (repo / "heavy" / "config.pbtxt").write_text(
        f"max_batch_size: 64\ndynamic_batching {{ default_queue_policy {{ max_queue_size: {max_queue_size} }} }}\n"
    )
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    root = tmp_path_factory.mktemp("overload")
    s = start_server(root, heavy_repo(root, 1000), args=["--max-inflight", "16"])
    yield s
    assert s.stop() == 0, s.log()


def _grpc_payload() -> bytes:
    req = service_pb2.ModelInferRequest(model_name="heavy")
    req.inputs.add(name="input", datatype="FP32", shape=[64, 256])
    req.raw_input_contents.append(np.ones((64, 256), np.float32).tobytes())
    return req.SerializeToString()


async def _grpc_burst(url: str) -> Counter[str]:
    payload = _grpc_payload()
    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )

        async def one() -> str:
            try:
                r = await call(payload, timeout=60)
                return "ok" if list(r.outputs[0].shape) == [64, 16] else "wrong"
            except grpc.aio.AioRpcError as e:
                return e.code().name

        return Counter(await asyncio.gather(*(one() for _ in range(BURST))))


def test_grpc_burst_sheds_excess_fast(server: ServerProc) -> None:
    outcome = asyncio.run(_grpc_burst(server.grpc_url))
    assert sum(outcome.values()) == BURST
    # beyond the in-flight limit: RESOURCE_EXHAUSTED; beyond the core's pending-call limit the
    # stream is reset at once, which the client sees as CANCELLED. Nothing else, nothing hangs.
    assert set(outcome) <= {"ok", "RESOURCE_EXHAUSTED", "CANCELLED"}, outcome
    assert outcome["ok"] > 0 and outcome["RESOURCE_EXHAUSTED"] + outcome["CANCELLED"] > 0, outcome
    # recovers at once
    assert asyncio.run(_grpc_burst_one(server.grpc_url)) == "ok"


async def _grpc_burst_one(url: str) -> str:
    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        r = await call(_grpc_payload(), timeout=30)
        return "ok" if r.model_version == "1" else r.model_version


async def _http_burst(base: str) -> Counter[int]:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [64, 256], "data": [1.0] * (64 * 256)}]}
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:

        async def one() -> int:
            try:
                return (await c.post("/v2/models/heavy/infer", json=body)).status_code
            except httpx.TransportError:
                return -1

        return Counter(await asyncio.gather(*(one() for _ in range(BURST // 2))))


def test_http_burst_sheds_excess_fast(server: ServerProc) -> None:
    outcome = asyncio.run(_http_burst(server.base))
    assert sum(outcome.values()) == BURST // 2
    assert set(outcome) <= {200, 503}, outcome
    assert outcome[200] > 0 and outcome[503] > 0, outcome
    r = httpx.post(
        f"{server.base}/v2/models/heavy/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]},
    )
    assert r.status_code == 200
    assert server.alive()


def test_full_batch_queue_answers_resource_exhausted(tmp_path: Path) -> None:
    """The batch queue (4 requests) fills long before the in-flight limit."""
    s = start_server(tmp_path, heavy_repo(tmp_path, 4), ["--max-inflight", "1000"])
    try:

        async def burst() -> tuple[Counter[str], list[str]]:
            req = service_pb2.ModelInferRequest(model_name="heavy")
            req.inputs.add(name="input", datatype="FP32", shape=[64, 256])
            req.raw_input_contents.append(np.ones((64, 256), np.float32).tobytes())
            payload = req.SerializeToString()
            messages: list[str] = []
            async with grpc.aio.insecure_channel(s.grpc_url) as ch:
                call = ch.unary_unary(
                    "/inference.GRPCInferenceService/ModelInfer",
                    request_serializer=lambda b: b,
                    response_deserializer=service_pb2.ModelInferResponse.FromString,
                )

                async def one() -> str:
                    try:
                        await call(payload, timeout=120)
                        return "ok"
                    except grpc.aio.AioRpcError as e:
                        messages.append(e.details() or "")
                        return e.code().name

                return Counter(await asyncio.gather(*(one() for _ in range(120)))), messages

        outcome, messages = asyncio.run(burst())
        assert set(outcome) <= {"ok", "RESOURCE_EXHAUSTED"}, outcome
        assert outcome["ok"] > 0 and outcome["RESOURCE_EXHAUSTED"] > 0, outcome
        assert any("queue" in m for m in messages), messages[:3]
        text = httpx.get(f"{s.base}/metrics").text
        assert 'turnout_rejected_requests_total{model="heavy",reason="queue_full",version="1"}' in text
    finally:
        assert s.stop() == 0
