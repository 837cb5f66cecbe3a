"""The servicer context of the asyncio gRPC transport.

It offers the part of ``grpc.aio.ServicerContext`` that handlers use — metadata, peer,
deadline, ``abort``, trailing metadata, status, and ``write`` for server streaming — so the
generated ``add_*Servicer_to_server`` functions and the grpc health and reflection servicers
run on either transport unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]


class Aborted(Exception):
    """Raised by :meth:`Context.abort`; the call ends with the status set on the context."""


class Context:
    __slots__ = (
        "_deadline",
        "_metadata",
        "_peer",
        "_write",
        "cancelled_",
        "code_",
        "details_",
        "done_",
        "initial",
        "trailing",
    )

    def __init__(
        self,
        metadata: Metadata,
        peer: str,
        deadline: float | None,
        write: Callable[[Any], Awaitable[None]],
    ) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline  # time.monotonic() based
        self._write = write
        self.code_: grpc.StatusCode | None = None
        self.details_ = ""
        self.trailing: Metadata = ()
        self.initial: Metadata = ()
        self.cancelled_ = False
        self.done_ = False

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def code(self) -> grpc.StatusCode | None:
        return self.code_

    def details(self) -> str:
        return self.details_

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing = tuple(metadata)

    def trailing_metadata(self) -> Metadata:
        return self.trailing

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self.initial = tuple(metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort needs an error status, not OK")
        self.code_, self.details_ = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise Aborted(details)

    async def write(self, message: Any) -> None:
        await self._write(message)

    def cancelled(self) -> bool:
        return self.cancelled_

    def done(self) -> bool:
        return self.done_
