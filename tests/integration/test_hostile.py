"""Hostile traffic against the real server: each test plays one cheap attack that used to stop,
stall or bloat Turnout, checks the defence answers it, that a normal client is served
meanwhile, and that the server's memory and file descriptors come back.

Attacks run only against 127.0.0.1, every loop is bounded in count and time, and the server
runs with short timeouts so that the defences act within seconds."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc._utils as grpc_utils
from tritonclient.grpc import service_pb2

from tests.h2raw import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    data_frames,
    frame,
    goaway_code,
    message,
    read_frames,
    request_headers,
)
from tests.integration.tensors import echo_arrays
from tests.server_proc import ServerProc, start_server

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
ENHANCE_YOUR_CALM, REFUSED_STREAM = 0xB, 0x7
MAX_INFLIGHT = 16
EDGE_ARGS = [
    "--max-inflight",
    str(MAX_INFLIGHT),
    "--handshake-timeout-secs",
    "1",
    "--header-timeout-secs",
    "1",
    "--request-timeout-secs",
    "2",
    "--write-timeout-secs",
    "2",
    "--idle-timeout-secs",
    "3",
    "--max-queued-bytes",
    str(8 << 20),
]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # this process opens many sockets below
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    server = start_server(tmp_path_factory.mktemp("edge"), args=EDGE_ARGS)
    yield server
    assert server.stop() == 0, server.log()


# ---------------------------------------------------------------- what a normal client sees


def grpc_ok(server: ServerProc) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("input", [1, 32], "FP32")
        inp.set_data_from_numpy(np.ones((1, 32), np.float32))
        assert client.infer("mlp", [inp], client_timeout=10).as_numpy("output").shape == (1, 8)
        assert client.is_server_ready()
    finally:
        client.close()


def http_ok(server: ServerProc) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": [1.0] * 32}]}
    r = httpx.post(f"{server.base}/v2/models/mlp/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200


def served(server: ServerProc) -> None:
    grpc_ok(server)
    http_ok(server)


def fds(server: ServerProc) -> int:
    return len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))


def rss_mb(server: ServerProc) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_s(server: ServerProc) -> float:
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


@contextlib.contextmanager
def recovers(server: ServerProc, rss_growth_mb: float = 40.0) -> Iterator[None]:
    """The server's descriptors return to what they were, and its memory grows by less than
    ``rss_growth_mb``, once the attack in the block has ended."""
    served(server)
    fd0, rss0 = fds(server), rss_mb(server)
    yield
    deadline = time.monotonic() + 10
    while fds(server) > fd0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fds(server) <= fd0, f"descriptors {fd0} -> {fds(server)}"
    assert rss_mb(server) - rss0 < rss_growth_mb, f"RSS {rss0:.0f} -> {rss_mb(server):.0f} MB"
    assert server.alive()
    served(server)


def h2(server: ServerProc, settings: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
    return sock


def closed(sock: socket.socket, timeout: float) -> bool:
    """Does the peer close ``sock`` within ``timeout`` (whatever it sends first)?"""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def infer_request(model: str, arrays: dict[str, np.ndarray]) -> bytes:
    inputs = []
    for name, a in arrays.items():
        dtype = "BYTES" if a.dtype == object else grpcclient.np_to_triton_dtype(a.dtype)
        inp = grpcclient.InferInput(name, list(a.shape), dtype)
        inp.set_data_from_numpy(a)
        inputs.append(inp)
    req = grpc_utils._get_inference_request(model, inputs, "", "", None, 0, False, False, 0, None, None)
    return bytes(req.SerializeToString())


# ---------------------------------------------------------------- slot lock-out


def test_grpc_calls_that_never_send_their_request_hold_no_slot(edge: ServerProc) -> None:
    with recovers(edge):
        socks = [h2(edge) for _ in range(3)]  # 300 calls, far more than the 16 inference slots
        block = request_headers(INFER)
        for sock in socks:
            sock.sendall(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in range(1, 202, 2)))
        first = read_frames(socks[0], lambda fs: any(f[0] == RST_STREAM for f in fs))
        settings = next(p for kind, flags, _, p in first if kind == SETTINGS and not flags & 1)
        pairs = {int.from_bytes(settings[i : i + 2], "big"): settings[i + 2 : i + 6] for i in range(0, 36, 6)}
        assert int.from_bytes(pairs[0x3], "big") == 100  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert (RST_STREAM, 0, 201, REFUSED_STREAM.to_bytes(4, "big")) in first  # the 101st stream
        served(edge)  # while 300 calls wait for requests that never come
        # the request timeout answers each of them
        ended = read_frames(
            socks[1], lambda fs: sum(1 for f in fs if f[0] == HEADERS and f[1] & END_STREAM) >= 100, 10
        )
        statuses = [dict(hpack.Decoder().decode(p)) for kind, fl, _, p in ended if kind == HEADERS and fl & 1]
        assert len(statuses) == 100 and {s["grpc-status"] for s in statuses} == {"4"}  # DEADLINE_EXCEEDED
        for sock in socks:
            sock.close()


def test_http_requests_that_never_send_their_body_hold_no_slot(edge: ServerProc) -> None:
    with recovers(edge):
        head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        socks = [socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) for _ in range(40)]
        for sock in socks:
            sock.sendall(head)
        time.sleep(0.3)
        http_ok(edge)  # 40 waiting bodies, 16 slots: a whole request is still served
        for sock in socks:  # and the request timeout answers 408 and closes
            sock.settimeout(10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert closed(sock, 5)
            sock.close()


# ---------------------------------------------------------------- memory amplification


def test_hpack_references_to_a_large_entry_are_not_kept(edge: ServerProc) -> None:
    def literal(text: bytes) -> bytes:
        return bytes(hpack.hpack.encode_integer(len(text), 7)) + text

    # :method POST, :scheme http, :path / from the static table, then a 4 KB header added to the
    # dynamic table (literal with incremental indexing): it becomes index 62, one byte 0xBE
    first = b"\x83\x86\x84\x40" + literal(b"x-big") + literal(b"v" * 4000)
    # blocks of one-byte references only, naming the 4 KB entry 5 to 15 times: 20-60 KB decoded
    # each, over the 16 KiB limit; the suffix (:method GET) keeps the 33 blocks distinct
    blocks = [b"\xbe" * (5 + k % 11) + b"\x82" * (k // 11) for k in range(33)]
    with recovers(edge, rss_growth_mb=30):
        socks = [h2(edge) for _ in range(40)]
        for sock in socks:
            payload = frame(HEADERS, END_HEADERS | END_STREAM, 1, first)
            payload += b"".join(
                frame(HEADERS, END_HEADERS | END_STREAM, 3 + 2 * k, b) for k, b in enumerate(blocks)
            )
            sock.sendall(payload)
        for sock in socks:
            fs = read_frames(sock, lambda fs: sum(1 for f in fs if f[0] == HEADERS) >= 34, 10)
            codes = [dict(hpack.Decoder().decode(p)).get("grpc-status") for k, _, _, p in fs if k == HEADERS]
            assert codes.count("8") == 33, codes  # RESOURCE_EXHAUSTED: request metadata too large
        served(edge)
        for sock in socks:
            sock.close()


def test_a_peer_that_reads_nothing_is_cut_off(edge: ServerProc) -> None:
    arrays = echo_arrays(rows=1, cols=12_000)  # about 0.8 MB of answer per call
    request = message(infer_request("echo", arrays))
    block = request_headers(INFER)
    zero_window = (0x4).to_bytes(2, "big") + (0).to_bytes(4, "big")  # SETTINGS_INITIAL_WINDOW_SIZE 0
    with recovers(edge, rss_growth_mb=80):
        sock = h2(edge, zero_window)
        sock.sendall(
            b"".join(
                frame(HEADERS, END_HEADERS, sid, block) + data_frames(sid, request) for sid in range(1, 28, 2)
            )
        )
        time.sleep(1.0)  # 14 answers wait for a window that never opens: over the 8 MiB queue cap
        sock.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 29, request_headers(LIVE)))
        fs = read_frames(sock, lambda fs: any(f[0] == RST_STREAM and f[2] == 29 for f in fs), 3)
        assert (RST_STREAM, 0, 29, REFUSED_STREAM.to_bytes(4, "big")) in fs
        served(edge)
        assert closed(sock, 8)  # the write timeout (2 s) ends the connection
        sock.close()


# ---------------------------------------------------------------- event-loop stalls


def test_a_large_streamed_message_costs_linear_time(edge: ServerProc) -> None:
    big = service_pb2.ModelInferRequest(model_name="no-such-model")
    big.raw_input_contents.append(b"\x00" * (48 << 20))
    with (
        recovers(edge, rss_growth_mb=400),
        grpc.insecure_channel(edge.grpc_url, options=[("grpc.max_send_message_length", 64 << 20)]) as channel,
    ):
        call = channel.stream_stream(
            STREAM_INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        cpu0 = cpu_s(edge)
        answers = list(call(iter([big]), timeout=60))
        assert len(answers) == 1 and answers[0].error_message  # the message arrived whole, and was refused
        # 48 MiB arrive in ~3,000 DATA frames; re-copying the message on each (the old code)
        # took tens of seconds of CPU, appending takes a fraction of one
        assert cpu_s(edge) - cpu0 < 8.0


def test_http_header_limits(edge: ServerProc) -> None:
    with recovers(edge):
        huge = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"
        many = (
            b"GET /v2/health/live HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n"
        )
        for attack in (huge, many):
            with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    sock.sendall(attack)
                answer = sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
                assert closed(sock, 5)
        http_ok(edge)


def test_slowloris_is_closed(edge: ServerProc) -> None:
    with recovers(edge):
        socks = [socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) for _ in range(20)]
        for sock in socks:
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\n")
        answers: list[bytes] = []
        deadline = time.monotonic() + 6
        while len(answers) < len(socks) and time.monotonic() < deadline:
            for sock in socks:  # one header byte at a time, never finishing
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.2)
            for sock in socks:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError, ConnectionResetError):
                    data = sock.recv(4096)
                    if data:
                        answers.append(data)
        assert len(answers) == len(socks) and all(a.startswith(b"HTTP/1.1 408") for a in answers)
        served(edge)
        for sock in socks:
            sock.close()


@pytest.mark.parametrize(
    "kind",
    ["ping", "settings", "priority", "window_update", "rst_stream", "empty_data", "continuation", "unknown"],
)
def test_control_frame_floods_are_told_to_go_away(edge: ServerProc, kind: str) -> None:
    live = request_headers(LIVE)
    setup = b""
    if kind in ("rst_stream", "empty_data"):  # frames for a stream already answered
        setup = frame(HEADERS, END_HEADERS, 1, live) + frame(DATA, END_STREAM, 1, message(b""))
    elif kind == "continuation":  # a header block that never ends
        setup = frame(HEADERS, 0, 1, live[:3])
    one = {
        "ping": frame(PING, 0, 0, b"12345678"),
        "settings": frame(SETTINGS, 0, 0, b""),
        "priority": frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        "window_update": frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big")),
        "rst_stream": frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")),
        "empty_data": frame(DATA, 0, 1, b""),
        "continuation": frame(CONTINUATION, 0, 1, b""),
        "unknown": frame(0x20, 0, 0, b"junk"),
    }[kind]
    with recovers(edge):
        sock = h2(edge)
        sock.sendall(setup)
        time.sleep(0.1)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(20):  # 20,000 frames at most
                sock.sendall(one * 1000)
        fs = read_frames(sock, lambda fs: goaway_code(fs) is not None, 5)
        assert goaway_code(fs) == ENHANCE_YOUR_CALM, kind
        served(edge)
        sock.close()


# ---------------------------------------------------------------- connection hygiene


def test_silent_connections_are_closed(edge: ServerProc) -> None:
    with recovers(edge):
        socks = [
            socket.create_connection(("127.0.0.1", port), timeout=10)
            for port in (edge.http_port, edge.grpc_port)
            for _ in range(300)
        ]
        served(edge)  # 600 silent sockets do not keep anyone out
        assert all(closed(sock, 5) for sock in socks)  # the handshake timeout (1 s) closes them
        for sock in socks:
            sock.close()


def test_idle_connections_are_told_to_go_away(edge: ServerProc) -> None:
    with recovers(edge):
        sock = h2(edge)
        t0 = time.monotonic()
        fs = read_frames(sock, lambda fs: goaway_code(fs) is not None, 8)
        assert goaway_code(fs) == 0 and time.monotonic() - t0 > 2  # NO_ERROR, after the 3 s idle timeout
        assert closed(sock, 3)
        sock.close()


def test_the_connection_cap_refuses_cleanly(tmp_path: Path) -> None:
    args = ["--max-connections", "40", "--handshake-timeout-secs", "2"]
    server = start_server(tmp_path, args=args)
    try:
        with recovers(server):
            for port in (server.http_port, server.grpc_port):
                held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
                time.sleep(0.2)
                extra = socket.create_connection(("127.0.0.1", port), timeout=10)
                assert closed(extra, 2)  # refused at once, not left to hang
                extra.close()
                assert all(closed(sock, 5) for sock in held)  # and the silent ones time out
                for sock in held:
                    sock.close()
            text = httpx.get(f"{server.base}/metrics", timeout=10).text
            assert 'turnout_edge_events_total{event="connection_refused",protocol="http"}' in text
            assert 'turnout_edge_events_total{event="connection_refused",protocol="grpc"}' in text
    finally:
        assert server.stop() == 0, server.log()


def test_max_connection_age_moves_clients_on(tmp_path: Path) -> None:
    args = ["--max-connection-age-secs", "1", "--max-connection-age-grace-secs", "1"]
    server = start_server(tmp_path, args=args)
    try:
        sock = h2(server)
        fs = read_frames(sock, lambda fs: goaway_code(fs) is not None, 5)
        assert goaway_code(fs) == 0
        assert closed(sock, 3)
        sock.close()
        grpc_ok(server)  # a client reconnects
    finally:
        assert server.stop() == 0, server.log()


def test_rapid_reset_budget_survives_reconnecting(edge: ServerProc) -> None:
    """Last in this module: it leaves 127.0.0.1 over its reset allowance for 10 s."""
    block = request_headers(INFER)
    with recovers(edge):
        sock = h2(edge)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(
                b"".join(
                    frame(HEADERS, END_HEADERS, sid, block)
                    + frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big"))
                    for sid in range(1, 2 * 5200, 2)
                )
            )
        assert goaway_code(read_frames(sock, lambda fs: goaway_code(fs) is not None, 10)) == ENHANCE_YOUR_CALM
        sock.close()
        again = h2(edge)  # a new connection starts with no allowance left
        again.sendall(frame(HEADERS, END_HEADERS, 1, block) + frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
        assert goaway_code(read_frames(again, lambda fs: goaway_code(fs) is not None, 5)) == ENHANCE_YOUR_CALM
        again.close()
        served(edge)  # a client that does not reset streams is served as before
