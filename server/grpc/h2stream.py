"""One HTTP/2 stream's protocol state, and the callbacks through which the sans-IO connection
(``http2.py``) tells its user what the peer did."""

from __future__ import annotations

from typing import Any, Protocol

from turnout.server.grpc.streams import IDLE, RequestHead

MAX_HEADER_LIST = 16 * 1024  # decoded request headers (RFC 9113 §6.5.2 sizes); beyond: on_oversized
STREAM_WINDOW = 1 << 20  # what we let a peer send per stream before it must wait for us
CONNECTION_WINDOW = 16 << 20
SENT_PER_CREDIT = 16_384  # answer bytes sent that earn the peer one control frame (WINDOW_UPDATE, PING)


class H2Stream:
    """One stream's protocol state. ``call`` is the handler's own object for it."""

    __slots__ = ("call", "recv_credit", "recv_window", "send_window", "sid", "state")

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.state = IDLE
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW  # what the peer may still send before our next WINDOW_UPDATE
        self.recv_credit = 0  # bytes received, not yet returned with WINDOW_UPDATE
        self.call: Any = None


class Handler(Protocol):
    def accept(self) -> bool:
        """May a new stream open now? (False: REFUSED_STREAM.)"""
        ...

    def on_request(self, st: H2Stream, head: RequestHead) -> None:
        """A valid request header block opened ``st``; its state says whether the request ended."""
        ...

    def on_oversized(self, st: H2Stream, size: int) -> None:
        """``st`` opened with request headers over ``MAX_HEADER_LIST`` decoded bytes."""
        ...

    def on_data(self, st: H2Stream, data: bytes, flow: int, end: bool) -> None:
        """Request bytes (padding stripped; ``flow`` counts it) for the handler to credit back."""
        ...

    def on_end(self, st: H2Stream) -> None:
        """Trailers ended the request on ``st``."""
        ...

    def on_reset(self, st: H2Stream, by_peer: bool) -> None:
        """``st`` is closed by RST_STREAM: the peer's, or ours for a stream error."""
        ...

    def on_window(self) -> None:
        """Send windows may have grown."""
        ...

    def on_output(self) -> None:
        """Bytes wait in ``data_to_send`` (called when the first of them is written)."""
        ...
