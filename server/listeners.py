"""What the protocol servers are built from, as pure functions of the settings: each edge's
limits, grpcio's options, the HTTP/2 engine; and the one-line error a failed bind becomes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import cast

from turnout.server.grpc.http2 import H2Connection
from turnout.server.grpc.limits import TransportLimits
from turnout.server.http.protocol import HttpLimits
from turnout.server.settings import Settings

__all__ = [
    "StartError",
    "bracket",
    "grpcio_options",
    "h2_engine",
    "http_limits",
    "listening",
    "transport_limits",
]


def transport_limits(s: Settings, max_connections: int) -> TransportLimits:
    """The gRPC edge's limits (server/grpc/limits.py)."""
    return TransportLimits(
        max_streams=s.max_streams_per_connection,
        max_connections=max_connections,
        handshake_timeout_s=s.handshake_timeout_secs,
        request_timeout_s=s.request_timeout_secs,
        idle_timeout_s=s.idle_timeout_secs or None,
        max_age_s=s.max_connection_age_secs,
        max_age_grace_s=s.max_connection_age_grace_secs,
        write_timeout_s=s.write_timeout_secs,
        max_queued_bytes=s.max_queued_bytes,
    )


def http_limits(s: Settings, max_connections: int) -> HttpLimits:
    """The HTTP edge's limits (server/http/protocol.py)."""
    return HttpLimits(
        max_connections=max_connections,
        handshake_timeout_s=s.handshake_timeout_secs,
        header_timeout_s=s.header_timeout_secs,
        request_timeout_s=s.request_timeout_secs,
        write_timeout_s=s.write_timeout_secs,
        max_header_bytes=s.http_max_header_bytes,
        max_headers=s.http_max_headers,
    )


def grpcio_options(s: Settings) -> list[tuple[str, int]]:
    """grpcio's server options (``--grpc-transport grpcio``)."""
    limit = s.max_request_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1 if s.worker_id is not None else 0),
        # calls the core holds before Python takes them: beyond this they are refused at
        # once instead of queueing (the default, 1000, hides seconds of queueing)
        ("grpc.server.max_pending_requests", s.max_inflight),
        ("grpc.server.max_pending_requests_hard_limit", 2 * s.max_inflight),
        ("grpc.max_concurrent_streams", s.max_streams_per_connection),
        *([("grpc.max_connection_idle_ms", int(s.idle_timeout_secs * 1000))] if s.idle_timeout_secs else []),
        *(
            [
                ("grpc.max_connection_age_ms", int(s.max_connection_age_secs * 1000)),
                ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_secs * 1000)),
            ]
            if s.max_connection_age_secs
            else []
        ),
    ]


def h2_engine(name: str) -> Callable[..., H2Connection]:
    if name == "h2":  # the h2 library: installed with the dev extras, imported only when asked for
        from turnout.server.grpc.h2lib import H2LibConnection

        return cast(Callable[..., H2Connection], H2LibConnection)
    return H2Connection


class StartError(Exception):
    """The server cannot start for a reason the operator can fix; the message is one line."""


@contextlib.contextmanager
def listening(protocol: str, host: str, port: int) -> Generator[None, None, None]:
    """Turns a failure to bind ``host:port`` into a :class:`StartError` that names them.
    grpcio's server reports its bind failures as RuntimeError."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartError(f"cannot listen for {protocol} on {bracket(host)}:{port}: {reason}") from exc


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
