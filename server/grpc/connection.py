"""One HTTP/2 connection of the asyncio gRPC transport (an ``asyncio.Protocol``).

Frames are parsed straight from the socket buffer on the event loop; every complete call
becomes one task running the registered ``grpc.RpcMethodHandler``; responses are written as
HEADERS + DATA + trailing HEADERS in one buffer when the flow-control windows allow (the
common case), otherwise chunked as the peer opens its windows. Writes made in one loop
iteration leave in one ``transport.write``.

Limits (``server/grpc/limits.py``): header lists (16 KiB), request messages
(``max_message_bytes``), concurrent streams per connection (REFUSED_STREAM beyond), concurrent
inference calls per server (a slot is taken only once a request has fully arrived; excess
answered RESOURCE_EXHAUSTED at once), the receive windows, a budget for frames that carry no
request, answer bytes queued for a peer that does not read, and the timeouts that the server's
``sweep`` enforces. A protocol violation answers GOAWAY and closes the connection; other
connections and calls are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import grpc
import hpack

from server.grpc import wire
from server.grpc.context import Aborted, Context, Metadata
from server.grpc.header_cache import HeaderDecoder
from server.grpc.limits import FloodBudget
from server.grpc.wire import (
    ACK,
    END_HEADERS,
    END_STREAM,
    PRIORITY_FLAG,
    ConnectionError_,
    Frame,
    H2Error,
    Setting,
)

if TYPE_CHECKING:
    from server.grpc.transport import AsyncioGrpcServer

log = logging.getLogger("turnout.grpc.h2")

MAX_HEADER_LIST = 16 * 1024
# past this the decoder gives up and the connection closes (its HPACK state is lost): a bound on
# what one header block can make us allocate, whatever the dynamic table holds
HPACK_HARD_LIMIT = 64 * 1024
MAX_HEADER_BLOCK = 64 * 1024  # HEADERS + CONTINUATION bytes before decoding
SENT_PER_CREDIT = 16_384  # answer bytes sent that earn the peer one control frame (WINDOW_UPDATE, PING)
STREAM_WINDOW = 1 << 20  # what we let a peer send per stream before it must wait for us
CONNECTION_WINDOW = 16 << 20
_NOT_METADATA = frozenset(("content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"))
_EOF = object()
_OK = grpc.StatusCode.OK
# frames that carry requests cost no flood budget unless empty; every other frame does, and the
# budget is earned back by requests opened and answer bytes sent (which a client acknowledges)
_REQUEST_FRAMES = frozenset((Frame.DATA, Frame.HEADERS, Frame.CONTINUATION))


def _status(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class Stream:
    __slots__ = (
        "admitted",
        "body",
        "ctx",
        "deadline",
        "encoding",
        "expired",
        "handler",
        "headers_sent",
        "last_rx",
        "metadata",
        "opened",
        "path",
        "pending",
        "pending_held",
        "queue",
        "received",
        "recv_credit",
        "recv_window",
        "request_done",
        "reset",
        "responded",
        "send_window",
        "sid",
        "task",
        "timer",
    )

    def __init__(self, sid: int, send_window: int, now: float = 0.0) -> None:
        self.sid = sid
        self.opened = self.last_rx = now
        self.handler: grpc.RpcMethodHandler | None = None
        self.admitted = False  # holds one of the server's call slots
        self.path = ""
        self.metadata: Metadata = ()
        self.encoding = ""
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        # a unary request's bytes: the first DATA payload as it came, then one growing buffer (a
        # list of tiny frames would cost ~50 bytes of overhead per byte received)
        self.body: bytes | bytearray = b""
        self.pending = bytearray()  # streaming requests: bytes of an incomplete message
        self.pending_held = 0  # ... of which not yet returned to the peer's window
        self.received = 0
        self.recv_credit = 0  # bytes received on this stream not yet returned with WINDOW_UPDATE
        self.recv_window = STREAM_WINDOW  # bytes the peer may still send before our next WINDOW_UPDATE
        self.request_done = False
        self.queue: asyncio.Queue[Any] | None = None
        self.send_window = send_window
        self.headers_sent = False
        self.responded = False
        self.reset = False
        self.expired = False
        self.task: asyncio.Task[None] | None = None
        self.ctx: Context | None = None


class GrpcConnection(asyncio.Protocol):
    def __init__(self, server: AsyncioGrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.kick = server.busy_poll.kick
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = b""
        self.preface_seen = False
        # the decoder's own cap only guards against HPACK bombs (past it the decoder state is lost
        # and the connection must close); the 16 KiB limit is checked per stream after decoding
        self.decoder = HeaderDecoder(max_header_list_size=HPACK_HARD_LIMIT)
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self.continuation: tuple[int, int, bytearray] | None = None
        self.send_window = wire.DEFAULT_WINDOW
        self.peer_initial_window = wire.DEFAULT_WINDOW
        self.peer_max_frame = wire.DEFAULT_MAX_FRAME
        self.recv_window = CONNECTION_WINDOW
        self.recv_credit = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.waiters: list[asyncio.Future[None]] = []  # senders waiting for window or for the socket
        self.write_paused = False
        self.going_away = False
        self.closed = False
        self.refused = False  # over the server's connection limit: closed at once
        self.opened_at = self.last_rx = self.loop.time()
        self.flood = FloodBudget(self.opened_at)
        self.queued = 0  # answer bytes waiting for the peer's window
        self.blocked_since: float | None = None  # answers waiting on the peer since then
        self.host = ""

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self.server.connections) >= self.server.limits_.max_connections:
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
        self._write(
            wire.settings(
                {
                    Setting.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                    Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                }
            )
            + wire.window_update(0, CONNECTION_WINDOW - wire.DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.closed = True
        self.server.connections.discard(self)
        for st in list(self.streams.values()):
            self._cancel(st)
        self.streams.clear()
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
        buf = self.buf + data if self.buf else data
        try:
            if not self.preface_seen:
                if len(buf) < len(wire.PREFACE):
                    if not wire.PREFACE.startswith(buf):
                        raise ConnectionError_(H2Error.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self.buf = buf
                    return
                if not buf.startswith(wire.PREFACE):
                    raise ConnectionError_(H2Error.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                buf = buf[len(wire.PREFACE) :]
                self.preface_seen = True
            pos = self._frames(buf)
        except ConnectionError_ as exc:
            self._connection_error(exc.code, str(exc))
            return
        except Exception as exc:  # a bug or input we did not foresee: this connection only
            log.exception("gRPC connection from %s failed", self.peer)
            self._connection_error(H2Error.INTERNAL_ERROR, f"{type(exc).__name__}")
            return
        self.buf = buf[pos:] if pos < len(buf) else b""

    # ------------------------------------------------------------------ frame parsing

    def _frames(self, buf: bytes) -> int:
        n, pos, max_frame = len(buf), 0, self.server.max_frame
        while n - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > max_frame:
                raise ConnectionError_(H2Error.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > n:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = buf[pos + 9 : end]
            pos = end
            if self.continuation is not None and kind != Frame.CONTINUATION:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "header block interrupted")
            if (kind not in _REQUEST_FRAMES or (length == 0 and not flags & END_STREAM)) and not (
                self.flood.spend(self.last_rx)
            ):
                self.server.count("control_flood")
                raise ConnectionError_(H2Error.ENHANCE_YOUR_CALM, "too many frames that carry no request")
            if kind == Frame.DATA:
                self._on_data(sid, flags, payload)
            elif kind == Frame.HEADERS:
                self._on_headers(sid, flags, payload)
            elif kind == Frame.WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif kind == Frame.SETTINGS:
                self._on_settings(sid, flags, payload)
            elif kind == Frame.PING:
                if len(payload) != 8 or sid:
                    raise ConnectionError_(H2Error.FRAME_SIZE_ERROR, "bad PING")
                if not flags & ACK:
                    self._write(wire.frame(Frame.PING, ACK, 0, payload))
            elif kind == Frame.RST_STREAM:
                if len(payload) != 4 or not sid:
                    raise ConnectionError_(H2Error.PROTOCOL_ERROR, "bad RST_STREAM")
                if sid > self.last_sid:
                    raise ConnectionError_(H2Error.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
                st = self.streams.pop(sid, None)
                if st is not None:
                    self._count_reset()
                    self._cancel(st)
                    self._close_if_done()
            elif kind == Frame.CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif kind == Frame.GOAWAY:
                pass  # the peer opens no new streams; ours finish
            elif kind == Frame.PUSH_PROMISE:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
            # PRIORITY and unknown frame types are ignored, as RFC 9113 allows
        return pos

    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        for key, value in wire.parse_settings(payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > wire.MAX_WINDOW:
                    raise ConnectionError_(H2Error.FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > wire.MAX_WINDOW:
                        raise ConnectionError_(H2Error.FLOW_CONTROL_ERROR, "a stream window overflowed")
            elif key == Setting.MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionError_(H2Error.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self._write(wire.frame(Frame.SETTINGS, ACK, 0))
        self._wake()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(H2Error.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0 or self.send_window + inc > wire.MAX_WINDOW:
                raise ConnectionError_(H2Error.FLOW_CONTROL_ERROR, "bad connection WINDOW_UPDATE")
            self.send_window += inc
        elif sid > self.last_sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        else:
            st = self.streams.get(sid)
            if st is not None:
                if inc == 0:
                    self._forget(st, H2Error.PROTOCOL_ERROR)
                elif st.send_window + inc > wire.MAX_WINDOW:
                    self._forget(st, H2Error.FLOW_CONTROL_ERROR)
                else:
                    st.send_window += inc
        if self.waiters:
            self.blocked_since = None  # the peer made room: the write timeout starts again
            self._wake()

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid or not sid % 2:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "HEADERS on an even or zero stream id")
        block = wire.strip_padding(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if not flags & END_HEADERS:
            self.continuation = (sid, flags, bytearray(block))
            return
        self._header_block(sid, flags, block)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.continuation[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(H2Error.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            first_flags = self.continuation[1]
            self.continuation = None
            self._header_block(sid, first_flags, bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)
        except (hpack.HPACKError, UnicodeDecodeError, ValueError, IndexError) as exc:
            raise ConnectionError_(H2Error.COMPRESSION_ERROR, f"header block: {exc}") from exc
        st = self.streams.get(sid)
        if st is not None:  # trailers of a request stream
            if not flags & END_STREAM:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            if st.request_done:  # the request had already ended (RFC 9113 5.1, half-closed)
                self._forget(st, H2Error.STREAM_CLOSED)
            else:
                self._end_of_request(st)
            return
        if sid <= self.last_sid:
            raise ConnectionError_(H2Error.STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_sid = sid
        if (
            self.going_away
            or len(self.streams) >= self.server.max_streams
            or self.queued > self.server.limits_.max_queued_bytes
        ):
            self.server.count("stream_refused")
            if not self.flood.spend(self.last_rx):  # refusals cost us a write and earn nothing
                raise ConnectionError_(H2Error.ENHANCE_YOUR_CALM, "too many refused streams")
            self._write(wire.rst_stream(sid, H2Error.REFUSED_STREAM))
            return
        self.flood.earn(self.flood.earn_per_stream)
        size = sum(len(name) + len(value) + 32 for name, value in headers)  # RFC 9113 6.5.2
        if size > MAX_HEADER_LIST:
            st = self.streams[sid] = Stream(sid, self.peer_initial_window, self.last_rx)
            st.request_done = bool(flags & END_STREAM)
            msg = f"request metadata of {size} bytes exceeds the limit of {MAX_HEADER_LIST}"
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, msg)
            return
        self._open(sid, flags, headers)

    # ------------------------------------------------------------------ calls

    def _open(self, sid: int, flags: int, headers: Iterable[Any]) -> None:
        st = Stream(sid, self.peer_initial_window, self.last_rx)
        method = content_type = ""
        metadata: list[tuple[str, str | bytes]] = []
        timeout: float | None = None
        for name, value in headers:
            if name.startswith(":"):
                if name == ":path":
                    st.path = value
                elif name == ":method":
                    method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = wire.parse_timeout(value)
            elif name == "grpc-encoding":
                st.encoding = value
            elif name not in _NOT_METADATA:
                try:
                    metadata.append((name, wire.decode_metadata_value(name, value)))
                except ValueError:
                    pass  # undecodable binary metadata is dropped, as grpc does
        self.streams[sid] = st
        st.request_done = bool(flags & END_STREAM)
        if method != "POST":
            self._http_error(st, 405)
            return
        if not content_type.startswith("application/grpc"):
            self._http_error(st, 415)
            return
        handler = self.server.lookup(st.path)
        if handler is None:
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {st.path}")
            return
        if st.encoding not in ("", "identity", "gzip", "deflate"):
            msg = f"grpc-encoding {st.encoding!r} is not supported (identity, deflate, gzip are)"
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, msg)
            return
        st.handler = handler
        self.server.calls += 1
        st.metadata = tuple(metadata)
        if timeout is not None:
            st.deadline = time.monotonic() + timeout
            st.timer = self.loop.call_later(timeout, self._expire, st)
        st.ctx = Context(st.metadata, self.peer, st.deadline, partial(self._write_message, st))
        if handler.request_streaming:
            if not self._admit(st):
                return
            st.queue = asyncio.Queue()
            self._start(st, None)
            if st.request_done:
                st.queue.put_nowait(_EOF)
        elif st.request_done:
            self._end_of_request(st)

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        self.recv_window -= n
        if self.recv_window < 0:
            raise ConnectionError_(H2Error.FLOW_CONTROL_ERROR, "peer overran the connection window")
        self.recv_credit += n
        if self.recv_credit >= CONNECTION_WINDOW // 2:
            self._write(wire.window_update(0, self.recv_credit))
            self.recv_window += self.recv_credit
            self.recv_credit = 0
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already answered or reset: its window is returned above
        if st.request_done:
            self._forget(st, H2Error.STREAM_CLOSED)
            return
        st.recv_window -= n
        if st.recv_window < 0:
            self._forget(st, H2Error.FLOW_CONTROL_ERROR)
            return
        data = wire.strip_padding(flags, payload)
        st.received += len(data)
        st.last_rx = self.last_rx
        if st.handler is None:  # answered early (error); the peer is still sending
            return
        end = bool(flags & END_STREAM)
        if end:
            st.request_done = True
        if st.queue is None:
            if st.received > self.server.max_message_bytes + 5:
                self._finish_early(st, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large(st.received - 5))
                return
            body = st.body
            if not body:
                st.body = data
            elif isinstance(body, bytearray):
                body += data
            else:
                grown = bytearray(body)
                grown += data
                st.body = grown
            self._credit(st, n)
        else:
            held = self._stream_messages(st, data)
            if st.responded:
                return
            self._credit(st, n - held)  # padding at once; messages when read (see _stream_messages)
        if end:
            self._end_of_request(st)

    def _credit(self, st: Stream, n: int) -> None:
        st.recv_credit += n
        if not st.request_done and not st.responded and st.recv_credit >= STREAM_WINDOW // 2:
            self._write(wire.window_update(st.sid, st.recv_credit))
            st.recv_window += st.recv_credit
            st.recv_credit = 0

    def _stream_messages(self, st: Stream, data: bytes) -> int:
        """Queue the messages ``data`` completes; returns how many of its bytes stay unreturned
        to the peer's stream window. A queued message's bytes return when the handler reads it.
        The bytes of a message still arriving return at once while the handler has read
        everything queued (so a message larger than the window cannot stall), and are held with
        it otherwise (so a handler that falls behind stops the peer within about one window)."""
        assert st.queue is not None
        pending = st.pending
        old = len(pending)
        buf: bytes | bytearray = data
        if old:  # appended in place: a message arriving in many frames costs linear time
            pending += data
            buf = pending
        n = len(buf)
        pos = held = 0
        while n - pos >= 5:
            size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if size > self.server.max_message_bytes:
                self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large(size))
                if st.task is not None:
                    st.task.cancel()
                st.pending = bytearray()
                return 0
            end = pos + 5 + size
            if end > n:
                break
            new = end - max(pos, old) if end > old else 0  # bytes of this message that came now
            owed = new
            if pos < old:  # the message that was arriving: what it held back is owed with it
                owed += st.pending_held
                st.pending_held = 0
            st.queue.put_nowait((buf[pos], bytes(buf[pos + 5 : end]) if old else buf[pos + 5 : end], owed))
            held += new
            pos = end
        if old:
            del pending[:pos]
        elif pos < n:
            pending += data[pos:]
        if pending and not st.queue.empty():
            arrived = n - max(pos, old)
            st.pending_held += arrived
            held += arrived
        return held

    def _too_large(self, size: int) -> str:
        return f"received message larger than max ({size} vs. {self.server.max_message_bytes})"

    def _end_of_request(self, st: Stream) -> None:
        st.request_done = True
        if st.handler is None:
            return
        if st.queue is not None:
            if st.pending:  # the request ended inside a message
                st.queue.put_nowait(Aborted("the request stream ended inside a message"))
            st.queue.put_nowait(_EOF)
            return
        body, st.body = st.body, b""
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._finish_early(st, grpc.StatusCode.INTERNAL, "a unary call needs exactly one request message")
            return
        if not self._admit(st):
            return
        self._start(st, (body[0], body[5:] if isinstance(body, bytes) else bytes(memoryview(body)[5:])))

    def _admit(self, st: Stream) -> bool:
        """Take a call slot if the server limits this method (when its request has arrived, so a
        client that never finishes a request holds none); answer RESOURCE_EXHAUSTED if none is free."""
        if self.server.limits(st.path):
            if not self.server.admit():
                self._finish_early(st, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent calls")
                return False
            st.admitted = True
        return True

    def _start(self, st: Stream, item: tuple[int, bytes] | None) -> None:
        st.task = task = self.loop.create_task(self._run(st, item))
        # bookkeeping in a callback, not in ``finally``: it must run even for a task cancelled
        # before its first step (the coroutine body then never runs)
        task.add_done_callback(partial(self._task_done, st))

    def _decode(self, st: Stream, item: tuple[int, bytes] | tuple[int, bytes, int]) -> Any:
        compressed, data = item[0], item[1]
        if compressed:
            if not st.encoding or st.encoding == "identity":
                raise Aborted("compressed message without grpc-encoding")
            data = wire.decompress(st.encoding, data, self.server.max_message_bytes)
        assert st.handler is not None
        deserialize = st.handler.request_deserializer
        return deserialize(data) if deserialize is not None else data

    async def _requests(self, st: Stream) -> AsyncIterator[Any]:
        assert st.queue is not None
        while True:
            item = await st.queue.get()
            if item is _EOF:
                return
            if isinstance(item, Aborted):
                raise item
            owed = item[2]
            if st.pending_held and st.queue.empty():  # caught up: the message arriving flows again
                owed += st.pending_held
                st.pending_held = 0
            self._credit(st, owed)
            yield self._decode(st, item[:2])

    async def _run(self, st: Stream, item: tuple[int, bytes] | None) -> None:
        h, ctx = st.handler, st.ctx
        assert h is not None and ctx is not None
        try:
            request: Any = self._decode(st, item) if item is not None else self._requests(st)
            if not h.response_streaming:
                fn = h.unary_unary if item is not None else h.stream_unary
                response = await fn(request, ctx)
                if ctx.code_ is not None and ctx.code_ is not _OK:
                    self._finish(st, ctx.code_, ctx.details_, ctx.trailing)
                    return
                serialize = h.response_serializer
                payload = serialize(response) if serialize is not None else response
                sending = self._send_unary(st, payload, ctx)
                if sending is not None:
                    await sending
                return
            fn = h.unary_stream if item is not None else h.stream_stream
            result = fn(request, ctx)
            if hasattr(result, "__aiter__"):
                async for message in result:
                    await self._write_message(st, message)
            else:
                await result
            code = ctx.code_ if ctx.code_ is not None else _OK
            self._finish(st, code, ctx.details_, ctx.trailing)
        except Aborted as exc:
            code = ctx.code_ if ctx.code_ is not None else grpc.StatusCode.INTERNAL
            self._finish(st, code, ctx.details_ or str(exc), ctx.trailing)
        except wire.MessageTooLarge as exc:
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except wire.CorruptMessage as exc:
            self._finish(st, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except asyncio.CancelledError:
            if st.expired:
                self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            elif not st.reset and not self.closed:
                self._finish(st, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        except Exception as exc:
            log.exception("unexpected error in gRPC handler for %s", st.path)
            self._finish(st, grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    def _task_done(self, st: Stream, _task: asyncio.Task[None]) -> None:
        self._done(st)

    def _end_call(self, st: Stream) -> None:
        """Give back the call's slot and stop its deadline timer (once; later calls do nothing)."""
        if st.handler is not None:
            st.handler = None
            self.server.release(st.admitted)
            st.admitted = False
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def _done(self, st: Stream) -> None:
        self._end_call(st)
        if st.ctx is not None:
            st.ctx.done_ = True
        if not st.responded and not st.reset and not self.closed:  # cancelled before it started
            if st.expired:
                self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            else:
                self._finish(st, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self._close_if_done()

    def _expire(self, st: Stream) -> None:
        st.expired = True
        st.timer = None
        if st.task is not None:
            st.task.cancel()
        elif st.handler is not None:  # still receiving its request
            self._finish_early(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _cancel(self, st: Stream) -> None:
        st.reset = True
        if st.ctx is not None:
            st.ctx.cancelled_ = True
        if st.task is not None:
            st.task.cancel()  # the task's callback ends the call
        else:
            self._end_call(st)

    # ------------------------------------------------------------------ answers

    def _send_unary(self, st: Stream, payload: bytes, ctx: Context) -> Awaitable[None] | None:
        if st.responded or st.reset or self.closed:
            return None
        msg = wire.length_prefixed(payload)
        n = len(msg)
        sid, max_frame = st.sid, self.peer_max_frame
        head = (
            wire.RESPONSE_HEADERS + wire.metadata_fields(ctx.initial)
            if ctx.initial
            else wire.RESPONSE_HEADERS
        )
        tail = wire.trailers(0, "", ctx.trailing) if ctx.trailing else wire.OK_TRAILERS
        if st.headers_sent or self.write_paused or n > min(self.send_window, st.send_window, max_frame):
            return self._send_unary_slowly(st, msg, ctx)
        self.send_window -= n
        st.send_window -= n
        self.flood.earn(n / SENT_PER_CREDIT)
        st.headers_sent = True
        self._write(
            (
                wire.frame(Frame.HEADERS, END_HEADERS, sid, head)
                if len(head) <= max_frame
                else wire.header_frames(sid, head, False, max_frame)
            )
            + wire.frame(Frame.DATA, 0, sid, msg)
            + wire.header_frames(sid, tail, True, max_frame)
        )
        self._closed(st)
        return None

    async def _send_unary_slowly(self, st: Stream, msg: bytes, ctx: Context) -> None:
        await self._send_data(st, msg)
        self._finish(st, _OK, "", ctx.trailing)

    async def _write_message(self, st: Stream, message: Any) -> None:
        assert st.handler is not None
        serialize = st.handler.response_serializer
        await self._send_data(st, wire.length_prefixed(serialize(message) if serialize else message))

    async def _send_data(self, st: Stream, msg: bytes) -> None:
        if st.reset or self.closed:
            raise asyncio.CancelledError
        self._send_headers(st)
        view, pos, n = memoryview(msg), 0, len(msg)
        self.queued += n  # counted while it waits for the peer (see _header_block, sweep)
        try:
            while pos < n:
                if st.reset or self.closed:
                    raise asyncio.CancelledError
                room = min(self.send_window, st.send_window, self.peer_max_frame, n - pos)
                if room <= 0 or self.write_paused:
                    await self._wait()
                    continue
                self.send_window -= room
                st.send_window -= room
                self._write(wire.frame(Frame.DATA, 0, st.sid, bytes(view[pos : pos + room])))
                pos += room
        finally:
            self.queued -= n
            self.flood.earn(pos / SENT_PER_CREDIT)

    def _send_headers(self, st: Stream) -> None:
        if not st.headers_sent:
            st.headers_sent = True
            ctx = st.ctx
            head = wire.RESPONSE_HEADERS
            if ctx is not None and ctx.initial:
                head += wire.metadata_fields(ctx.initial)
            self._write(wire.header_frames(st.sid, head, False, self.peer_max_frame))

    async def _wait(self) -> None:
        if self.blocked_since is None:
            self.blocked_since = self.loop.time()
        fut = self.loop.create_future()
        self.waiters.append(fut)
        await fut

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _finish(self, st: Stream, code: grpc.StatusCode, message: str = "", metadata: Metadata = ()) -> None:
        """Trailers (or a trailers-only answer) and the end of the stream."""
        if st.responded or st.reset or self.closed:
            return
        block = wire.trailers(_status(code), message, metadata)
        if not st.headers_sent:
            block = wire.STATUS_200 + wire.CONTENT_TYPE_GRPC + block
        self._write(wire.header_frames(st.sid, block, True, self.peer_max_frame))
        self._closed(st)

    def _finish_early(self, st: Stream, code: grpc.StatusCode, message: str) -> None:
        """Answer a call whose handler never started."""
        self._finish(st, code, message)
        self._end_call(st)

    def _http_error(self, st: Stream, status: int) -> None:
        self._write(wire.frame(Frame.HEADERS, END_HEADERS | END_STREAM, st.sid, wire.http_status(status)))
        self._closed(st)

    def _closed(self, st: Stream) -> None:
        st.responded = True
        if st.request_done:
            self.streams.pop(st.sid, None)
            self._close_if_done()
        else:  # the peer is still sending: tell it to stop (gRPC over HTTP/2: RST_STREAM NO_ERROR)
            self._forget(st, H2Error.NO_ERROR)

    def _forget(self, st: Stream, code: H2Error) -> None:
        self.streams.pop(st.sid, None)
        self._write(wire.rst_stream(st.sid, code))
        if not st.responded:
            self._cancel(st)
        self._close_if_done()

    def _count_reset(self) -> None:
        """Rapid-reset defence (CVE-2023-44487): a peer address that keeps opening and resetting
        streams before they are answered is told to go away, on this connection and on any new
        one that resets a stream while the address is over its allowance."""
        if not self.server.resets.reset(self.host, self.last_rx) and not self.going_away:
            self.server.count("rapid_reset")
            log.warning("gRPC peer %s resets streams faster than allowed; asking it to go away", self.peer)
            self.go_away(H2Error.ENHANCE_YOUR_CALM)  # calls in flight still finish

    def sweep(self, now: float) -> None:
        """Enforce the timeouts (``TransportLimits``); the server calls this about once a second."""
        lim = self.server.limits_
        if self.closed or self.transport is None:
            return
        age = now - self.opened_at
        if not self.preface_seen:
            if age > lim.handshake_timeout_s:
                self._drop("handshake_timeout", f"no connection preface within {lim.handshake_timeout_s:g} s")
            return
        if self.blocked_since is not None and now - self.blocked_since > lim.write_timeout_s:
            self._drop("write_timeout", f"the peer read nothing for {lim.write_timeout_s:g} s")
            return
        if lim.max_age_s is not None and age > lim.max_age_s:
            if not self.going_away:
                self.server.count("max_age")
                self.go_away()
            elif age > lim.max_age_s + lim.max_age_grace_s:
                self.abort_calls()
                self.loop.call_soon(self._close_now)  # after the cancelled calls have answered
                return
        idle = lim.idle_timeout_s
        if idle is not None and not self.streams and now - self.last_rx > idle and not self.going_away:
            self.server.count("idle_timeout")
            self.go_away()
            return
        for st in list(self.streams.values()):
            if st.request_done or st.handler is None:
                continue
            if (st.queue is None and now - st.opened > lim.request_timeout_s) or (
                idle is not None and now - st.last_rx > idle
            ):
                self.server.count("request_timeout")
                self._expire(st)

    def _drop(self, event: str, why: str) -> None:
        self.server.count(event)
        log.info("closing gRPC connection from %s: %s", self.peer, why)
        self.closed = True
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _close_if_done(self) -> None:
        if self.going_away and not self.streams:
            self._close_now()

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.kick()  # the client's next request often follows its answer
        self.out.clear()

    def _connection_error(self, code: H2Error, message: str) -> None:
        log.info("closing gRPC connection from %s: %s (%s)", self.peer, message, code.name)
        self._write(wire.goaway(self.last_sid, code, message.encode()[:256]))
        self._flush()
        self.closed = True
        self._wake()  # senders waiting for window give up
        if self.transport is not None:
            self.transport.close()

    def go_away(self, code: H2Error = H2Error.NO_ERROR) -> None:
        """Graceful close: no new streams; the connection closes once its calls are answered."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self._write(wire.goaway(self.last_sid, code))
        if not self.streams:
            self._close_now()

    def _close_now(self) -> None:
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort_calls(self) -> list[asyncio.Task[None]]:
        """Cancel every call (its status says the server is shutting down); returns the tasks."""
        tasks = []
        for st in list(self.streams.values()):
            if st.task is not None:
                st.task.cancel()
                tasks.append(st.task)
            elif st.handler is not None:  # still receiving its request
                self._finish_early(st, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        return tasks
