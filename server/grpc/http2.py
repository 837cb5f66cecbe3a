"""A sans-IO HTTP/2 server connection (RFC 9113): bytes in through ``receive``, what they mean
out through a ``Handler``'s callbacks, and bytes to send collected for ``data_to_send``. It
owns frames, stream states (``streams.py``), flow control, HPACK decoding and the flood budget
(``limits.py``); it knows nothing of gRPC, sockets or the event loop, so it is tested by feeding
it bytes. ``connection.py`` drives it for the gRPC transport.

A connection error writes GOAWAY and marks the connection ``closed``; a stream error resets only
that stream and tells the handler. The server never opens streams (no push)."""

from __future__ import annotations

from collections.abc import Callable

import hpack

from turnout.server.grpc import wire
from turnout.server.grpc.h2output import H2Output
from turnout.server.grpc.h2stream import CONNECTION_WINDOW, MAX_HEADER_LIST, STREAM_WINDOW, H2Stream, Handler
from turnout.server.grpc.header_cache import HeaderDecoder
from turnout.server.grpc.limits import FloodBudget
from turnout.server.grpc.streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE,
    OPEN,
    Event,
    RequestHead,
    StreamError,
    check_trailers,
    request_head,
    transition,
)
from turnout.server.grpc.wire import (
    ACK,
    END_HEADERS,
    END_STREAM,
    PRIORITY_FLAG,
    ConnectionError_,
    H2Error,
    Setting,
)

# past this the decoder gives up and the connection closes (its HPACK state is lost): a bound on
# what one header block can make us allocate, whatever the dynamic table holds
HPACK_HARD_LIMIT = 64 * 1024
MAX_HEADER_BLOCK = 64 * 1024  # HEADERS + CONTINUATION bytes before decoding
# frames that carry requests cost no flood budget unless empty; every other frame does, and the
# budget is earned back by requests opened and answer bytes sent (which a client acknowledges)
_REQUEST_FRAMES = frozenset((wire.DATA, wire.HEADERS, wire.CONTINUATION))


class H2Connection(H2Output):
    def __init__(
        self,
        handler: Handler,
        *,
        max_streams: int,
        now: float = 0.0,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_streams = max_streams
        self.max_frame = max_frame  # the largest frame we accept (SETTINGS_MAX_FRAME_SIZE's default)
        self.count = count or (lambda _event: None)
        self.flood = FloodBudget(now)
        self.now = now
        self.buf = b""
        self.preface_seen = False
        self.decoder = HeaderDecoder(max_header_list_size=HPACK_HARD_LIMIT)
        self.known_fields: set[tuple[str, str]] = set()
        self._last_headers: tuple[tuple[str, str], ...] | None = None
        self._last_head: RequestHead | None = None
        self.streams: dict[int, H2Stream] = {}
        self.last_sid = 0
        self.continuation: tuple[int, int, bytearray] | None = None
        self.send_window = wire.DEFAULT_WINDOW
        self.peer_initial_window = wire.DEFAULT_WINDOW
        self.peer_max_frame = wire.DEFAULT_MAX_FRAME
        self.recv_window = CONNECTION_WINDOW
        self.recv_credit = 0
        self.out: list[bytes | memoryview] = []
        self.going_away = False
        self.closed = False
        self.error: tuple[H2Error, str] | None = None

    # ------------------------------------------------------------------ input

    def initiate(self) -> None:
        """Our SETTINGS and the connection window, the first bytes a server sends."""
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: self.max_streams,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        self._write(wire.settings(settings) + wire.window_update(0, CONNECTION_WINDOW - wire.DEFAULT_WINDOW))

    def receive(self, data: bytes, now: float) -> None:
        """Take bytes from the peer. A connection error leaves ``closed`` set, ``error`` saying
        why, and GOAWAY in the output: send it, then close the socket."""
        if self.closed:
            return
        self.now = now
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
            self.terminate(exc.code, str(exc))
            return
        self.buf = buf[pos:] if pos < len(buf) else b""

    def _frames(self, buf: bytes) -> int:
        n, pos, max_frame = len(buf), 0, self.max_frame
        while n - pos >= 9 and not self.closed:
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
            if self.continuation is not None and kind != wire.CONTINUATION:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "header block interrupted")
            if (kind not in _REQUEST_FRAMES or (length == 0 and not flags & END_STREAM)) and not (
                self.flood.spend(self.now)
            ):
                self.count("control_flood")
                raise ConnectionError_(H2Error.ENHANCE_YOUR_CALM, "too many frames that carry no request")
            if kind == wire.DATA:
                self._on_data(sid, flags, payload)
            elif kind == wire.HEADERS:
                self._on_headers(sid, flags, payload)
            elif kind == wire.WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif kind == wire.SETTINGS:
                self._on_settings(sid, flags, payload)
            elif kind == wire.PING:
                if len(payload) != 8 or sid:
                    raise ConnectionError_(H2Error.FRAME_SIZE_ERROR, "bad PING")
                if not flags & ACK:
                    self._write(wire.frame(wire.PING, ACK, 0, payload))
            elif kind == wire.RST_STREAM:
                self._on_rst_stream(sid, payload)
            elif kind == wire.CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif kind == wire.PRIORITY:
                if len(payload) != 5 or not sid:
                    raise ConnectionError_(H2Error.PROTOCOL_ERROR, "bad PRIORITY")
            elif kind == wire.PUSH_PROMISE:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
            # GOAWAY (the peer opens no new streams; ours finish) and unknown types are ignored
        return pos

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        self.recv_window -= n
        if self.recv_window < 0:
            raise ConnectionError_(H2Error.FLOW_CONTROL_ERROR, "peer overran the connection window")
        self.recv_credit += n  # the connection window is returned at once; streams' as read
        if self.recv_credit >= CONNECTION_WINDOW // 2:
            self._write(wire.window_update(0, self.recv_credit))
            self.recv_window += self.recv_credit
            self.recv_credit = 0
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already closed: frames in flight are dropped (RFC 9113 §5.1)
        state = st.state
        if state is not OPEN and state is not HALF_CLOSED_LOCAL:  # not receiving()
            self.stream_error(st, H2Error.STREAM_CLOSED)
            return
        st.recv_window -= n
        if st.recv_window < 0:
            self.stream_error(st, H2Error.FLOW_CONTROL_ERROR)
            return
        end = bool(flags & END_STREAM)
        if end:  # RECV_END, as TRANSITIONS has it (spelt out: this runs for every request)
            st.state = HALF_CLOSED_REMOTE if state is OPEN else CLOSED
        self.handler.on_data(st, wire.strip_padding(flags, payload), n, end)
        if st.state is CLOSED:
            self.streams.pop(sid, None)

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
        if st is not None:  # trailers: they end the request
            if not flags & END_STREAM:
                raise ConnectionError_(H2Error.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            try:
                check_trailers(headers)
                st.state = transition(st.state, Event.RECV_END)
            except StreamError as exc:
                self.stream_error(st, exc.code)
                return
            self.handler.on_end(st)
            if st.state is CLOSED:
                self.streams.pop(sid, None)
            return
        if sid <= self.last_sid:
            raise ConnectionError_(H2Error.STREAM_CLOSED, "HEADERS on a closed stream")
        self.last_sid = sid
        if self.going_away or len(self.streams) >= self.max_streams or not self.handler.accept():
            self.count("stream_refused")
            if not self.flood.spend(self.now):  # refusals cost us a write and earn nothing
                raise ConnectionError_(H2Error.ENHANCE_YOUR_CALM, "too many refused streams")
            self._write(wire.rst_stream(sid, H2Error.REFUSED_STREAM))
            return
        flood = self.flood
        flood.level = min(flood.capacity, flood.level + flood.earn_per_stream)  # earn(), inline
        st = self.streams[sid] = H2Stream(sid, self.peer_initial_window)
        # RECV_HEADERS, then RECV_END with END_STREAM, as TRANSITIONS has it
        st.state = HALF_CLOSED_REMOTE if flags & END_STREAM else OPEN
        if headers is self._last_headers and self._last_head is not None:
            head = self._last_head  # the HPACK memo's block again: sized and validated already
        else:
            size = sum(len(name) + len(value) + 32 for name, value in headers)  # RFC 9113 6.5.2
            if size > MAX_HEADER_LIST:
                self.handler.on_oversized(st, size)
                return
            try:
                head = request_head(headers, self.known_fields)
            except StreamError as exc:
                self.count("malformed_request")
                self.reset(st, exc.code)
                return
            self._last_headers, self._last_head = headers, head
        self.handler.on_request(st, head)

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4 or not sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "bad RST_STREAM")
        if sid > self.last_sid:
            raise ConnectionError_(H2Error.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        st = self.streams.pop(sid, None)
        if st is not None:
            st.state = transition(st.state, Event.RECV_RST)
            self.handler.on_reset(st, True)

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
        self._write(wire.frame(wire.SETTINGS, ACK, 0))
        self.handler.on_window()

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
            if st is None:
                return
            if inc == 0:
                self.stream_error(st, H2Error.PROTOCOL_ERROR)
                return
            if st.send_window + inc > wire.MAX_WINDOW:
                self.stream_error(st, H2Error.FLOW_CONTROL_ERROR)
                return
            st.send_window += inc
        self.handler.on_window()
