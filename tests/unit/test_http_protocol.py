"""The transport that sends a response head with its body (server/http/protocol.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from turnout.server.http.head_holding import HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for fn in soon:
            fn()


def make(busy: bool = False) -> tuple[HeadHoldingTransport, FakeTransport, FakeLoop]:
    real, loop = FakeTransport(), FakeLoop()
    t = HeadHoldingTransport(real, loop, lambda: busy)  # type: ignore[arg-type]
    return t, real, loop


def test_head_and_body_leave_in_one_write() -> None:
    t, real, _ = make()
    t.write(HEAD)
    assert real.writes == []
    t.write(b"{}")
    assert real.writes == [HEAD + b"{}"]
    t.write(b"more")  # not a head: straight through
    assert real.writes[-1] == b"more"


def test_empty_body_releases_the_head_on_completion() -> None:
    t, real, _ = make()
    t.write(HEAD)
    t.write(b"")
    assert real.writes == []
    t.release()
    assert real.writes == [HEAD]
    t.release()  # nothing held: nothing more sent
    assert real.writes == [HEAD]


def test_a_head_held_when_the_peer_left_is_dropped() -> None:
    t, real, _ = make()
    t.write(HEAD)
    real.closed = True
    t.release()
    assert real.writes == []


def test_interim_response_is_never_held() -> None:
    t, real, _ = make()
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_close_sends_what_is_held_first() -> None:
    t, real, _ = make()
    t.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
    t.close()
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"]
    assert real.closed


def test_large_body_is_not_copied_into_the_head() -> None:
    t, real, _ = make()
    body = b"x" * (1 << 20)
    t.write(HEAD)
    t.write(body)
    assert real.writes == [HEAD, body]


def test_busy_server_sends_at_the_end_of_the_loop_step() -> None:
    t, real, loop = make(busy=True)
    t.write(HEAD)
    t.write(b"{}")
    t.write(b"tail")
    assert real.writes == [] and len(loop.soon) == 1  # one flush scheduled, not one per write
    assert t.get_write_buffer_size() == len(HEAD) + 2 + 4
    loop.run_soon()
    assert real.writes == [HEAD + b"{}", b"tail"]


def test_pending_writes_are_dropped_when_the_peer_is_gone() -> None:
    t, real, loop = make(busy=True)
    t.write(HEAD)
    t.write(b"{}")
    real.closed = True
    loop.run_soon()
    assert real.writes == []


def test_abort_drops_everything_and_other_calls_reach_the_transport() -> None:
    t, real, _ = make()
    t.write(HEAD)
    t.abort()
    assert real.aborted and real.writes == []
    assert t.get_extra_info("peername") == "extra:peername"


@pytest.mark.parametrize("busy", [False, True])
def test_with_a_real_server_the_client_gets_whole_responses(busy: bool) -> None:
    """A uvicorn server with the protocol answers keep-alive requests (sizes 0 to 1 MiB)."""
    import socket

    import uvicorn

    from turnout.server.http.protocol import HeadHoldingHttpToolsProtocol

    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        assert scope["type"] == "http"
        n = int(scope["path"].strip("/"))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(n).encode())]}
        )
        await send({"type": "http.response.body", "body": b"a" * n})

    async def main() -> list[bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        config = uvicorn.Config(app, http=HeadHoldingHttpToolsProtocol, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        serving = asyncio.get_running_loop().create_task(server.main_loop())
        port = sock.getsockname()[1]
        bodies = []
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3 if busy else 1)]
        for n in (0, 2, 5000, 1 << 20):
            for w in [c[1] for c in clients]:
                w.write(f"GET /{n} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            for r, _ in clients:
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200")
                bodies.append(await asyncio.wait_for(r.readexactly(n), 10))
        for _, w in clients:
            w.close()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        await server.shutdown()
        return bodies

    bodies = asyncio.run(main())
    assert [len(b) for b in bodies] == [n for n in (0, 2, 5000, 1 << 20) for _ in range(3 if busy else 1)]
