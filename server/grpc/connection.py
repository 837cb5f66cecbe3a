"""One connection of the asyncio gRPC transport: an ``asyncio.Protocol`` that feeds the socket's
bytes to the sans-IO HTTP/2 core (``http2.py``) and turns the requests it reports into gRPC
calls. Every complete call becomes one task running the registered ``grpc.RpcMethodHandler``;
a unary answer leaves as HEADERS + DATA + trailers in one write when the windows allow (the
common case), otherwise chunked as the peer opens its windows. Writes made in one loop
iteration leave in one ``transport.write``.

Limits (``limits.py``): request messages (``max_message_bytes``), concurrent inference calls per
server (a slot is taken only once a request has fully arrived; excess answered
RESOURCE_EXHAUSTED at once), answer bytes queued for a peer that does not read, and the timeouts
that the server's ``sweep`` enforces; the core keeps the frame-level ones. A protocol violation
answers GOAWAY and closes the connection; other connections and calls are unaffected."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import grpc

from turnout.server.grpc import timeouts, wire
from turnout.server.grpc.answers import Answering
from turnout.server.grpc.call import Call
from turnout.server.grpc.context import Aborted, Context
from turnout.server.grpc.h2stream import MAX_HEADER_LIST, H2Stream
from turnout.server.grpc.http2 import H2Connection
from turnout.server.grpc.messages import MessageReader
from turnout.server.grpc.streams import RequestHead, answering, receiving
from turnout.server.grpc.wire import H2Error

if TYPE_CHECKING:
    from turnout.server.grpc.transport import AsyncioGrpcServer

log = logging.getLogger("turnout.grpc.h2")

_NOT_METADATA = frozenset(("content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"))
_EOF = object()
BODY_BLOCK = 256 * 1024  # a unary request buffer this large moves to Call.blocks
_OK = grpc.StatusCode.OK
_ENCODINGS = ("", "identity", "gzip", "deflate")


class GrpcConnection(Answering, asyncio.Protocol):
    def __init__(self, server: AsyncioGrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.kick = server.busy_poll.kick
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.host = ""
        self.opened_at = self.last_rx = self.loop.time()
        self.h2: H2Connection = server.h2_engine(
            self, max_streams=server.limits.max_streams, now=self.opened_at, count=server.count
        )
        self.flush_scheduled = False
        self.waiters: list[asyncio.Future[None]] = []  # senders waiting for window or for the socket
        self.write_paused = False
        self.closed = False
        self.refused = False  # over the server's connection limit: closed at once
        self.queued = 0  # answer bytes waiting for the peer's window
        self.blocked_since: float | None = None  # answers waiting on the peer since then

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self.server.connections) >= self.server.limits.max_connections:
            # refused before it costs more than a file descriptor for an instant
            self.refused = self.closed = True
            self.server.count("connection_refused")
            self.transport.abort()
            return
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            host, port = addr[0], addr[1]
            self.host = host
            self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        self.server.connections.add(self)
        self.h2.initiate()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.closed = True
        self.server.connections.discard(self)
        for st in list(self.h2.streams.values()):
            if st.call is not None:
                self._cancel(st.call)
        self.h2.streams.clear()
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.blocked_since is None:
            self.blocked_since = self.loop.time()
        if self.transport is not None:
            self.transport.pause_reading()  # no new calls while the peer does not read its answers

    def resume_writing(self) -> None:
        self.write_paused = False
        self.blocked_since = None
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.kick()
        self.last_rx = self.loop.time()
        try:
            self.h2.receive(data, self.last_rx)
        except Exception as exc:  # a bug or input we did not foresee: this connection only
            log.exception("gRPC connection from %s failed", self.peer)
            self.h2.terminate(H2Error.INTERNAL_ERROR, type(exc).__name__)
        if self.h2.error is not None:
            code, message = self.h2.error
            log.info("closing gRPC connection from %s: %s (%s)", self.peer, message, code.name)
            self._flush()
            self.closed = True
            self._wake()  # senders waiting for window give up
            if self.transport is not None:
                self.transport.close()

    # ------------------------------------------------------------------ the core's callbacks

    def accept(self) -> bool:
        return self.queued <= self.server.limits.max_queued_bytes

    def on_oversized(self, st: H2Stream, size: int) -> None:
        msg = f"request metadata of {size} bytes exceeds the limit of {MAX_HEADER_LIST}"
        self._answer_status(st, grpc.StatusCode.RESOURCE_EXHAUSTED, msg)

    def on_request(self, st: H2Stream, head: RequestHead) -> None:
        call = st.call = Call(st, head.path, self.last_rx)
        content_type = ""
        metadata: list[tuple[str, str | bytes]] = []
        timeout: float | None = None
        for name, value in head.fields:
            if name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = wire.parse_timeout(value)
            elif name == "grpc-encoding":
                call.encoding = value
            elif name not in _NOT_METADATA:
                try:
                    metadata.append((name, wire.decode_metadata_value(name, value)))
                except ValueError:
                    pass  # undecodable binary metadata is dropped, as grpc does
        if head.method != "POST":
            self.h2.send_headers(st, wire.http_status(405), True)
            return
        if not content_type.startswith("application/grpc"):
            self.h2.send_headers(st, wire.http_status(415), True)
            return
        handler = self.server.lookup(call.path)
        if handler is None:
            self._answer_status(st, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {call.path}")
            return
        if call.encoding not in _ENCODINGS:
            msg = f"grpc-encoding {call.encoding!r} is not supported (identity, deflate, gzip are)"
            self._answer_status(st, grpc.StatusCode.UNIMPLEMENTED, msg)
            return
        call.handler = handler
        self.server.calls += 1
        call.metadata = tuple(metadata)
        if timeout is not None:
            call.deadline = time.monotonic() + timeout
            call.timer = self.loop.call_later(timeout, self._expire, call)
        call.ctx = Context(call.metadata, self.peer, call.deadline, partial(self._write_message, call))
        done = not receiving(st.state)
        if handler.request_streaming:
            if not self._admit(call):
                return
            call.queue = asyncio.Queue()
            call.reader = MessageReader(self.server.max_message_bytes)
            self._start(call, None)
            if done:
                call.queue.put_nowait(_EOF)
        elif done:
            self._end_of_request(call)

    def on_data(self, st: H2Stream, data: bytes, flow: int, end: bool) -> None:
        call = st.call
        if call is None or call.handler is None:  # answered early (error); the peer is still sending
            self.h2.credit(st, flow)
            return
        call.received += len(data)
        call.last_rx = self.last_rx
        if call.queue is None:
            if call.received > self.server.max_message_bytes + 5:
                self._finish_early(
                    call, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large(call.received - 5)
                )
                return
            body = call.body
            if not body:
                call.body = data
            elif isinstance(body, bytearray):
                body += data
                if len(body) >= BODY_BLOCK:
                    call.blocks.append(body)
                    call.body = b""
            else:
                grown = bytearray(body)
                grown += data
                call.body = grown
            self.h2.credit(st, flow)
        else:
            assert call.queue is not None and call.reader is not None
            try:
                messages, held = call.reader.feed(data, call.queue.qsize())
            except wire.MessageTooLarge as exc:
                self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                if call.task is not None:
                    call.task.cancel()
                return
            for m in messages:
                call.queue.put_nowait(m)
            self.h2.credit(st, flow - held)  # padding at once; messages when read (MessageReader)
        if end:
            self._end_of_request(call)

    def on_end(self, st: H2Stream) -> None:
        if st.call is not None:
            self._end_of_request(st.call)

    def on_reset(self, st: H2Stream, by_peer: bool) -> None:
        call = st.call
        if call is None:
            return
        if by_peer:
            self._count_reset()
        if call.handler is not None:
            self._cancel(call)
        self._close_if_done()

    # ------------------------------------------------------------------ calls

    def _too_large(self, size: int) -> str:
        return f"received message larger than max ({size} vs. {self.server.max_message_bytes})"

    def _end_of_request(self, call: Call) -> None:
        if call.handler is None:
            return
        if call.queue is not None:
            if call.reader is not None and call.reader.incomplete:  # the request ended inside a message
                call.queue.put_nowait(Aborted("the request stream ended inside a message"))
            call.queue.put_nowait(_EOF)
            return
        body, call.body = call.body, b""
        if call.blocks:
            call.blocks.append(body)
            body = b"".join(call.blocks)
            call.blocks = []
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._finish_early(
                call, grpc.StatusCode.INTERNAL, "a unary call needs exactly one request message"
            )
            return
        if not self._admit(call):
            return
        # a large message goes to its parser as a view (protobuf reads it): no copy of it all
        payload: bytes | memoryview
        if isinstance(body, bytes):
            payload = memoryview(body)[5:] if len(body) > BODY_BLOCK else body[5:]
        else:
            payload = bytes(memoryview(body)[5:])
        self._start(call, (body[0], payload))

    def _admit(self, call: Call) -> bool:
        """Take a call slot if the server limits this method (when its request has arrived, so a
        client that never finishes a request holds none); answer RESOURCE_EXHAUSTED if none is free."""
        if self.server.is_limited(call.path):
            if not self.server.admit():
                self._finish_early(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent calls")
                return False
            call.admitted = True
        return True

    def _start(self, call: Call, item: tuple[int, bytes | memoryview] | None) -> None:
        call.task = task = self.loop.create_task(self._run(call, item))
        # bookkeeping in a callback, not in ``finally``: it must run even for a task cancelled
        # before its first step (the coroutine body then never runs)
        task.add_done_callback(partial(self._task_done, call))

    def _decode(self, call: Call, item: tuple[int, bytes | memoryview] | tuple[int, bytes, int]) -> Any:
        compressed, data = item[0], item[1]
        if compressed:
            if not call.encoding or call.encoding == "identity":
                raise Aborted("compressed message without grpc-encoding")
            data = wire.decompress(call.encoding, data, self.server.max_message_bytes)
        assert call.handler is not None
        deserialize = call.handler.request_deserializer
        return deserialize(data) if deserialize is not None else bytes(data)

    async def _requests(self, call: Call) -> AsyncIterator[Any]:
        assert call.queue is not None
        while True:
            item = await call.queue.get()
            if item is _EOF:
                return
            if isinstance(item, Aborted):
                raise item
            owed = item[2]
            if call.queue.empty() and call.reader is not None:  # caught up: the message arriving flows
                owed += call.reader.caught_up()
            self.h2.credit(call.h2, owed)
            yield self._decode(call, item[:2])

    async def _run(self, call: Call, item: tuple[int, bytes | memoryview] | None) -> None:
        h, ctx = call.handler, call.ctx
        assert h is not None and ctx is not None
        try:
            request: Any = self._decode(call, item) if item is not None else self._requests(call)
            if not h.response_streaming:
                fn = h.unary_unary if item is not None else h.stream_unary
                response = await fn(request, ctx)
                if ctx.code_ is not None and ctx.code_ is not _OK:
                    self._finish(call, ctx.code_, ctx.details_, ctx.trailing)
                    return
                serialize = h.response_serializer
                payload = serialize(response) if serialize is not None else response
                sending = self._send_unary(call, payload, ctx)
                if sending is not None:
                    await sending
                return
            fn = h.unary_stream if item is not None else h.stream_stream
            result = fn(request, ctx)
            if hasattr(result, "__aiter__"):
                async for message in result:
                    await self._write_message(call, message)
            else:
                await result
            code = ctx.code_ if ctx.code_ is not None else _OK
            self._finish(call, code, ctx.details_, ctx.trailing)
        except Aborted as exc:
            code = ctx.code_ if ctx.code_ is not None else grpc.StatusCode.INTERNAL
            self._finish(call, code, ctx.details_ or str(exc), ctx.trailing)
        except wire.MessageTooLarge as exc:
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except wire.CorruptMessage as exc:
            self._finish(call, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except asyncio.CancelledError:
            if call.expired:
                self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            else:  # nothing is sent on a stream that was reset
                self._finish(call, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        except Exception as exc:
            self.server.handler_errors.error(
                "unexpected error in gRPC handler for %s", call.path, exc_info=exc
            )
            self._finish(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    def _task_done(self, call: Call, _task: asyncio.Task[None]) -> None:
        self._end_call(call)
        if call.ctx is not None:
            call.ctx.done_ = True
        if not answering(call.h2.state):  # answered (the common case), or reset
            self._close_if_done()
            return
        # cancelled before it started: answered here
        self._finish(
            call,
            *(
                (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                if call.expired
                else (grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            ),
        )
        self._close_if_done()

    def _end_call(self, call: Call) -> None:
        """Give back the call's slot and stop its deadline timer (once; later calls do nothing)."""
        if call.handler is not None:
            call.handler = None
            self.server.release(call.admitted)
            call.admitted = False
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None

    def _expire(self, call: Call) -> None:
        call.expired = True
        call.timer = None
        if call.task is not None:
            call.task.cancel()
        elif call.handler is not None:  # still receiving its request
            self._finish_early(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _cancel(self, call: Call) -> None:
        if call.ctx is not None:
            call.ctx.cancelled_ = True
        if call.task is not None:
            call.task.cancel()  # the task's callback ends the call
        else:
            self._end_call(call)

    def _finish_early(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        """Answer a call whose handler never started."""
        self._finish(call, code, message)
        self._end_call(call)

    def _count_reset(self) -> None:
        """Rapid-reset defence (CVE-2023-44487): a peer address that keeps opening and resetting
        streams before they are answered is told to go away, on this connection and on any new
        one that resets a stream while the address is over its allowance."""
        if not self.server.resets.reset(self.host, self.last_rx) and not self.h2.going_away:
            self.server.count("rapid_reset")
            log.warning("gRPC peer %s resets streams faster than allowed; asking it to go away", self.peer)
            self.go_away(H2Error.ENHANCE_YOUR_CALM)  # calls in flight still finish

    def sweep(self, now: float) -> None:
        timeouts.sweep(self, now)

    def abort_calls(self) -> list[asyncio.Task[None]]:
        """Cancel every call (its status says the server is shutting down); returns the tasks."""
        tasks = []
        for st in list(self.h2.streams.values()):
            call = st.call
            if call is None:
                continue
            if call.task is not None:
                call.task.cancel()
                tasks.append(call.task)
            elif call.handler is not None:  # still receiving its request
                self._finish_early(call, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        return tasks
