"""The sending half of the sans-IO HTTP/2 connection: headers, DATA within the flow-control
windows, answers in one write, resets, GOAWAY, and the output buffer ``data_to_send`` empties.
``H2Connection`` (``http2.py``) adds the receiving half."""

from __future__ import annotations

from turnout.server.grpc import wire
from turnout.server.grpc.h2stream import SENT_PER_CREDIT, STREAM_WINDOW, H2Stream, Handler
from turnout.server.grpc.limits import FloodBudget
from turnout.server.grpc.streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE,
    OPEN,
    Event,
    answering,
    receiving,
    transition,
)
from turnout.server.grpc.wire import END_HEADERS, H2Error


class H2Output:
    """What ``H2Connection`` sends; its attributes are set up by ``H2Connection.__init__``."""

    handler: Handler
    flood: FloodBudget
    streams: dict[int, H2Stream]
    last_sid: int
    send_window: int
    peer_max_frame: int
    out: list[bytes | memoryview]
    going_away: bool
    closed: bool
    error: tuple[H2Error, str] | None

    def room(self, st: H2Stream) -> int:
        """How many DATA bytes may go out on ``st`` now (windows and the peer's frame size)."""
        return min(self.send_window, st.send_window, self.peer_max_frame)

    def send_headers(self, st: H2Stream, block: bytes, end: bool) -> None:
        """A header block (response headers, or trailers when ``end``); nothing on a stream we
        may no longer answer."""
        if not answering(st.state):
            return
        st.state = transition(st.state, Event.SEND_END if end else Event.SEND_HEADERS)
        self._write(wire.header_frames(st.sid, block, end, self.peer_max_frame))
        if end:
            self._ended(st)

    def send_data(self, st: H2Stream, data: bytes | memoryview) -> None:
        """One DATA frame (the caller keeps it within ``room``). A view is not copied here: its
        bytes are copied once, when the output is joined for the socket."""
        if not answering(st.state):
            return
        n = len(data)
        self.send_window -= n
        st.send_window -= n
        self.flood.earn(n / SENT_PER_CREDIT)
        if isinstance(data, memoryview):
            self._write(wire.frame_header(wire.DATA, 0, st.sid, n))
            if not self.closed:
                self.out.append(data)
        else:
            self._write(wire.frame(wire.DATA, 0, st.sid, data))

    def send_answer(self, st: H2Stream, head: bytes, body: bytes, tail: bytes) -> bool:
        """Headers, one DATA frame and trailers in one write, if the windows allow all of
        ``body`` now (the common case for a unary answer); False otherwise, and nothing is sent."""
        n, max_frame, state = len(body), self.peer_max_frame, st.state
        if n > min(self.send_window, st.send_window, max_frame) or (
            state is not OPEN and state is not HALF_CLOSED_REMOTE  # not answering()
        ):
            return False
        self.send_window -= n
        st.send_window -= n
        flood = self.flood
        flood.level = min(flood.capacity, flood.level + n / SENT_PER_CREDIT)  # earn(), inline
        st.state = HALF_CLOSED_LOCAL if state is OPEN else CLOSED  # SEND_END
        sid = st.sid
        self._write(
            (
                wire.frame(wire.HEADERS, END_HEADERS, sid, head)
                if len(head) <= max_frame
                else wire.header_frames(sid, head, False, max_frame)
            )
            + wire.frame(wire.DATA, 0, sid, body)
            + wire.header_frames(sid, tail, True, max_frame)
        )
        self._ended(st)
        return True

    def _ended(self, st: H2Stream) -> None:
        """Our answer on ``st`` is complete. A client still sending is asked to stop without an
        error (RFC 9113 §8.1: RST_STREAM NO_ERROR)."""
        if st.state is HALF_CLOSED_LOCAL:
            self._write(wire.rst_stream(st.sid, H2Error.NO_ERROR))
            st.state = CLOSED
        self.streams.pop(st.sid, None)

    def reset(self, st: H2Stream, code: H2Error) -> None:
        """Close ``st`` with RST_STREAM ``code`` (the handler asked, or a stream error)."""
        if st.state is CLOSED:
            return
        st.state = transition(st.state, Event.SEND_RST)
        self.streams.pop(st.sid, None)
        self._write(wire.rst_stream(st.sid, code))

    def stream_error(self, st: H2Stream, code: H2Error) -> None:
        self.reset(st, code)
        self.handler.on_reset(st, False)

    def credit(self, st: H2Stream, n: int) -> None:
        """The handler has taken ``n`` of ``st``'s received bytes: the peer may send them again."""
        st.recv_credit += n
        if st.recv_credit >= STREAM_WINDOW // 2 and receiving(st.state):
            self._write(wire.window_update(st.sid, st.recv_credit))
            st.recv_window += st.recv_credit
            st.recv_credit = 0

    def goaway(self, code: H2Error = H2Error.NO_ERROR, debug: bytes = b"") -> None:
        """No new streams: GOAWAY naming the last one we took. Streams open may finish."""
        if not self.going_away and not self.closed:
            self.going_away = True
            self._write(wire.goaway(self.last_sid, code, debug))

    def terminate(self, code: H2Error, message: str) -> None:
        """A connection error: GOAWAY with ``code``; nothing more is read or written after it."""
        if self.closed:
            return
        self._write(wire.goaway(self.last_sid, code, message.encode()[:256]))
        self.closed = True
        self.error = (code, message)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            self.out.append(data)
            self.handler.on_output()
        else:
            self.out.append(data)

    def data_to_send(self) -> bytes:
        out, self.out = self.out, []
        if len(out) == 1 and isinstance(out[0], bytes):  # (a view always follows its frame header)
            return out[0]
        return b"".join(out)
