"""One gRPC call's state on its stream: the handler, the request as it arrives, the task
that runs it, its deadline and what has been answered."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from turnout.server.grpc.context import Context, Metadata
from turnout.server.grpc.h2stream import H2Stream
from turnout.server.grpc.messages import MessageReader


class Call:
    """A gRPC call on one stream: its handler, request bytes, task and timers."""

    __slots__ = (
        "admitted",
        "blocks",
        "body",
        "ctx",
        "deadline",
        "encoding",
        "expired",
        "h2",
        "handler",
        "headers_sent",
        "last_rx",
        "metadata",
        "opened",
        "path",
        "queue",
        "reader",
        "received",
        "task",
        "timer",
    )

    def __init__(self, h2: H2Stream, path: str, now: float) -> None:
        self.h2 = h2
        self.path = path
        self.opened = self.last_rx = now
        self.handler: grpc.RpcMethodHandler | None = None  # None once the call has ended
        self.admitted = False  # holds one of the server's call slots
        self.metadata: Metadata = ()
        self.encoding = ""
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        # a unary request's bytes: the first DATA payload as it came, then a growing buffer (a
        # list of tiny frames would cost ~50 bytes of overhead per byte received); each buffer
        # that reaches BODY_BLOCK moves to ``blocks``, so that a large message is copied once more
        # (joined at its end), not at every growth of one buffer
        self.body: bytes | bytearray = b""
        self.blocks: list[bytes | bytearray] = []
        self.reader: MessageReader | None = None  # streaming requests: their messages
        self.received = 0
        self.queue: asyncio.Queue[Any] | None = None
        self.headers_sent = False
        self.expired = False
        self.task: asyncio.Task[None] | None = None
        self.ctx: Context | None = None
