"""``http2.H2Connection``'s interface on the ``h2`` library, so that the two HTTP/2 cores can be
measured side by side under the same gRPC layer (``--grpc-h2-engine h2``; benchmarks.features,
section h2-engine). The gRPC layer, the stream states and the header validation are the same;
framing, flow control and HPACK are the library's. It is a measuring instrument: the edge's
frame-level defences (the flood budget, REFUSED_STREAM at the stream limit) are the library's
own here, and the default engine remains ``turnout``."""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

from turnout.server.grpc import wire
from turnout.server.grpc.h2stream import CONNECTION_WINDOW, MAX_HEADER_LIST, STREAM_WINDOW, H2Stream, Handler
from turnout.server.grpc.streams import (
    Event,
    State,
    StreamError,
    answering,
    request_head,
    transition,
)
from turnout.server.grpc.wire import H2Error

MAX_BLOCKS = 64  # decoded response header blocks remembered (ours are literal-only: stateless)


class H2LibConnection:
    def __init__(
        self,
        handler: Handler,
        *,
        max_streams: int,
        now: float = 0.0,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        count: Callable[[str], None] | None = None,
    ) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        self.handler = handler
        self.max_streams = max_streams
        self.count = count or (lambda _event: None)
        self.streams: dict[int, H2Stream] = {}
        self.known_fields: set[tuple[str, str]] = set()
        self.preface_seen = False
        self.going_away = False
        self.closed = False
        self.error: tuple[H2Error, str] | None = None
        self.last_sid = 0
        self._extra: list[bytes] = []  # our own frames (a graceful GOAWAY)
        self._decoder = hpack.Decoder()
        self._blocks: dict[bytes, list[tuple[str, str]]] = {}
        self._seen = 0

    def initiate(self) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - wire.DEFAULT_WINDOW)
        self.handler.on_output()

    def receive(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        if not self.preface_seen:
            self._seen += len(data)
            self.preface_seen = self._seen >= len(wire.PREFACE)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # the library has written its GOAWAY
            self.closed = True
            self.error = (H2Error(int(exc.error_code)), str(exc) or type(exc).__name__)
            self.handler.on_output()
            return
        for event in events:
            self._dispatch(event)
        self.handler.on_output()

    def _dispatch(self, event: h2.events.Event) -> None:
        handler = self.handler
        if isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None:
                self.credit_sid(event.stream_id, event.flow_controlled_length)
            else:
                handler.on_data(st, event.data, event.flow_controlled_length, False)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.state = transition(st.state, Event.RECV_END)
                handler.on_end(st)
                if st.state is State.CLOSED:
                    self.streams.pop(st.sid, None)
        elif isinstance(event, h2.events.StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None:
                st.state = State.CLOSED
                handler.on_reset(st, bool(event.remote_reset))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            handler.on_window()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        self.last_sid = max(self.last_sid, sid)
        if self.going_away or len(self.streams) >= self.max_streams or not self.handler.accept():
            self.count("stream_refused")
            self.conn.reset_stream(sid, H2Error.REFUSED_STREAM)
            return
        st = self.streams[sid] = H2Stream(sid, 0)
        st.state = State.OPEN
        headers = tuple((str(n), str(v)) for n, v in event.headers or ())
        size = sum(len(n) + len(v) + 32 for n, v in headers)
        if size > MAX_HEADER_LIST:
            self.handler.on_oversized(st, size)
            return
        try:
            head = request_head(headers, self.known_fields)
        except StreamError as exc:
            self.count("malformed_request")
            self.reset(st, exc.code)
            return
        self.handler.on_request(st, head)

    # ------------------------------------------------------------------ output

    def room(self, st: H2Stream) -> int:
        try:
            return min(self.conn.local_flow_control_window(st.sid), self.conn.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            return 0

    def _headers(self, block: bytes) -> list[tuple[str, str]]:
        headers = self._blocks.get(block)
        if headers is None:
            headers = [(str(n), str(v)) for n, v in self._decoder.decode(block)]
            if len(self._blocks) < MAX_BLOCKS:
                self._blocks[block] = headers
        return headers

    def send_headers(self, st: H2Stream, block: bytes, end: bool) -> None:
        if not answering(st.state):
            return
        st.state = transition(st.state, Event.SEND_END if end else Event.SEND_HEADERS)
        self.conn.send_headers(st.sid, self._headers(block), end_stream=end)
        self.handler.on_output()
        if end:
            self._ended(st)

    def send_data(self, st: H2Stream, data: bytes | memoryview) -> None:
        if answering(st.state):
            self.conn.send_data(st.sid, bytes(data))
            self.handler.on_output()

    def send_answer(self, st: H2Stream, head: bytes, body: bytes, tail: bytes) -> bool:
        if len(body) > self.room(st) or not answering(st.state):
            return False
        self.send_headers(st, head, False)
        self.send_data(st, body)
        self.send_headers(st, tail, True)
        return True

    def _ended(self, st: H2Stream) -> None:
        if st.state is State.HALF_CLOSED_LOCAL:
            self.conn.reset_stream(st.sid, H2Error.NO_ERROR)
            st.state = State.CLOSED
        self.streams.pop(st.sid, None)

    def reset(self, st: H2Stream, code: H2Error) -> None:
        if st.state is State.CLOSED:
            return
        st.state = State.CLOSED
        self.streams.pop(st.sid, None)
        try:
            self.conn.reset_stream(st.sid, code)
        except h2.exceptions.StreamClosedError:
            return
        self.handler.on_output()

    def stream_error(self, st: H2Stream, code: H2Error) -> None:
        self.reset(st, code)
        self.handler.on_reset(st, False)

    def credit(self, st: H2Stream, n: int) -> None:
        self.credit_sid(st.sid, n)

    def credit_sid(self, sid: int, n: int) -> None:
        if n:
            try:
                self.conn.acknowledge_received_data(n, sid)
            except h2.exceptions.StreamClosedError:
                return
            self.handler.on_output()

    def goaway(self, code: H2Error = H2Error.NO_ERROR, debug: bytes = b"") -> None:
        # the library's close_connection ends the connection at once; a graceful GOAWAY lets the
        # streams open finish, so it is written here
        if not self.going_away and not self.closed:
            self.going_away = True
            self._extra.append(wire.goaway(self.last_sid, code, debug))
            self.handler.on_output()

    def terminate(self, code: H2Error, message: str) -> None:
        if self.closed:
            return
        self.conn.close_connection(error_code=code, additional_data=message.encode()[:256])
        self.closed = True
        self.error = (code, message)
        self.handler.on_output()

    def data_to_send(self) -> bytes:
        out = bytes(self.conn.data_to_send())
        if self._extra:
            out += b"".join(self._extra)
            self._extra.clear()
        return out
