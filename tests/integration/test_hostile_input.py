"""Hostile input on the demo repository with default flags (issue 16): every case answers
400 / INVALID_ARGUMENT (never 500, UNKNOWN or INTERNAL), writes no traceback, costs no memory
to speak of, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.h2raw import PREFACE
from tests.h2raw import frame as _frame
from tests.h2raw import read_frames as _read_frames
from tests.server_proc import ServerProc, start_server

DEEP = 1000
MANY_DIMS = 10_000
COPIES = 1000  # the same output named this many times


@pytest.fixture(scope="module", params=["asyncio", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The demo server with default flags, on Turnout's own gRPC transport and on grpcio's."""
    args = [] if request.param == "asyncio" else ["--grpc-transport", "grpcio"]
    s = start_server(tmp_path_factory.mktemp("hostile"), args=args)
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def stub(server: ServerProc) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(server.grpc_url, options=opts) as ch:
        yield service_pb2_grpc.GRPCInferenceServiceStub(ch)


def rss_kib(server: ServerProc) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


def still_serves(server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """A normal inference on each protocol succeeds, and no traceback reached the log."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = httpx.post(f"{server.base}/v2/models/iris/infer", json=body)
    assert r.status_code == 200, r.text
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    assert stub.ModelInfer(req).outputs[0].name == "label"
    assert server.alive()
    log = server.log()
    assert "Traceback" not in log, log


def http_refused(
    server: ServerProc, body: bytes, message: str, headers: dict[str, str] | None = None
) -> None:
    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.text


def grpc_refused(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, req: service_pb2.ModelInferRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert message in (e.value.details() or "")


def iris_request(rows: int = 1) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[rows, 4])
    req.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return req


# ---- limits of a shape and of nesting ------------------------------------------------------


@pytest.mark.parametrize("datatype", ["BYTES", "FP32"])
def test_http_data_nested_a_thousand_deep(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str
) -> None:
    leaf = '"a"' if datatype == "BYTES" else "1"
    data = "[" * DEEP + leaf + "]" * DEEP
    body = f'{{"inputs": [{{"name": "input", "datatype": "{datatype}", "shape": [1, 1], "data": {data}}}]}}'
    http_refused(server, body.encode(), "input 'input'")
    still_serves(server, stub)


def test_http_shape_with_ten_thousand_dims(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    shape = [1] * MANY_DIMS
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": shape, "data": ["a"]}]}
    http_refused(server, json.dumps(body).encode(), f"shape has {MANY_DIMS} dimensions, the limit is 32")
    # the binary tensor extension
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 4}}
            ]
        }
    ).encode()
    http_refused(
        server,
        header + b"\x00" * 4,
        f"shape has {MANY_DIMS} dimensions",
        {"Inference-Header-Content-Length": str(len(header))},
    )
    still_serves(server, stub)


def test_grpc_shape_with_ten_thousand_dims(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[1] * MANY_DIMS)
    req.raw_input_contents.append(b"\x00" * 4)
    grpc_refused(stub, req, f"shape has {MANY_DIMS} dimensions, the limit is 32")
    still_serves(server, stub)


def test_huge_element_counts_are_refused_before_allocation(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    before = rss_kib(server)
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="BYTES", shape=[1 << 30])
    req.raw_input_contents.append(b"\x00" * 16)
    grpc_refused(stub, req, "cannot hold 1073741824 elements")
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[0, 1 << 62])
    req.raw_input_contents.append(b"")
    grpc_refused(stub, req, "elements, the limit")
    assert rss_kib(server) - before < 100 * 1024
    still_serves(server, stub)


# ---- response amplification ----------------------------------------------------------------


def test_http_the_same_output_a_thousand_times(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    rows = 256
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": [0.5] * (rows * 4)}],
        "outputs": [{"name": "probabilities"}] * COPIES,
    }
    before = rss_kib(server)
    http_refused(server, json.dumps(body).encode(), "output 'probabilities' is requested more than once")
    # through tritonclient too, binary outputs
    h = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("input", [rows, 4], "FP32")
    x.set_data_from_numpy(np.full((rows, 4), 0.5, np.float32))
    outs = [httpclient.InferRequestedOutput("probabilities", binary_data=True) for _ in range(COPIES)]
    with pytest.raises(InferenceServerException) as e:
        h.infer("iris", [x], outputs=outs)
    assert e.value.status() == "400" and "requested more than once" in e.value.message()
    assert rss_kib(server) - before < 100 * 1024
    still_serves(server, stub)


def test_grpc_the_same_output_a_thousand_times(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    req = iris_request(256)
    for _ in range(COPIES):
        req.outputs.add(name="probabilities")
    before = rss_kib(server)
    grpc_refused(stub, req, "output 'probabilities' is requested more than once")
    assert rss_kib(server) - before < 100 * 1024
    still_serves(server, stub)


def test_duplicate_inputs(server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    http_refused(server, json.dumps({"inputs": [tensor, tensor]}).encode(), "appears more than once")
    req = iris_request()
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    grpc_refused(stub, req, "appears more than once")
    still_serves(server, stub)


# ---- corrupt compression -----------------------------------------------------------------


def _raw_grpc_call(port: int, headers: list[tuple[str, str]], message: bytes) -> tuple[str, str]:
    """One unary call over a raw HTTP/2 connection: its grpc-status and grpc-message."""
    block = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers,
        ]
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            PREFACE
            + _frame(0x4, 0, 0, b"")  # SETTINGS
            + _frame(0x1, 0x4, 1, block)  # HEADERS, END_HEADERS
            + _frame(0x0, 0x1, 1, message)  # DATA, END_STREAM
        )
        frames = _read_frames(sock, lambda fs: any(f[0] == 0x1 and f[1] & 0x1 and f[2] == 1 for f in fs))
    decoder = hpack.Decoder()
    fields: dict[str, str] = {}
    for kind, _, sid, payload in frames:
        if kind == 0x1 and sid == 1:
            fields.update(decoder.decode(payload))
    return fields.get("grpc-status", ""), fields.get("grpc-message", "")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_grpc_corrupt_compressed_message(
    server: ServerProc,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    encoding: str,
    request: pytest.FixtureRequest,
) -> None:
    whole = gzip.compress(iris_request().SerializeToString())
    for garbage in (b"this is not compressed data", whole[: len(whole) // 2]):
        message = b"\x01" + len(garbage).to_bytes(4, "big") + garbage
        status, details = _raw_grpc_call(server.grpc_port, [("grpc-encoding", encoding)], message)
        if "grpcio" in request.node.callspec.id:  # grpcio inflates messages itself and answers for them
            assert status not in ("", "0"), (status, details)
            continue
        assert status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), (status, details)
        assert f"not valid {encoding} data" in details
    still_serves(server, stub)


def test_http_gzip_body_that_is_not_gzip(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    # Turnout does not inflate HTTP bodies: a Content-Encoding is not honoured, the body is read as JSON
    r = httpx.post(
        f"{server.base}/v2/models/iris/infer",
        content=b"\x1f\x8b garbage that is not gzip",
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    still_serves(server, stub)


# ---- the repository index ----------------------------------------------------------------


def test_loads_of_made_up_models_leave_the_index_alone(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    h = httpclient.InferenceServerClient(server.http_url)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    before = h.get_model_repository_index()
    for i in range(20):
        with pytest.raises(InferenceServerException) as e:
            h.load_model(f"nosuch{i}")
        assert e.value.status() == "400"
        assert f"failed to load 'nosuch{i}', failed to poll from model repository" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            g.load_model(f"nosuch-grpc{i}")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to poll from model repository" in e.value.message()
    with httpx.Client(base_url=server.base) as client:  # many more, quickly
        for i in range(500):
            r = client.post(f"/v2/repository/models/junk{i}/load")
            assert r.status_code == 400 and "not in the repository" in r.json()["error"]
    assert h.get_model_repository_index() == before
    assert len(before) == 4  # echo, iris, mlp 1 and 2
    still_serves(server, stub)


# ---- drift -----------------------------------------------------------------------------------


def _echo_body(meta: dict[str, list[dict[str, str]]], n: int) -> dict[str, object]:
    inputs = []
    for spec in meta["inputs"]:
        dt = spec["datatype"]
        data: list[object] = ["a"] * n if dt == "BYTES" else [True] * n if dt == "BOOL" else [1] * n
        inputs.append({"name": spec["name"], "datatype": dt, "shape": [1, n], "data": data})
    return {"inputs": inputs}


def test_malformed_drift_batches_are_counted_not_traced(
    server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """The echo model's width varies per request: rows of another width than the first cannot
    join its drift monitoring. They are served, counted and logged in one rate-limited line."""
    meta = httpx.get(f"{server.base}/v2/models/echo").json()
    for k in range(40):
        r = httpx.post(f"{server.base}/v2/models/echo/infer", json=_echo_body(meta, 2 + k % 3))
        assert r.status_code == 200, r.text
    metrics = httpx.get(f"{server.base}/metrics").text
    match = re.search(r"^turnout_drift_malformed_total (\S+)$", metrics, re.M)
    assert match is not None and float(match.group(1)) >= 20, metrics
    log = server.log()
    assert log.count("not monitored") <= 5, log  # the rate-limited logger's burst
    still_serves(server, stub)
