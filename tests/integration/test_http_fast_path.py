"""The inference fast path inside the HTTP protocol (server/http/protocol.py): requests it
answers without ASGI and requests it leaves to uvicorn must look the same to a client, in
order, on one keep-alive connection."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.tensors import echo_arrays
from tests.server_proc import ServerProc, demo_or_variant

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _responses(
    sock: socket.socket, count: int, timeout: float = 10.0
) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` HTTP/1.1 responses (Content-Length framed) off one connection."""
    sock.settimeout(timeout)
    buf, out = b"", []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        while b"\r\n\r\n" in buf and len(out) < count:
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            n = int(headers["content-length"])
            if len(rest) < n:
                break
            out.append((int(lines[0].split()[1]), headers, rest[:n]))
            buf = rest[n:]
        if len(out) < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return out


@pytest.fixture(scope="module", params=["fast path", "through ASGI"])
def either(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The demo server with the fast path (the default) and without (--http-fast-path false)."""
    variant = None if request.param == "fast path" else ["--http-fast-path", "false"]
    yield from demo_or_variant(request, tmp_path_factory, variant)


def test_pipelined_mix_answers_in_order(either: ServerProc) -> None:
    demo_server = either
    body = json.dumps(ROW).encode()
    bad = json.dumps(
        {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    )
    wire = (
        _post("/v2/models/iris/infer", body)
        + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        + _post("/v2/models/iris/versions/1/infer", body)
        + _post("/v2/models/iris/infer", bad.encode())
        + b"GET /v2/models/iris HTTP/1.1\r\nHost: x\r\n\r\n"
        + _post("/v2/models/iris/infer", body)
    )
    with socket.create_connection(("127.0.0.1", demo_server.http_port)) as sock:
        sock.sendall(wire)
        got = _responses(sock, 6)
    assert [status for status, _, _ in got] == [200, 200, 200, 400, 200, 200]
    assert json.loads(got[0][2])["model_name"] == "iris" and got[0][1]["x-model-version"] == "1"
    assert json.loads(got[1][2]) == {"ready": True}
    assert "no input 'nope'" in json.loads(got[3][2])["error"]
    assert json.loads(got[4][2])["name"] == "iris"
    assert got[0][2] == got[2][2] == got[5][2]


def test_connection_close_and_http10(either: ServerProc) -> None:
    demo_server = either
    body = json.dumps(ROW).encode()
    for request in (
        _post("/v2/models/iris/infer", body, "Connection: close\r\n"),
        _post("/v2/models/iris/infer", body).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    ):
        with socket.create_connection(("127.0.0.1", demo_server.http_port)) as sock:
            sock.sendall(request)
            (status, headers, payload), *_ = _responses(sock, 1)
            assert status == 200 and json.loads(payload)["outputs"]
            assert headers.get("connection") == "close"
            sock.settimeout(5)
            assert sock.recv(100) == b""  # the server closed it


def test_large_binary_body_and_chunked_upload(demo_server: ServerProc) -> None:
    arrays = echo_arrays(rows=32, cols=800)  # about 1.3 MB of binary tensors, many socket reads
    c = httpclient.InferenceServerClient(demo_server.http_url, network_timeout=60)
    inputs = []
    for name, arr in arrays.items():
        inp = httpclient.InferInput(name, list(arr.shape), name.removeprefix("IN_"))
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    res = c.infer("echo", inputs)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(res.as_numpy(name.replace("IN_", "OUT_")), arr)
    # a chunked upload (no Content-Length) takes uvicorn's path and gets the same answer
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [64, 32], "data": x.ravel().tolist()}]}
    )
    url = f"{demo_server.base}/v2/models/mlp/infer"
    plain = httpx.post(url, content=body.encode(), headers={"content-type": "application/json"})
    parts = [body[i : i + 4096].encode() for i in range(0, len(body), 4096)]
    chunked = httpx.post(url, content=iter(parts), headers={"content-type": "application/json"})
    assert plain.status_code == chunked.status_code == 200
    assert plain.json()["outputs"] == chunked.json()["outputs"]


def test_requests_cut_off_mid_body_do_not_hold_capacity(demo_server: ServerProc) -> None:
    body = json.dumps(ROW).encode()
    for _ in range(300):  # more than --max-inflight (256): each would hold a slot if leaked
        with socket.create_connection(("127.0.0.1", demo_server.http_port)) as sock:
            sock.sendall(_post("/v2/models/iris/infer", body)[: -len(body) // 2])
    time.sleep(0.5)
    r = httpx.post(f"{demo_server.base}/v2/models/iris/infer", json=ROW)
    assert r.status_code == 200, r.text
