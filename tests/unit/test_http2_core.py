"""The sans-IO HTTP/2 server core (server/grpc/http2.py) and its stream state machine and header
validation (server/grpc/streams.py), driven with bytes and no sockets; a hypothesis fuzzer
feeds it arbitrary frame sequences."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.h2raw import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    message,
    request_headers,
)
from turnout.server.grpc.h2stream import MAX_HEADER_LIST, H2Stream
from turnout.server.grpc.http2 import H2Connection
from turnout.server.grpc.streams import (
    TRANSITIONS,
    Event,
    RequestHead,
    State,
    StreamError,
    check_trailers,
    request_head,
    transition,
)
from turnout.server.grpc.wire import H2Error

PATH = "/t.T/Echo"


class Recorder:
    """A handler that records what the core reports and can answer at once."""

    def __init__(self, answer: str = "", accept: bool = True) -> None:
        self.events: list[tuple[str, int]] = []
        self.answer = answer  # "on request", "at the end" (of the request) or "" (never)
        self.accepting = accept
        self.core: H2Connection | None = None

    def accept(self) -> bool:
        return self.accepting

    def on_request(self, st: H2Stream, head: RequestHead) -> None:
        self.events.append(("request", st.sid))
        if self.answer == "on request":
            self.reply(st)

    def reply(self, st: H2Stream) -> None:
        assert self.core is not None
        self.core.send_answer(st, b"\x88", b"ok", b"\x40\x0bgrpc-status\x010")

    def on_oversized(self, st: H2Stream, size: int) -> None:
        self.events.append(("oversized", st.sid))

    def on_data(self, st: H2Stream, data: bytes, flow: int, end: bool) -> None:
        self.events.append(("end" if end else "data", st.sid))
        assert self.core is not None
        self.core.credit(st, flow)
        if end and self.answer == "at the end":
            self.reply(st)

    def on_end(self, st: H2Stream) -> None:
        self.events.append(("trailers", st.sid))

    def on_reset(self, st: H2Stream, by_peer: bool) -> None:
        self.events.append(("reset" if by_peer else "stream_error", st.sid))

    def on_window(self) -> None:
        pass

    def on_output(self) -> None:
        pass


def connect(max_streams: int = 100, answer: str = "") -> tuple[H2Connection, Recorder]:
    rec = Recorder(answer)
    core = H2Connection(rec, max_streams=max_streams)
    rec.core = core
    core.initiate()
    core.receive(PREFACE + frame(SETTINGS, 0, 0, b""), 0.0)
    core.data_to_send()
    return core, rec


def frames(out: bytes) -> list[tuple[int, int, int, bytes]]:
    found, pos = [], 0
    while pos + 9 <= len(out):
        n = int.from_bytes(out[pos : pos + 3], "big")
        found.append(
            (
                out[pos + 3],
                out[pos + 4],
                int.from_bytes(out[pos + 5 : pos + 9], "big"),
                out[pos + 9 : pos + 9 + n],
            )
        )
        pos += 9 + n
    return found


def rst(sid: int, code: H2Error) -> tuple[int, int, int, bytes]:
    return (RST_STREAM, 0, sid, int(code).to_bytes(4, "big"))


# ---------------------------------------------------------------- the state machine (RFC 9113 §5.1)


def test_a_unary_exchange_walks_the_states() -> None:
    s = transition(State.IDLE, Event.RECV_HEADERS)
    assert s is State.OPEN
    s = transition(s, Event.RECV_DATA)
    s = transition(s, Event.RECV_END)
    assert s is State.HALF_CLOSED_REMOTE
    s = transition(transition(s, Event.SEND_HEADERS), Event.SEND_DATA)
    assert transition(s, Event.SEND_END) is State.CLOSED


@pytest.mark.parametrize(
    ("state", "event", "code"),
    [
        (State.HALF_CLOSED_REMOTE, Event.RECV_DATA, H2Error.STREAM_CLOSED),
        (State.HALF_CLOSED_REMOTE, Event.RECV_END, H2Error.STREAM_CLOSED),
        (State.CLOSED, Event.RECV_DATA, H2Error.STREAM_CLOSED),
        (State.OPEN, Event.RECV_HEADERS, H2Error.PROTOCOL_ERROR),
        (State.IDLE, Event.RECV_DATA, H2Error.PROTOCOL_ERROR),
        (State.HALF_CLOSED_LOCAL, Event.SEND_DATA, H2Error.PROTOCOL_ERROR),
    ],
)
def test_frames_a_state_does_not_allow_are_stream_errors(state: State, event: Event, code: H2Error) -> None:
    with pytest.raises(StreamError) as e:
        transition(state, event)
    assert e.value.code == code


def test_every_state_can_be_reset_and_closed_is_final() -> None:
    for s in State:
        if s is not State.CLOSED:
            assert transition(s, Event.RECV_RST) is State.CLOSED
    assert not [key for key in TRANSITIONS if key[0] is State.CLOSED]


# ---------------------------------------------------------------- header validation (§8.2-8.3)

GOOD = ((":method", "POST"), (":scheme", "http"), (":path", PATH), ("content-type", "application/grpc"))


def test_a_valid_request_head() -> None:
    head = request_head(GOOD, set())
    assert (head.method, head.path, head.fields) == ("POST", PATH, (("content-type", "application/grpc"),))


@pytest.mark.parametrize(
    "headers",
    [
        (*GOOD, ("Content-Length", "1")),  # uppercase name
        (*GOOD, ("connection", "close")),
        (*GOOD, ("te", "gzip")),
        (*GOOD, ("x-a", "line\r\nbreak")),
        (*GOOD, ("x-a", " padded")),
        (*GOOD, (":authority", "late")),  # pseudo after regular
        ((":method", "POST"), (":scheme", "http"), (":status", "200"), (":path", PATH)),
        ((":method", "POST"), (":method", "GET"), (":scheme", "http"), (":path", PATH)),
        ((":method", "POST"), (":scheme", "http")),  # no :path
        ((":method", "CONNECT"), (":scheme", "http"), (":path", PATH)),
    ],
    ids=[
        "uppercase",
        "connection",
        "te",
        "crlf",
        "blank",
        "late-pseudo",
        "status",
        "twice",
        "no-path",
        "connect",
    ],
)
def test_malformed_requests_are_refused(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(StreamError) as e:
        request_head(headers, set())
    assert e.value.code == H2Error.PROTOCOL_ERROR


def test_trailers_carry_no_pseudo_headers() -> None:
    check_trailers((("x-checksum", "1"),))
    with pytest.raises(StreamError):
        check_trailers(((":path", "/"),))


def test_known_fields_are_bounded() -> None:
    known: set[tuple[str, str]] = set()
    for i in range(1000):
        request_head((*GOOD, (f"x-{i}", "v")), known)
    assert len(known) <= 256


# ---------------------------------------------------------------- the core, fed with bytes


def test_a_unary_call_is_reported_and_answered_in_one_write() -> None:
    core, rec = connect(answer="at the end")
    core.receive(
        frame(HEADERS, END_HEADERS, 1, request_headers(PATH)) + frame(DATA, END_STREAM, 1, message(b"hi")),
        1.0,
    )
    assert rec.events == [("request", 1), ("end", 1)]
    kinds = [(k, f & END_STREAM) for k, f, sid, _ in frames(core.data_to_send()) if sid == 1]
    assert kinds == [(HEADERS, 0), (DATA, 0), (HEADERS, END_STREAM)]
    assert not core.streams


def test_an_answer_before_the_request_ends_stops_the_client_without_error() -> None:
    core, rec = connect(answer="on request")
    core.receive(frame(HEADERS, END_HEADERS, 1, request_headers(PATH)), 1.0)
    assert rst(1, H2Error.NO_ERROR) in frames(core.data_to_send())
    core.receive(frame(DATA, END_STREAM, 1, b"late"), 1.0)  # in flight: dropped, no error
    assert rec.events == [("request", 1)] and not core.closed


def test_streams_beyond_the_limit_or_refused_by_the_handler_are_refused() -> None:
    core, rec = connect(max_streams=2)
    block = request_headers(PATH)
    core.receive(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in (1, 3, 5)), 1.0)
    assert rst(5, H2Error.REFUSED_STREAM) in frames(core.data_to_send())
    assert sorted(core.streams) == [1, 3]
    rec.accepting = False
    core.receive(frame(HEADERS, END_HEADERS, 7, block), 1.0)
    assert rst(7, H2Error.REFUSED_STREAM) in frames(core.data_to_send())


def test_data_after_the_end_of_a_request_is_a_stream_error() -> None:
    core, rec = connect()
    core.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_headers(PATH)), 1.0)
    core.receive(frame(DATA, 0, 1, b"x"), 1.0)
    assert rst(1, H2Error.STREAM_CLOSED) in frames(core.data_to_send())
    assert rec.events == [("request", 1), ("stream_error", 1)] and not core.closed


def test_a_malformed_request_resets_only_its_stream() -> None:
    core, rec = connect()
    bad = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", PATH), ("connection", "x")]
    )
    core.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, bad), 1.0)
    assert rst(1, H2Error.PROTOCOL_ERROR) in frames(core.data_to_send())
    assert rec.events == [] and not core.closed


def test_oversized_headers_reach_the_handler_as_such() -> None:
    core, rec = connect()
    big = request_headers(PATH, [("x-big", "v" * (MAX_HEADER_LIST + 1))])
    core.receive(frame(HEADERS, 0, 1, big[:10_000]) + frame(CONTINUATION, END_HEADERS, 1, big[10_000:]), 1.0)
    assert rec.events == [("oversized", 1)]


def test_trailers_end_a_request_and_the_peer_can_reset() -> None:
    core, rec = connect()
    core.receive(frame(HEADERS, END_HEADERS, 1, request_headers(PATH)), 1.0)
    core.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack.Encoder().encode([("x-t", "1")])), 1.0)
    core.receive(
        frame(HEADERS, END_HEADERS, 3, request_headers(PATH)) + frame(RST_STREAM, 0, 3, b"\x00\x00\x00\x08"),
        1.0,
    )
    assert rec.events == [("request", 1), ("trailers", 1), ("request", 3), ("reset", 3)]
    assert core.streams[1].state is State.HALF_CLOSED_REMOTE and 3 not in core.streams


def test_flow_control_overruns() -> None:
    core, _ = connect()
    core.receive(frame(HEADERS, END_HEADERS, 1, request_headers(PATH)), 1.0)
    for _ in range(64):  # 64 x 16 KiB = 1 MiB, the stream window: still fine
        core.receive(frame(DATA, 0, 1, b"x" * 16_384), 1.0)
    assert not [f for f in frames(core.data_to_send()) if f[0] == RST_STREAM]
    core, _ = connect()
    core.receive(frame(HEADERS, END_HEADERS, 1, request_headers(PATH)), 1.0)
    core.streams[1].recv_window = 10
    core.receive(frame(DATA, 0, 1, b"x" * 11), 1.0)
    assert rst(1, H2Error.FLOW_CONTROL_ERROR) in frames(core.data_to_send())


def test_ping_is_answered_until_the_flood_budget_runs_out() -> None:
    core, _ = connect()
    core.receive(frame(PING, 0, 0, b"12345678"), 1.0)
    assert (PING, 1, 0, b"12345678") in frames(core.data_to_send())
    core.receive(frame(PING, 0, 0, b"12345678") * 2000, 1.0)
    out = frames(core.data_to_send())
    goaway = [p for k, _, _, p in out if k == GOAWAY]
    assert core.closed and goaway and int.from_bytes(goaway[0][4:8], "big") == H2Error.ENHANCE_YOUR_CALM
    core.receive(frame(PING, 0, 0, b"12345678"), 2.0)  # nothing is read after a connection error
    assert core.data_to_send() == b""


@pytest.mark.parametrize(
    ("junk", "code"),
    [
        (frame(DATA, 0, 0, b"x"), H2Error.PROTOCOL_ERROR),
        (frame(HEADERS, END_HEADERS, 2, b"\x82"), H2Error.PROTOCOL_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), H2Error.FLOW_CONTROL_ERROR),
        (frame(SETTINGS, 0, 1, b""), H2Error.PROTOCOL_ERROR),
        (frame(PRIORITY, 0, 0, b"\x00" * 5), H2Error.PROTOCOL_ERROR),
        (frame(HEADERS, 0, 1, b"\x82") + frame(PING, 0, 0, b"12345678"), H2Error.PROTOCOL_ERROR),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00\x01", H2Error.FRAME_SIZE_ERROR),
    ],
    ids=["data-0", "even", "zero-window", "settings-stream", "priority-0", "interrupted", "too-large"],
)
def test_connection_errors_say_why_in_goaway(junk: bytes, code: H2Error) -> None:
    core, _ = connect()
    core.receive(junk, 1.0)
    assert core.closed and core.error is not None and core.error[0] == code
    assert [int.from_bytes(p[4:8], "big") for k, _, _, p in frames(core.data_to_send()) if k == GOAWAY] == [
        code
    ]


# ---------------------------------------------------------------- fuzzing

_BLOCKS = [request_headers(PATH), request_headers(PATH, [("x-a", "b")]), b"\x82\x86\x84", b"\xff\xff", b""]
_frame = st.builds(
    lambda kind, flags, sid, payload: frame(kind, flags, sid, payload),
    st.sampled_from(
        [DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION, 0x20]
    ),
    st.sampled_from([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS, 0x8, 0x20, 0xFF]),
    st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    st.one_of(
        st.sampled_from(_BLOCKS),
        st.binary(max_size=40),
        st.sampled_from([b"\x00" * 4, b"\x00\x00\x00\x01", b"\x00" * 8]),
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_frame, max_size=40),
    st.sampled_from(["", "on request", "at the end"]),
    st.integers(min_value=1, max_value=7),
)
def test_arbitrary_frame_sequences_end_in_a_defined_state(
    chunks: list[bytes], answer: str, split: int
) -> None:
    core, _ = connect(max_streams=3, answer=answer)
    data = b"".join(chunks)
    for i in range(0, len(data), split * 7):  # arbitrary read boundaries
        core.receive(data[i : i + split * 7], 1.0)
    core.data_to_send()
    assert len(core.streams) <= 3
    assert len(core.buf) < 9 + core.max_frame
    for sid, stream in core.streams.items():
        assert stream.sid == sid and stream.state in (State.OPEN, State.HALF_CLOSED_REMOTE)
        assert stream.recv_window >= 0
    if core.closed:
        assert core.error is not None
        core.receive(frame(PING, 0, 0, b"12345678"), 2.0)
        assert core.data_to_send() == b""


def test_the_spelt_out_hot_path_states_are_the_tables() -> None:
    """http2.py assigns these directly on every request; they must be what TRANSITIONS says."""
    assert transition(State.IDLE, Event.RECV_HEADERS) is State.OPEN
    assert transition(State.OPEN, Event.RECV_END) is State.HALF_CLOSED_REMOTE
    assert transition(State.HALF_CLOSED_LOCAL, Event.RECV_END) is State.CLOSED
    assert transition(State.OPEN, Event.SEND_END) is State.HALF_CLOSED_LOCAL
    assert transition(State.HALF_CLOSED_REMOTE, Event.SEND_END) is State.CLOSED
