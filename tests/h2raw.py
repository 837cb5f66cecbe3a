"""Hand-written HTTP/2 frames for tests that must send what no well-behaved client sends."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4

Frames = list[tuple[int, int, int, bytes]]


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def read_frames(sock: socket.socket, until: Callable[[Frames], bool], timeout: float = 5.0) -> Frames:
    """Frames received until ``until(frames)`` holds, the peer closes, or ``timeout`` passes."""
    sock.settimeout(timeout)
    buf, frames = b"", []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big"), buf[9 : 9 + n]))
            buf = buf[9 + n :]
        if until(frames):
            break
    return frames


def request_headers(path: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    return hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(extra or []),
        ]
    )


def message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def goaway_code(frames: Frames) -> int | None:
    """The error code of the first GOAWAY among ``frames``."""
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def data_frames(sid: int, payload: bytes, end_stream: bool = True, size: int = 16_384) -> bytes:
    """``payload`` as DATA frames of at most ``size`` bytes (the default SETTINGS_MAX_FRAME_SIZE)."""
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    last = len(chunks) - 1
    return b"".join(
        frame(DATA, END_STREAM if end_stream and i == last else 0, sid, c) for i, c in enumerate(chunks)
    )
