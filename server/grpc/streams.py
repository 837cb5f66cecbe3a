"""HTTP/2 stream states (RFC 9113 §5.1, as a server sees them) and request header validation
(§8.2-8.3). Pure functions over plain values: no I/O, no connection."""

from __future__ import annotations

import re
from enum import IntEnum
from typing import NamedTuple

from turnout.server.grpc.wire import H2Error


class State(IntEnum):
    IDLE = 0
    OPEN = 1
    HALF_CLOSED_REMOTE = 2  # the client has ended its request; we may still answer
    HALF_CLOSED_LOCAL = 3  # we have ended our answer; the client may still send
    CLOSED = 4


# The states again as module names, for the per-frame paths (an Enum class attribute is looked
# up through its metaclass, several times the cost of a global)
IDLE, OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, CLOSED = State


class Event(IntEnum):
    RECV_HEADERS = 0
    RECV_END = 1  # DATA or HEADERS (trailers) with END_STREAM
    RECV_DATA = 2
    RECV_RST = 3
    SEND_HEADERS = 4
    SEND_DATA = 5
    SEND_END = 6  # DATA or HEADERS (trailers) with END_STREAM
    SEND_RST = 7


class StreamError(Exception):
    """A frame the stream's state does not allow: reset the stream with ``code``."""

    def __init__(self, code: H2Error, message: str) -> None:
        super().__init__(message)
        self.code = code


_S, _E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (_S.IDLE, _E.RECV_HEADERS): _S.OPEN,
    **{(s, _E.RECV_DATA): s for s in (_S.OPEN, _S.HALF_CLOSED_LOCAL)},
    (_S.OPEN, _E.RECV_END): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_LOCAL, _E.RECV_END): _S.CLOSED,
    **{(s, e): s for s in (_S.OPEN, _S.HALF_CLOSED_REMOTE) for e in (_E.SEND_HEADERS, _E.SEND_DATA)},
    (_S.OPEN, _E.SEND_END): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_REMOTE, _E.SEND_END): _S.CLOSED,
    **{(s, e): _S.CLOSED for s in _S if s is not _S.CLOSED for e in (_E.RECV_RST, _E.SEND_RST)},
}


def transition(state: State, event: Event) -> State:
    """The state after ``event``; raises StreamError where RFC 9113 §5.1 does not allow it."""
    after = TRANSITIONS.get((state, event))
    if after is None:
        code = (
            H2Error.STREAM_CLOSED if state in (_S.HALF_CLOSED_REMOTE, _S.CLOSED) else H2Error.PROTOCOL_ERROR
        )
        raise StreamError(code, f"{event.name} in state {state.name}")
    return after


def receiving(state: State) -> bool:
    """May the client still send on a stream in this state?"""
    return state is OPEN or state is HALF_CLOSED_LOCAL


def answering(state: State) -> bool:
    """May we still send on a stream in this state?"""
    return state is OPEN or state is HALF_CLOSED_REMOTE


class RequestHead(NamedTuple):
    method: str
    scheme: str
    path: str
    authority: str
    fields: tuple[tuple[str, str], ...]  # the regular fields, in order


# connection-specific fields (RFC 9113 §8.2.2): never in HTTP/2
_CONNECTION_SPECIFIC = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)
_REQUEST_PSEUDO = frozenset((":method", ":scheme", ":path", ":authority"))
# §8.2.1: a name is a lowercase token; a value has no NUL, CR or LF and no leading or trailing blank
_BAD_NAME = re.compile(r"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(r"[\x00\r\n]|^[ \t]|[ \t]$")


def _check_field(name: str, value: str) -> None:
    if not name or _BAD_NAME.search(name):
        raise StreamError(H2Error.PROTOCOL_ERROR, f"malformed field name {name[:40]!r}")
    if _BAD_VALUE.search(value):
        raise StreamError(H2Error.PROTOCOL_ERROR, f"malformed value of field {name[:40]!r}")
    if name in _CONNECTION_SPECIFIC or (name == "te" and value != "trailers"):
        raise StreamError(H2Error.PROTOCOL_ERROR, f"connection-specific field {name!r}")


MAX_KNOWN_FIELDS = 256


def request_head(headers: tuple[tuple[str, str], ...], known: set[tuple[str, str]]) -> RequestHead:
    """Validate a request's header list (RFC 9113 §8.2-8.3): pseudo-header fields first, each
    known and once, :method, :scheme and :path present (no CONNECT), lowercase names, no
    connection-specific fields. Raises StreamError(PROTOCOL_ERROR) for a malformed request.

    ``known`` holds fields already found valid on this connection (a client repeats most of its
    fields on every call); it is added to, and emptied when it reaches ``MAX_KNOWN_FIELDS``."""
    pseudo: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    for field in headers:
        name = field[0]
        if name[:1] == ":":
            if fields:
                raise StreamError(H2Error.PROTOCOL_ERROR, "a pseudo-header field after a regular field")
            if name not in _REQUEST_PSEUDO or name in pseudo:
                raise StreamError(H2Error.PROTOCOL_ERROR, f"unknown or repeated pseudo-header {name[:40]!r}")
            pseudo[name] = field[1]
        else:
            if field not in known:
                _check_field(name, field[1])
                if len(known) >= MAX_KNOWN_FIELDS:
                    known.clear()
                known.add(field)
            fields.append(field)
    method, path = pseudo.get(":method", ""), pseudo.get(":path", "")
    if not method or not path or ":scheme" not in pseudo or method == "CONNECT":
        raise StreamError(H2Error.PROTOCOL_ERROR, "a request needs :method, :scheme and :path")
    return RequestHead(method, pseudo[":scheme"], path, pseudo.get(":authority", ""), tuple(fields))


def check_trailers(headers: tuple[tuple[str, str], ...]) -> None:
    """Trailers carry no pseudo-header fields (RFC 9113 §8.1)."""
    for name, value in headers:
        if name[:1] == ":":
            raise StreamError(H2Error.PROTOCOL_ERROR, "a pseudo-header field in trailers")
        _check_field(name, value)
