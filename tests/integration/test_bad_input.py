"""Bad input gets the right code and a clear message; the server keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.server_proc import ServerProc, start_server

LIMIT = 1 << 20  # 1 MiB request limit for this server


@pytest.fixture(scope="module", params=["asyncio", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """Each gRPC transport (Turnout's own, the default, and grpcio's) answers bad input alike."""
    args = ["--max-request-bytes", str(LIMIT), "--grpc-transport", request.param]
    s = start_server(tmp_path_factory.mktemp("bad"), args=args)
    yield s
    assert s.stop() == 0, s.log()


def good_http(server: ServerProc) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = httpx.post(f"{server.base}/v2/models/iris/infer", json=body)
    assert r.status_code == 200, r.text


def good_grpc(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    req = service_pb2.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    assert stub.ModelInfer(req).outputs[0].name == "label"


def iris_json(**override: object) -> dict[str, object]:
    tensor: dict[str, object] = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    tensor.update(override)
    return {"inputs": [tensor]}


HTTP_CASES = [
    ("wrong name", "iris", iris_json(name="inptu"), 400, "no input 'inptu'"),
    ("wrong dtype", "iris", iris_json(datatype="FP64"), 400, "expects FP32"),
    ("unknown dtype", "iris", iris_json(datatype="FLOAT"), 400, "unknown datatype"),
    ("wrong shape", "iris", iris_json(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, "expects [-1, 4]"),
    ("count mismatch", "iris", iris_json(shape=[2, 4]), 400, "expected 8"),
    ("batch too big", "iris", iris_json(shape=[300, 4], data=[0.0] * 1200), 400, "max_batch_size"),
    ("bad data", "iris", iris_json(data=["a", "b", "c", "d"]), 400, "input 'input'"),
    ("no inputs", "iris", {"inputs": []}, 400, "non-empty 'inputs'"),
    ("not an object", "iris", [1, 2], 400, "JSON object"),
    ("negative dim", "iris", iris_json(shape=[-1, 4]), 400, "negative"),
    ("unknown model", "nope", iris_json(), 404, "unknown model 'nope'"),
    ("unknown output", "iris", {**iris_json(), "outputs": [{"name": "logits"}]}, 400, "no output 'logits'"),
]


@pytest.mark.parametrize(
    ("case", "model", "body", "status", "message"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES]
)
def test_http_bad_json(
    server: ServerProc, case: str, model: str, body: object, status: int, message: str
) -> None:
    r = httpx.post(f"{server.base}/v2/models/{model}/infer", content=json.dumps(body))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    good_http(server)


def test_http_unknown_version(server: ServerProc) -> None:
    r = httpx.post(f"{server.base}/v2/models/iris/versions/7/infer", json=iris_json())
    assert r.status_code == 404 and "no version '7'" in r.json()["error"]


def test_http_malformed_json(server: ServerProc) -> None:
    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=b'{"inputs": [')
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    good_http(server)


def _binary_body(n_bytes: int, declared: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    ).encode()
    body = header + np.ones(4, np.float32).tobytes()[:n_bytes]
    return body, {"Inference-Header-Content-Length": str(len(header))}


def test_http_truncated_binary(server: ServerProc) -> None:
    body, headers = _binary_body(10, 16)
    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=body, headers=headers)
    assert r.status_code == 400 and "runs past the end" in r.json()["error"]
    good_http(server)


def test_http_wrong_byte_count(server: ServerProc) -> None:
    body, headers = _binary_body(12, 12)
    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=body, headers=headers)
    assert r.status_code == 400 and "expected 16" in r.json()["error"]


def test_http_bad_header_length(server: ServerProc) -> None:
    r = httpx.post(
        f"{server.base}/v2/models/iris/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "99"},
    )
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_http_oversized_body(server: ServerProc) -> None:
    big = b"x" * (LIMIT + 1)
    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(LIMIT // 65536 + 2):
            yield b"y" * 65536

    r = httpx.post(f"{server.base}/v2/models/iris/infer", content=chunks())
    assert r.status_code == 413
    # the control endpoints read their bodies through the same limit
    for url in ("/v2/repository/index", "/v2/repository/models/iris/load"):
        r = httpx.post(f"{server.base}{url}", content=big)
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"], url
        r = httpx.post(f"{server.base}{url}", content=chunks())
        assert r.status_code == 413, url
    good_http(server)


def test_http_garbage_on_the_socket(server: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        s.recv(1024)
    good_http(server)


def test_http_unknown_route(server: ServerProc) -> None:
    r = httpx.get(f"{server.base}/v3/whatever")
    assert r.status_code == 404 and "error" in r.json()


# ---- gRPC -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(server: ServerProc) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    opts = [("grpc.max_send_message_length", 8 * LIMIT)]
    with grpc.insecure_channel(server.grpc_url, options=opts) as ch:
        yield service_pb2_grpc.GRPCInferenceServiceStub(ch)


def _req(
    name: str = "input",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 4),
    raw: bytes | None = None,
    model: str = "iris",
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    req.raw_input_contents.append(raw if raw is not None else np.ones(shape, np.float32).tobytes())
    return req


GRPC_CASES = [
    ("wrong name", _req(name="x"), grpc.StatusCode.INVALID_ARGUMENT, "no input 'x'"),
    ("wrong dtype", _req(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT, "expects FP32"),
    ("unknown dtype", _req(datatype="F32"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype"),
    ("wrong shape", _req(shape=(1, 3)), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1, 4]"),
    ("byte count", _req(raw=b"\x00" * 15), grpc.StatusCode.INVALID_ARGUMENT, "expected 16"),
    ("unknown model", _req(model="ghost"), grpc.StatusCode.NOT_FOUND, "unknown model 'ghost'"),
]


@pytest.mark.parametrize(("case", "req", "code", "message"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_bad_request(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    case: str,
    req: service_pb2.ModelInferRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == code
    assert message in e.value.details()
    good_grpc(stub)


def test_grpc_raw_count_mismatch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    req = _req()
    req.raw_input_contents.append(b"extra")
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in e.value.details()


def test_grpc_malformed_protobuf(server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in e.value.details()
    good_grpc(stub)


def test_grpc_oversized_message(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    req = _req(shape=(1, 4))
    req.raw_input_contents[0] = b"\x00" * (LIMIT + 10)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    good_grpc(stub)


def test_grpc_unknown_version(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    req = _req()
    req.model_version = "3"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no version '3'" in e.value.details()


def test_server_survived(server: ServerProc, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert server.alive()
    good_grpc(stub)
    good_http(server)
    log = server.log()
    assert "Traceback" not in log, log


def test_corrupt_model_is_reported_while_others_serve(tmp_path: Path) -> None:
    import shutil

    from tests.server_proc import DEMO_REPO

    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "iris", repo / "iris")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x07this is not an onnx graph")
    s = start_server(tmp_path, repo, wait_ready=False)
    try:
        import time

        deadline = time.monotonic() + 30
        while True:
            idx = httpx.post(f"{s.base}/v2/repository/index").json()
            states = {(m["name"], m.get("version")): m for m in idx}
            if ("iris", "1") in states and ("broken", "1") in states:
                break
            assert time.monotonic() < deadline, idx
            time.sleep(0.1)
        assert states[("iris", "1")]["state"] == "READY"
        assert states[("broken", "1")]["state"] == "UNAVAILABLE"
        assert "cannot load" in states[("broken", "1")]["reason"]
        good_http(s)
        assert httpx.get(f"{s.base}/v2/models/broken/ready").status_code == 503
        assert httpx.get(f"{s.base}/v2/health/ready").status_code == 503  # not every model serves
        r = httpx.post(f"{s.base}/v2/models/broken/infer", json=iris_json())
        assert r.status_code == 503 and "no version ready" in r.json()["error"]
        assert "cannot load" in s.log()
    finally:
        assert s.stop() == 0
