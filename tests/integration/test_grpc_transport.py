"""Turnout's asyncio gRPC server (server/grpc/transport.py) with test handlers, reached by
grpcio's C-core client and, for frame-level cases, by hand-written HTTP/2 frames encoded
with the ``hpack`` library.

It runs in a thread with its own uvloop event loop on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
import uvloop

from tests.h2raw import PREFACE, message, request_headers
from tests.h2raw import frame as _frame
from tests.h2raw import read_frames as _read_frames
from turnout.server.grpc.transport import AsyncioGrpcServer
from turnout.server.tls import server_tls

SERVICE = "test.T"
LIMIT = 4 << 20


class Handlers:
    """Raw-bytes handlers (no serializers) exercising each call shape and context feature."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def echo(self, req: bytes, ctx: Any) -> bytes:
        md = dict(ctx.invocation_metadata())
        trailing = [("x-echo", md.get("x-echo", ""))]
        if "x-data-bin" in md:
            trailing.append(("x-data-bin", md["x-data-bin"]))
        ctx.set_trailing_metadata(tuple(trailing))
        return req

    async def sleep(self, req: bytes, ctx: Any) -> bytes:
        try:
            await asyncio.sleep(float(req.decode()))
        except asyncio.CancelledError:
            self.cancelled.append(req.decode())
            raise
        return b"slept"

    async def abort(self, req: bytes, ctx: Any) -> bytes:
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad ünïcode 100% \n second line")
        return b""

    async def fail(self, req: bytes, ctx: Any) -> bytes:
        raise RuntimeError("boom")

    async def deadline(self, req: bytes, ctx: Any) -> bytes:
        remaining = ctx.time_remaining()
        return b"none" if remaining is None else f"{remaining:.3f}".encode()

    async def server_stream(self, req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        count, size = (int(x) for x in req.decode().split(","))
        for i in range(count):
            yield bytes([i % 256]) * size

    async def write_stream(self, req: bytes, ctx: Any) -> None:
        for i in range(int(req.decode())):
            await ctx.write(str(i).encode())

    async def bidi(self, requests: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r[::-1]

    async def client_stream(self, requests: AsyncIterator[bytes], ctx: Any) -> bytes:
        total = 0
        async for r in requests:
            total += len(r)
        return str(total).encode()

    async def hold(self, requests: AsyncIterator[bytes], ctx: Any) -> bytes:
        await asyncio.sleep(1.5)  # reads nothing for a while: the peer must be held back
        count = 0
        async for _ in requests:
            count += 1
        return str(count).encode()

    def generic(self) -> grpc.GenericRpcHandler:
        u, s = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": u(self.echo),
                "Sleep": u(self.sleep),
                "Abort": u(self.abort),
                "Fail": u(self.fail),
                "Deadline": u(self.deadline),
                "ServerStream": s(self.server_stream),
                "WriteStream": s(self.write_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Hold": grpc.stream_unary_rpc_method_handler(self.hold),
            },
        )


class ServerThread:
    def __init__(
        self,
        max_calls: int = 64,
        tls: tuple[Path, Path] | None = None,
        limited: tuple[str, ...] | None = None,
        h2_engine: Any = None,
    ) -> None:
        self.h2_engine = h2_engine
        self.handlers = Handlers()
        self.max_calls = max_calls
        self.limited = limited
        self.tls = tls
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: AsyncioGrpcServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0.5)

    def _run(self) -> None:
        uvloop.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        extra = {"h2_engine": self.h2_engine} if self.h2_engine is not None else {}
        self.server = AsyncioGrpcServer(
            max_message_bytes=LIMIT, max_calls=self.max_calls, limited=self.limited, **extra
        )
        self.server.add_generic_rpc_handlers((self.handlers.generic(),))
        tls = server_tls(str(self.tls[0]), str(self.tls[1])) if self.tls else None
        self.port = self.server.add_port("127.0.0.1", 0, tls)
        await self.server.start()
        self.stopped = asyncio.Event()
        self._ready.set()
        await self.stopped.wait()

    def stop(self, grace: float) -> None:
        if self.loop is None or self.loop.is_closed() or not self._thread.is_alive():
            return

        async def _stop() -> None:
            assert self.server is not None
            await self.server.stop(grace)
            self.stopped.set()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self._thread.join(10)

    @property
    def active_calls(self) -> int:
        assert self.server is not None
        return self.server.active_calls

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


OPTS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with ServerThread() as s:
        yield s


@pytest.fixture
def channel(srv: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(srv.target, options=OPTS) as ch:
        yield ch


def method(ch: grpc.Channel, name: str) -> Any:
    return ch.unary_unary(f"/{SERVICE}/{name}")


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_unary_with_metadata(channel: grpc.Channel) -> None:
    md = (("x-echo", "hello"), ("x-data-bin", b"\x00\xff\x10"))
    resp, call = method(channel, "Echo").with_call(b"ping", metadata=md)
    assert resp == b"ping"
    trailing = dict(call.trailing_metadata())
    assert trailing["x-echo"] == "hello"
    assert trailing["x-data-bin"] == b"\x00\xff\x10"
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("size", [0, 1, 65_530, 65_536, 3 << 20])
def test_message_sizes_across_flow_control_windows(channel: grpc.Channel, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert method(channel, "Echo")(payload) == payload


def test_many_concurrent_calls_on_one_connection(channel: grpc.Channel, srv: ServerThread) -> None:
    echo = method(channel, "Echo")
    with ThreadPoolExecutor(8) as pool:
        payloads = [f"{i}".encode() * (1 + i % 50) for i in range(400)]
        results = list(pool.map(lambda p: echo(p, timeout=30), payloads))
    assert results == payloads
    wait_until(lambda: srv.active_calls == 0)


def test_deadline_cancels_the_handler(channel: grpc.Channel, srv: ServerThread) -> None:
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        method(channel, "Sleep")(b"5.01", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 3
    wait_until(lambda: "5.01" in srv.handlers.cancelled)
    remaining = float(method(channel, "Deadline")(b"", timeout=20).decode())
    assert 15 < remaining <= 21  # grpc clients round the timeout they send up a little
    assert method(channel, "Deadline")(b"") == b"none"


def test_client_cancel_reaches_the_handler(channel: grpc.Channel, srv: ServerThread) -> None:
    fut = method(channel, "Sleep").future(b"5.02")
    time.sleep(0.3)
    assert fut.cancel()
    wait_until(lambda: "5.02" in srv.handlers.cancelled)
    wait_until(lambda: srv.active_calls == 0)


def test_abort_and_errors(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        method(channel, "Abort")(b"")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "bad ünïcode 100% \n second line"
    with pytest.raises(grpc.RpcError) as e:
        method(channel, "Fail")(b"")
    assert e.value.code() == grpc.StatusCode.UNKNOWN and "boom" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/test.T/Missing")(b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_streaming_shapes(channel: grpc.Channel) -> None:
    big = list(channel.unary_stream(f"/{SERVICE}/ServerStream")(b"40,100000"))
    assert [len(m) for m in big] == [100_000] * 40 and big[3] == b"\x03" * 100_000
    assert list(channel.unary_stream(f"/{SERVICE}/WriteStream")(b"5")) == [b"0", b"1", b"2", b"3", b"4"]
    msgs = [f"m{i}".encode() * (1 + i) for i in range(60)]
    assert list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter(msgs))) == [m[::-1] for m in msgs]
    chunks = [b"a" * 300_000] * 10
    assert channel.stream_unary(f"/{SERVICE}/ClientStream")(iter(chunks)) == b"3000000"


def test_gzip_requests(srv: ServerThread) -> None:
    with grpc.insecure_channel(srv.target, options=OPTS, compression=grpc.Compression.Gzip) as ch:
        payload = b"compressible " * 20_000
        assert method(ch, "Echo")(payload) == payload


def test_oversized_message_is_refused_and_the_connection_survives(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        method(channel, "Echo")(b"x" * (LIMIT + 1))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert method(channel, "Echo")(b"after") == b"after"


def test_call_limit_answers_resource_exhausted() -> None:
    with ServerThread(max_calls=2) as s, grpc.insecure_channel(s.target) as ch:
        sleep = method(ch, "Sleep")
        held = [sleep.future(b"1.5") for _ in range(2)]
        wait_until(lambda: s.active_calls == 2)
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Echo")(b"x")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [f.result(10) for f in held] == [b"slept", b"slept"]
        assert method(ch, "Echo")(b"x") == b"x"


def test_calls_the_server_does_not_limit_never_wait_for_a_slot() -> None:
    with (
        ServerThread(max_calls=1, limited=(f"/{SERVICE}/Sleep",)) as s,
        grpc.insecure_channel(s.target) as ch,
    ):
        held = method(ch, "Sleep").future(b"1.0")
        wait_until(lambda: s.active_calls == 1)
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Sleep")(b"0")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [method(ch, "Echo")(b"%d" % i) for i in range(20)] == [b"%d" % i for i in range(20)]
        assert held.result(10) == b"slept"


def test_the_h2_library_core_serves_the_same_calls() -> None:
    """The measuring instrument of benchmarks.features (section h2-engine) keeps working."""
    from turnout.server.grpc.h2lib import H2LibConnection

    with ServerThread(h2_engine=H2LibConnection) as s, grpc.insecure_channel(s.target, options=OPTS) as ch:
        payloads = [b"x" * n for n in (0, 1, 70_000, 3_000_000)]
        assert [method(ch, "Echo")(p, timeout=30) for p in payloads] == payloads
        chunks = [bytes([i]) * n for i, n in enumerate((10, 1_500_000, 20))]
        assert list(ch.stream_stream(f"/{SERVICE}/Bidi")(iter(chunks), timeout=30)) == [
            c[::-1] for c in chunks
        ]
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Abort")(b"")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_graceful_stop_finishes_calls_in_flight() -> None:
    s = ServerThread().__enter__()
    with grpc.insecure_channel(s.target) as ch:
        assert method(ch, "Echo")(b"warm") == b"warm"
        fut = method(ch, "Sleep").future(b"0.5")
        wait_until(lambda: s.active_calls == 1)
        s.stop(5.0)
        assert fut.result(10) == b"slept"
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "Echo")(b"late", timeout=2)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with ServerThread(tls=(cert, key)) as s:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{s.port}", creds) as ch:
            assert method(ch, "Echo")(b"secret") == b"secret"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


# ---------------------------------------------------------------- hand-written frames


def _request_headers(path: str = f"/{SERVICE}/Echo") -> bytes:
    return request_headers(path)


def test_padding_continuation_and_ping(srv: ServerThread) -> None:
    block = _request_headers()
    message = b"\x00" + (5).to_bytes(4, "big") + b"hello"
    padded = bytes([7]) + message + b"\x00" * 7
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(
            PREFACE
            + _frame(0x4, 0, 0, b"")  # SETTINGS
            + _frame(0x6, 0, 0, b"pingpong")  # PING
            + _frame(0x1, 0, 1, block[:5])  # HEADERS without END_HEADERS ...
            + _frame(0x9, 0x4, 1, block[5:])  # ... and the rest in CONTINUATION
            + _frame(0x0, 0x1 | 0x8, 1, padded)  # DATA, padded, END_STREAM
        )
        frames = _read_frames(sock, lambda fs: any(f[0] == 0x1 and f[1] & 0x1 for f in fs))
    assert (0x6, 0x1, 0, b"pingpong") in frames  # PING ACK
    data = b"".join(p for kind, _, sid, p in frames if kind == 0x0 and sid == 1)
    assert data == message
    trailers = [p for kind, flags, sid, p in frames if kind == 0x1 and flags & 0x1 and sid == 1]
    assert ("grpc-status", "0") in hpack.Decoder().decode(trailers[0])


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        PREFACE + _frame(0x6, 0, 0, b"short"),  # PING of 5 bytes
        PREFACE + _frame(0x1, 0x4, 2, b"\x82"),  # HEADERS on an even stream
        PREFACE + _frame(0x1, 0x4, 1, b"\xff\xff\xff\xff"),  # undecodable HPACK
        PREFACE + _frame(0x0, 0x1, 9, b"\x00"),  # DATA on an idle stream
        PREFACE + (1 << 20).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01",  # frame too large
    ],
    ids=["http1", "short-ping", "even-stream", "bad-hpack", "idle-data", "huge-frame"],
)
def test_protocol_errors_close_only_that_connection(
    srv: ServerThread, junk: bytes, channel: grpc.Channel
) -> None:
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(junk)
        frames = _read_frames(sock, lambda fs: any(f[0] == 0x7 for f in fs), timeout=3)
        sock.settimeout(3)
        try:
            rest = sock.recv(1024)
        except (TimeoutError, ConnectionResetError):
            rest = b""
    if junk.startswith(PREFACE):
        assert any(kind == 0x7 for kind, *_ in frames), frames  # GOAWAY
    assert rest == b""  # closed
    assert method(channel, "Echo")(b"still serving") == b"still serving"


def test_streamed_requests_larger_than_the_stream_window(channel: grpc.Channel) -> None:
    sizes = [300_000, 900_000, 2_500_000, 10, 1_100_000]  # one message over the 1 MiB window
    chunks = [bytes([i]) * n for i, n in enumerate(sizes)]
    assert (
        channel.stream_unary(f"/{SERVICE}/ClientStream")(iter(chunks), timeout=30) == str(sum(sizes)).encode()
    )
    assert list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter(chunks), timeout=30)) == [
        c[::-1] for c in chunks
    ]


def test_oversized_streamedmessage(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        channel.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"ok", b"x" * (LIMIT + 1)]), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert method(channel, "Echo")(b"after") == b"after"


def test_second_end_of_request_resets_the_stream(srv: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(
            PREFACE
            + _frame(0x4, 0, 0, b"")
            + _frame(0x1, 0x4, 1, _request_headers(f"/{SERVICE}/Sleep"))
            + _frame(0x0, 0x1, 1, message(b"0.3"))
            + _frame(0x1, 0x4 | 0x1, 1, hpack.Encoder().encode([("x-late", "1")]))  # END_STREAM again
        )
        frames = _read_frames(sock, lambda fs: any(f[0] == 0x3 for f in fs), timeout=3)
        assert (0x3, 0, 1, (0x5).to_bytes(4, "big")) in frames  # RST_STREAM STREAM_CLOSED
        time.sleep(0.6)  # the handler finishes; nothing more is sent on stream 1
        frames += _read_frames(sock, lambda fs: False, timeout=0.3)
    assert not [f for f in frames if f[2] == 1 and f[0] in (0x0, 0x1)]
    wait_until(lambda: srv.active_calls == 0)


def test_rapid_reset_is_told_to_go_away(srv: ServerThread, channel: grpc.Channel) -> None:
    block = _request_headers(f"/{SERVICE}/Sleep")
    pairs = b"".join(
        _frame(0x1, 0x4, sid, block) + _frame(0x3, 0, sid, (0x8).to_bytes(4, "big"))
        for sid in range(1, 2 * 5200, 2)
    )
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(PREFACE + _frame(0x4, 0, 0, b"") + pairs)
        frames = _read_frames(sock, lambda fs: any(f[0] == 0x7 for f in fs), timeout=10)
    goaway = [p for kind, _, _, p in frames if kind == 0x7]
    assert goaway and int.from_bytes(goaway[0][4:8], "big") == 0xB  # ENHANCE_YOUR_CALM
    wait_until(lambda: srv.active_calls == 0)
    assert method(channel, "Echo")(b"others unaffected") == b"others unaffected"


def test_header_limits_refuse_one_stream(srv: ServerThread) -> None:
    big = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"/{SERVICE}/Echo"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("x-big", "v" * 20_000),
        ]
    )
    odd_timeout = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"/{SERVICE}/Echo"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "²S"),  # not ASCII digits: ignored, like any malformed timeout
        ]
    )
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(
            PREFACE
            + _frame(0x4, 0, 0, b"")
            + _frame(0x1, 0, 1, big[:16_000])
            + _frame(0x9, 0x4, 1, big[16_000:])
            + _frame(0x0, 0x1, 1, message(b"x"))
            + _frame(0x1, 0x4, 3, odd_timeout)
            + _frame(0x0, 0x1, 3, message(b"y"))
        )
        frames = _read_frames(sock, lambda fs: sum(1 for f in fs if f[0] == 0x1 and f[1] & 0x1) >= 2)
    d = hpack.Decoder()
    ends = {sid: dict(d.decode(p)) for kind, flags, sid, p in frames if kind == 0x1 and flags & 0x1}
    assert ends[1]["grpc-status"] == "8" and "metadata" in ends[1]["grpc-message"]
    assert ends[3]["grpc-status"] == "0"


def test_a_handler_that_does_not_read_holds_the_peer_back(channel: grpc.Channel) -> None:
    sent = [0]

    def messages() -> Iterator[bytes]:
        for _ in range(300):  # 300 x 64 KiB = 19 MiB, if nothing held the client back
            sent[0] += 1
            yield b"m" * 65_536

    fut = channel.stream_unary(f"/{SERVICE}/Hold").future(messages(), timeout=60)
    time.sleep(1.0)
    assert sent[0] < 150, sent[0]  # about one 1 MiB window plus the client's own buffers
    assert fut.result(60) == b"300"
