"""The asyncio gRPC transport: a gRPC server on the event loop, without grpcio's server.

grpcio's asyncio server spends several times more CPU per unary call (its C core, a
completion-queue thread and the hand-over to the loop) than parsing HTTP/2 frames on the loop
itself, because a gRPC call's frames follow one pattern (benchmarks/results/NOTES.md).
This server keeps grpc.aio's registration interface (``add_generic_rpc_handlers``,
``add_registered_method_handlers``), so generated ``add_*Servicer_to_server`` functions, and
the grpc health and reflection servicers, register on it unchanged. ``--grpc-transport grpcio``
selects grpcio's server instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import grpc

from turnout.server.busy_poll import BusyPoll
from turnout.server.grpc.connection import GrpcConnection
from turnout.server.grpc.http2 import H2Connection
from turnout.server.grpc.limits import ResetBudget, TransportLimits
from turnout.server.observe.logs import RateLimitedLog

log = logging.getLogger("turnout.grpc")


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class AsyncioGrpcServer:
    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_calls: int,
        limits: TransportLimits | None = None,
        limited: Collection[str] | None = None,
        max_frame: int = 16_384,
        reuse_port: bool = False,
        busy_poll: BusyPoll | None = None,
        sweep_interval_s: float = 1.0,
        on_event: Callable[[str], None] | None = None,
        h2_engine: Callable[..., H2Connection] = H2Connection,
    ) -> None:
        """``limited``: the method paths whose calls need one of ``max_calls`` slots (None: all);
        health, metadata and control calls left out never wait behind inference."""
        self.loop = asyncio.get_running_loop()
        self.max_message_bytes = max_message_bytes
        self.max_calls = max_calls
        self.limits = limits or TransportLimits()
        self.limited = frozenset(limited) if limited is not None else None
        self.max_frame = max_frame  # largest frame we accept (SETTINGS_MAX_FRAME_SIZE default)
        self.reuse_port = reuse_port
        self.busy_poll = busy_poll or BusyPoll(0.0)
        self.sweep_interval_s = sweep_interval_s
        self.active_calls = 0  # calls holding a slot
        self.calls = 0  # every call with a handler, slot or not
        self.resets = ResetBudget()
        self.handler_errors = RateLimitedLog(log)  # a handler that raised past its own error answer
        self.events: Counter[str] = Counter()  # defences that fired, by name
        self._on_event = on_event
        self.h2_engine = h2_engine  # the HTTP/2 core each connection drives
        self._sweeper: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None  # set when the last call ends, while stopping
        self.connections: set[GrpcConnection] = set()
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._servers: list[asyncio.AbstractServer] = []

    # ------------------------------------------------------------------ grpc.aio's registration API

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for method, handler in handlers.items():
            self._registered[f"/{service}/{method}"] = handler

    def is_limited(self, path: str) -> bool:
        """Does a call of this method need one of the ``max_calls`` slots?"""
        return self.limited is None or path in self.limited

    def admit(self) -> bool:
        """Take a call slot; False when all ``max_calls`` are taken."""
        if self.active_calls >= self.max_calls:
            return False
        self.active_calls += 1
        return True

    def release(self, admitted: bool) -> None:
        """One call ended (answered, reset or failed); ``admitted``: it held a slot."""
        self.calls -= 1
        if admitted:
            self.active_calls -= 1
        if not self.calls and self._idle is not None:
            self._idle.set()

    def lookup(self, path: str) -> grpc.RpcMethodHandler | None:
        handler = self._registered.get(path)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_CallDetails(path))
                if handler is not None:
                    self._registered[path] = handler  # generic handlers answer a path the same way
                    break
        return handler

    # ------------------------------------------------------------------ sockets and lifetime

    def add_port(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        self._sockets.append((sock, tls))
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        for sock, tls in self._sockets:
            server = await self.loop.create_server(
                lambda: GrpcConnection(self),
                sock=sock,
                ssl=tls,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if tls is not None else None,
            )
            self._servers.append(server)
        self._sweeper = self.loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            now = self.loop.time()
            for conn in list(self.connections):
                try:
                    conn.sweep(now)
                except Exception:  # one connection's trouble must not stop the timeouts of all
                    log.exception("gRPC connection sweep failed for %s", conn.peer)

    def count(self, event: str) -> None:
        self.events[event] += 1
        if self._on_event is not None:
            self._on_event(event)

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections, send GOAWAY, let calls in flight finish for ``grace``
        seconds, then cancel what remains and close every connection."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.connections):
            conn.go_away()
        if self.calls:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace or 0.0)
            except TimeoutError:
                log.warning("%d gRPC calls still running after %.1f s; cancelling them", self.calls, grace)
        tasks = [task for conn in list(self.connections) for task in conn.abort_calls()]
        if tasks:  # let cancelled calls send their status
            await asyncio.wait(tasks, timeout=1.0)
        for conn in list(self.connections):
            conn._close_now()
        await asyncio.sleep(0.1)  # closing flushes; a peer that stopped reading is cut off
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
