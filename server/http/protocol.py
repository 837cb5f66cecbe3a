"""uvicorn's httptools protocol with one ``send`` per response, sent at the right moment.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and
the body when it sends ``http.response.body``: two writes, two ``send`` system calls. Here
the transport the protocol sees holds a response head until the next write (the body) and
joins the two. The protocol releases a head still held when the response completes (an
empty body), and ``close`` sends it before closing. An interim ``100 Continue`` is never held.

While other requests are in flight, writes also wait for the end of the current loop step
(``call_soon``): the loop finishes the work it has before the answers go out. With wrk at
concurrency 32 on mlp_small that took the server from about 7,800 to 11,000 requests/s
(3 alternating pairs); at concurrency 1 nothing waits, and latency did not change.

The inference fast path: ``POST /v2/models/{m}[/versions/{v}]/infer`` with a Content-Length
within the limit, and nothing pipelined ahead of it, is answered by the protocol itself, with
``InferRoute.answer``: no ASGI scope, cycle, event or send messages. A stand-in cycle keeps
uvicorn's bookkeeping (keep-alive, pipelining, shutdown) working. Everything else, including
the 503 of a full server and chunked uploads, takes uvicorn's path. wrk, mlp_small, 3
alternating pairs: p50 at concurrency 1 0.157-0.182 ms against 0.191-0.236 ms, and 12,800-14,200
requests/s at concurrency 32 against 10,300-11,400."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.busy_poll import BusyPoll
from server.http.infer_route import InferRoute, infer_headers, parse_infer_path

_HEAD = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"
# a body larger than this is written after the head rather than copied into one buffer
_JOIN_LIMIT = 256 * 1024


class HeadHoldingTransport:
    """A transport proxy that sends a response head together with the first body write."""

    __slots__ = ("_busy", "_held", "_loop", "_pending", "_transport")

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, busy: Callable[[], bool]
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._busy = busy
        self._held: bytes | None = None
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            if not data:
                return
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self.send(held + data)
            else:
                self.send(held)
                self.send(data)
        elif data.startswith(_HEAD) and not data.startswith(_INTERIM):
            self._held = bytes(data)
        else:
            self.send(data)

    def send(self, data: bytes) -> None:
        """Write now, or at the end of this loop step while other requests are in flight."""
        if not self._pending and not self._busy():
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if self._transport.is_closing():
            return
        for data in pending:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def release(self) -> None:
        """Send a head still held (a response whose body was empty)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self.send(held)

    def get_write_buffer_size(self) -> int:
        pending = len(self._held or b"") + sum(len(d) for d in self._pending)
        return self._transport.get_write_buffer_size() + pending

    def close(self) -> None:
        self.release()
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._pending = None, []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class _NoEvent:
    def set(self) -> None:
        pass


class FastCycle:
    """Stands in for uvicorn's RequestResponseCycle while an inference request is answered
    without ASGI. uvicorn's own callbacks (connection_lost, shutdown) find the attributes
    they use on it."""

    __slots__ = (
        "body",
        "body_done",
        "counted",
        "disconnected",
        "header_length",
        "keep_alive",
        "model",
        "response_complete",
        "routing_key",
        "version",
    )
    message_event = _NoEvent()

    def __init__(
        self, model: str, version: str, header_length: str | None, routing_key: str | None, keep_alive: bool
    ) -> None:
        self.body: list[bytes] = []
        self.counted = True  # holds one of InferRoute.inflight until released
        self.body_done = False  # the whole body arrived; a task answers it
        self.model, self.version = model, version
        self.header_length, self.routing_key = header_length, routing_key
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())
    return line


class HeadHoldingHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, busy_poll: BusyPoll | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kick = (busy_poll or BusyPoll(0.0)).kick

    def data_received(self, data: bytes) -> None:
        self._kick()
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        tasks: Sized = self.tasks
        self._holding = HeadHoldingTransport(transport, self.loop, lambda: len(tasks) > 1)
        app = self.config.app
        self._route: InferRoute | None = app if isinstance(app, InferRoute) and app.fast_path else None
        super().connection_made(self._holding)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self._holding.release()
        self._kick()  # the client's next request often follows its answer
        super().on_response_complete()

    # ------------------------------------------------------------------ the inference fast path

    def on_headers_complete(self) -> None:
        cycle = self._fast_cycle()
        if cycle is None:
            super().on_headers_complete()
        else:
            self.cycle = cycle  # type: ignore[assignment]

    def _fast_cycle(self) -> FastCycle | None:
        """A request answered without ASGI: ``POST .../infer`` with a Content-Length within the
        limit, nothing pipelined ahead of it, no ``Expect``, no upgrade, capacity left. Every
        other request (including the 503 for a full server) takes uvicorn's path."""
        route = self._route
        if (
            route is None
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.expect_100_continue
            or route.inflight >= route.max_inflight
            or (
                self.limit_concurrency is not None  # uvicorn's backstop answers these 503
                and max(len(self.connections), len(self.tasks)) >= self.limit_concurrency
            )
            or self.parser.get_method() != b"POST"
            or self.parser.should_upgrade()
        ):
            return None
        raw_path = httptools.parse_url(self.url).path
        if b"%" in raw_path:
            return None
        target = parse_infer_path(raw_path.decode("ascii", "replace"))
        if target is None:
            return None
        content_length, header_length, routing_key = infer_headers(self.headers)
        if (
            content_length is None
            or not content_length.isdigit()
            or len(content_length) > 19
            or int(content_length) > route.limit
        ):  # (httptools refuses Transfer-Encoding beside Content-Length before this runs)
            return None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        route.inflight += 1  # counted from here, as the ASGI route counts from its call
        return FastCycle(target[0], target[1], header_length, routing_key, keep_alive)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.body.append(body)  # bounded by the Content-Length checked above
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.body_done = True
            task = self.loop.create_task(self._answer(cycle))
            task.add_done_callback(self.tasks.discard)
            # released in a callback as well: a task cancelled before its first step (at the
            # shutdown timeout) never runs its body
            task.add_done_callback(lambda _t, c=cycle: self._release(c))
            self.tasks.add(task)
        else:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle) and not cycle.response_complete and not cycle.body_done:
            self._release(cycle)  # its body never came: no task will release it
        super().connection_lost(exc)

    def _release(self, cycle: FastCycle) -> None:
        if cycle.counted:
            cycle.counted = False
            assert self._route is not None
            self._route.inflight -= 1

    async def _answer(self, cycle: FastCycle) -> None:
        route = self._route
        assert route is not None
        try:
            body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
            status, payload, content_type, extra = await route.answer(
                cycle.model, cycle.version, body, cycle.header_length, cycle.routing_key
            )
        except BaseException:  # cancelled at the shutdown timeout: answer as uvicorn would
            if not cycle.disconnected and not self.transport.is_closing():
                self._holding.send(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()
            cycle.response_complete = True
            raise
        finally:
            self._release(cycle)
        if self.flow.write_paused and not cycle.disconnected:
            await self.flow.drain()  # a client that does not read its answers stops being answered
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return
        head = [_status_line(status)]
        for name, value in (
            *self.server_state.default_headers,
            (b"content-type", content_type),
            (b"content-length", str(len(payload)).encode()),
            *extra,
        ):
            head.append(name + b": " + value + b"\r\n")
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self._holding.send(b"".join(head) + payload if len(payload) <= _JOIN_LIMIT else b"".join(head))
        if len(payload) > _JOIN_LIMIT:
            self._holding.send(payload)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
