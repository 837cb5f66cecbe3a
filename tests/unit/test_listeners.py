"""server/listeners.py: the protocol servers' limits and options as pure functions of the
settings, and the one-line error a failed bind becomes."""

from __future__ import annotations

import pytest

from turnout.server.grpc.http2 import H2Connection
from turnout.server.listeners import (
    StartError,
    bracket,
    grpcio_options,
    h2_engine,
    http_limits,
    listening,
    transport_limits,
)
from turnout.server.settings import Settings


def test_edge_limits_follow_the_settings() -> None:
    s = Settings(drift=False, idle_timeout_secs=0, request_timeout_secs=12.5, write_timeout_secs=7)
    grpc_limits = transport_limits(s, 123)
    assert grpc_limits.max_connections == 123
    assert grpc_limits.idle_timeout_s is None  # 0: no idle timeout
    assert grpc_limits.request_timeout_s == 12.5 and grpc_limits.write_timeout_s == 7
    limits = http_limits(s, 45)
    assert limits.max_connections == 45 and limits.request_timeout_s == 12.5
    assert limits.max_header_bytes == s.http_max_header_bytes and limits.max_headers == s.http_max_headers


def test_grpcio_options() -> None:
    s = Settings(drift=False, idle_timeout_secs=0, max_connection_age_secs=None, max_inflight=10)
    options = dict(grpcio_options(s))
    assert options["grpc.server.max_pending_requests"] == 10
    assert options["grpc.server.max_pending_requests_hard_limit"] == 20
    assert options["grpc.so_reuseport"] == 0
    assert "grpc.max_connection_idle_ms" not in options and "grpc.max_connection_age_ms" not in options
    s = Settings(drift=False, idle_timeout_secs=2, max_connection_age_secs=3, max_connection_age_grace_secs=1)
    options = dict(grpcio_options(s))
    assert options["grpc.max_connection_idle_ms"] == 2000
    assert (
        options["grpc.max_connection_age_ms"] == 3000 and options["grpc.max_connection_age_grace_ms"] == 1000
    )


def test_h2_engine_defaults_to_ours() -> None:
    assert h2_engine("turnout") is H2Connection


def test_a_failed_bind_is_one_line_naming_the_address() -> None:
    assert bracket("::1") == "[::1]" and bracket("[::1]") == "[::1]" and bracket("127.0.0.1") == "127.0.0.1"
    with pytest.raises(StartError, match=r"^cannot listen for HTTP on \[::1\]:80: Address already in use$"):
        with listening("HTTP", "::1", 80):
            raise OSError(98, "Address already in use")
    with pytest.raises(StartError, match=r"cannot listen for gRPC on 0\.0\.0\.0:1: no"):
        with listening("gRPC", "0.0.0.0", 1):
            raise RuntimeError("no")
