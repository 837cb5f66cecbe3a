"""The transport the HTTP protocol writes through: a response head is held until the first
body write and sent with it (one ``send`` per response), and while other requests are in
flight writes wait for the end of the loop step (server/http/protocol.py says why)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["JOIN_LIMIT", "HeadHoldingTransport"]

_HEAD = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"
# a body larger than this is written after the head rather than copied into one buffer
JOIN_LIMIT = 256 * 1024


class HeadHoldingTransport:
    """A transport proxy that sends a response head together with the first body write."""

    __slots__ = ("_busy", "_held", "_loop", "_pending", "_transport")

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, busy: Callable[[], bool]
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._busy = busy
        self._held: bytes | None = None
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            if not data:
                return
            self._held = None
            if len(data) <= JOIN_LIMIT:
                self.send(held + data)
            else:
                self.send(held)
                self.send(data)
        elif data.startswith(_HEAD) and not data.startswith(_INTERIM):
            self._held = bytes(data)
        else:
            self.send(data)

    def send(self, data: bytes) -> None:
        """Write now, or at the end of this loop step while other requests are in flight."""
        if not self._pending and not self._busy():
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if self._transport.is_closing():
            return
        for data in pending:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def release(self) -> None:
        """Send a head still held (a response whose body was empty)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self.send(held)

    def get_write_buffer_size(self) -> int:
        pending = len(self._held or b"") + sum(len(d) for d in self._pending)
        return self._transport.get_write_buffer_size() + pending

    def close(self) -> None:
        self.release()
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._pending = None, []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)
