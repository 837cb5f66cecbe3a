"""The timeouts of one gRPC connection (``TransportLimits``), enforced by the server's sweep about
once a second so that the request path never reads the clock for them: handshake, peers that
read nothing, maximum connection age with its grace, idle connections, and requests that stop
arriving."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from turnout.server.grpc.streams import receiving

if TYPE_CHECKING:
    from turnout.server.grpc.connection import GrpcConnection

log = logging.getLogger("turnout.grpc.h2")


def sweep(conn: GrpcConnection, now: float) -> None:
    """Enforce ``conn``'s timeouts (``TransportLimits``); the server calls this about once a second."""
    lim = conn.server.limits
    if conn.closed or conn.transport is None:
        return
    age = now - conn.opened_at
    if not conn.h2.preface_seen:
        if age > lim.handshake_timeout_s:
            drop(conn, "handshake_timeout", f"no connection preface within {lim.handshake_timeout_s:g} s")
        return
    if conn.blocked_since is not None and now - conn.blocked_since > lim.write_timeout_s:
        drop(conn, "write_timeout", f"the peer read nothing for {lim.write_timeout_s:g} s")
        return
    if lim.max_age_s is not None and age > lim.max_age_s:
        if not conn.h2.going_away:
            conn.server.count("max_age")
            conn.go_away()
        elif age > lim.max_age_s + lim.max_age_grace_s:
            conn.abort_calls()
            conn.loop.call_soon(conn._close_now)  # after the cancelled calls have answered
            return
    idle = lim.idle_timeout_s
    streams = conn.h2.streams
    if idle is not None and not streams and now - conn.last_rx > idle and not conn.h2.going_away:
        conn.server.count("idle_timeout")
        conn.go_away()
        return
    for st in list(streams.values()):
        call = st.call
        if call is None or call.handler is None or not receiving(st.state):
            continue
        if (call.queue is None and now - call.opened > lim.request_timeout_s) or (
            idle is not None and now - call.last_rx > idle
        ):
            conn.server.count("request_timeout")
            conn._expire(call)


def drop(conn: GrpcConnection, event: str, why: str) -> None:
    conn.server.count(event)
    log.info("closing gRPC connection from %s: %s", conn.peer, why)
    conn.closed = True
    conn._wake()
    if conn.transport is not None:
        conn.transport.abort()
