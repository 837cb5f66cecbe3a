"""uvicorn's httptools protocol with one ``send`` per response, sent at the right moment.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and
the body when it sends ``http.response.body``: two writes, two ``send`` system calls. Here
the transport the protocol sees holds a response head until the next write (the body) and
joins the two. The protocol releases a head still held when the response completes (an
empty body), and ``close`` sends it before closing. An interim ``100 Continue`` is never held.

While other requests are in flight, writes also wait for the end of the current loop step
(``call_soon``): the loop finishes the work it has before the answers go out.

The inference fast path: ``POST /v2/models/{m}[/versions/{v}]/infer`` with a Content-Length
within the limit, and nothing pipelined ahead of it, is answered by the protocol itself, with
``InferRoute.answer``: no ASGI scope, cycle, event or send messages. A stand-in cycle keeps
uvicorn's bookkeeping (keep-alive, pipelining, shutdown) working. Everything else, including
chunked uploads, takes uvicorn's path.

The edge (``HttpLimits``): connections beyond the cap are closed at once; a connection must
start a request within the handshake timeout, finish its headers within the header timeout
and its body within the request timeout (else 408 and close); request line and headers are
bounded in bytes and fields (else 431, before the parser buffers them); a peer that reads none
of its answers for the write timeout is cut off. An inference slot is taken only once the
whole request has arrived. The server calls ``sweep`` about once a second."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from turnout.server.busy_poll import BusyPoll
from turnout.server.http.errors import error_body
from turnout.server.http.head_holding import JOIN_LIMIT, HeadHoldingTransport
from turnout.server.http.infer_route import InferRoute, infer_headers, parse_infer_path


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    max_connections: int = 10_000
    handshake_timeout_s: float = 10.0  # accept (or TLS handshake) to a request's first byte
    header_timeout_s: float = 10.0
    request_timeout_s: float = 60.0  # headers complete to the body's last byte
    write_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


# where a connection is in its request cycle; the sweep times the first three
_FIRST, _HEADERS, _BODY, _BUSY, _IDLE = range(5)
_END_OF_HEADERS = b"\r\n\r\n"


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self.counted = False  # holds one of InferRoute.inflight (from the body's end) until released
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
    def __init__(
        self,
        *args: Any,
        busy_poll: BusyPoll | None = None,
        limits: HttpLimits | None = None,
        events: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._kick = (busy_poll or BusyPoll(0.0)).kick
        self._limits = limits or HttpLimits()
        self._event = events or (lambda _name: None)
        self._refused = False
        # the phase, and a count of phase changes: the sweep times a phase from when it first sees
        # it, so the request path never reads the clock
        self._phase = _FIRST
        self._changes = 0
        self._seen = (-1, -1)  # (phase, changes) at the sweep that first saw them ...
        self._since = 0.0  # ... and when
        self._header_bytes = 0
        self._tail = b""  # the last bytes while headers arrive: their end may straddle two reads
        self._write_blocked: float | None = None

    # ------------------------------------------------------------------ the edge

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections:
            self._refused = True  # closed before it costs more than a descriptor for an instant
            self._event("connection_refused")
            transport.abort()
            return
        tasks: Sized = self.tasks
        self._holding = HeadHoldingTransport(transport, self.loop, lambda: len(tasks) > 1)
        app = self.config.app
        self._route: InferRoute | None = app if isinstance(app, InferRoute) and app.fast_path else None
        super().connection_made(self._holding)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._kick()
        if self._phase < _BODY or self._phase == _IDLE:  # request line and headers still arriving
            before = self._header_bytes
            self._header_bytes = before + len(data)
            if self._header_bytes > self._limits.max_header_bytes:
                within = self._tail + data[: max(self._limits.max_header_bytes - before, 0)]
                if _END_OF_HEADERS not in within:
                    self._refuse(431, f"request headers larger than {self._limits.max_header_bytes} bytes")
                    return
            self._tail = data[-3:]
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):  # raised in one of our parser callbacks
                self._refuse(exc.__context__.status, str(exc.__context__))
            else:
                self._event("bad_request")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        self._changes += 1
        super().on_message_begin()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the edge will not take, and close the connection."""
        self._event(f"refused_{status}")
        if self.transport.is_closing():
            return
        body = error_body(message)
        self._holding.send(
            _status_line(status)
            + b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()

    def sweep(self, now: float) -> None:
        """Enforce the timeouts of ``HttpLimits``; the server calls this about once a second."""
        if self._refused or self.transport is None or self.transport.is_closing():
            return
        lim, phase = self._limits, self._phase
        if (phase, self._changes) != self._seen:
            self._seen, self._since = (phase, self._changes), now
        waited = now - self._since
        if self._write_blocked is not None and now - self._write_blocked > lim.write_timeout_s:
            self._event("write_timeout")
            self.transport.abort()
        elif phase == _FIRST and waited > lim.handshake_timeout_s:
            self._event("handshake_timeout")
            self.transport.close()
        elif phase == _HEADERS and waited > lim.header_timeout_s:
            self._refuse(408, f"request headers not received within {lim.header_timeout_s:g} s")
        elif phase == _BODY and waited > lim.request_timeout_s:
            self._refuse(408, f"request body not received within {lim.request_timeout_s:g} s")

    def pause_writing(self) -> None:
        self._write_blocked = self.loop.time()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._write_blocked = None
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._holding.release()
        self._kick()  # the client's next request often follows its answer
        if self._phase == _BUSY:
            self._phase, self._header_bytes = _IDLE, 0
            self._changes += 1
        super().on_response_complete()

    # ------------------------------------------------------------------ the inference fast path

    def on_headers_complete(self) -> None:
        if len(self.headers) > self._limits.max_headers:  # (their bytes are bounded already)
            raise _Refused(431, f"more than {self._limits.max_headers} header fields")
        self._phase, self._header_bytes = _BODY, 0
        self._changes += 1
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
        if route.auth is not None and not route.authorized(
            self.headers, self.client[0] if self.client else None
        ):
            return None  # the ASGI route answers 401 / 403
        content_length, header_length, routing_key = infer_headers(self.headers)
        if (
            content_length is None
            or not content_length.isdigit()
            or len(content_length) > 19
            or int(content_length) > route.limit
        ):  # (httptools refuses Transfer-Encoding beside Content-Length before this runs)
            return None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return FastCycle(target[0], target[1], header_length, routing_key, keep_alive)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.body.append(body)  # bounded by the Content-Length checked above
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _BUSY
        self._changes += 1
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.body_done = True
            route = self._route
            assert route is not None
            cycle.counted = route.inflight < route.max_inflight  # admitted now that it is whole
            if cycle.counted:
                route.inflight += 1
            task = self.loop.create_task(self._answer(cycle))
            task.add_done_callback(self.tasks.discard)
            # released in a callback as well: a task cancelled before its first step (at the
            # shutdown timeout) never runs its body
            task.add_done_callback(lambda _t, c=cycle: self._release(c))
            self.tasks.add(task)
        else:
            super().on_message_complete()

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
            if cycle.counted:
                status, payload, content_type, extra = await route.answer(
                    cycle.model, cycle.version, body, cycle.header_length, cycle.routing_key
                )
            else:
                status, payload, content_type, extra = route.busy()
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
        self._holding.send(b"".join(head) + payload if len(payload) <= JOIN_LIMIT else b"".join(head))
        if len(payload) > JOIN_LIMIT:
            self._holding.send(payload)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
