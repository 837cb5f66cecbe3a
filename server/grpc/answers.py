"""The sending half of a gRPC connection: answers (a unary answer in one write when the
windows allow, otherwise DATA as the peer opens its windows), trailers, and the output buffer
that leaves in one ``transport.write`` per loop iteration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from turnout.server.grpc import wire
from turnout.server.grpc.call import Call
from turnout.server.grpc.context import Context, Metadata
from turnout.server.grpc.h2stream import H2Stream
from turnout.server.grpc.http2 import H2Connection
from turnout.server.grpc.streams import answering
from turnout.server.grpc.wire import H2Error

_OK = grpc.StatusCode.OK
# an answer this large goes out in many frames anyway: its 5-byte prefix gets a DATA frame of its own
# rather than a copy of the whole message to sit in front of it
LARGE_MESSAGE = 64 * 1024


def _status(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class Answering:
    """What a connection needs to send; ``GrpcConnection`` sets these up and reads requests."""

    h2: H2Connection
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    kick: Callable[[], None]
    closed: bool
    write_paused: bool
    flush_scheduled: bool
    queued: int  # answer bytes waiting for the peer's window
    blocked_since: float | None  # answers waiting on the peer since then
    waiters: list[asyncio.Future[None]]  # senders waiting for window or for the socket

    def on_output(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def on_window(self) -> None:
        if self.waiters:
            self.blocked_since = None  # the peer made room: the write timeout starts again
            self._wake()

    def _send_unary(self, call: Call, payload: bytes, ctx: Context) -> Awaitable[None] | None:
        if not answering(call.h2.state) or self.closed:
            return None
        if len(payload) > LARGE_MESSAGE:  # many frames anyway: no copy to put the prefix in front
            return self._send_unary_slowly(call, payload, ctx, wire.message_prefix(len(payload)))
        msg = wire.length_prefixed(payload)
        head = (
            wire.RESPONSE_HEADERS + wire.metadata_fields(ctx.initial)
            if ctx.initial
            else wire.RESPONSE_HEADERS
        )
        tail = wire.trailers(0, "", ctx.trailing) if ctx.trailing else wire.OK_TRAILERS
        if call.headers_sent or self.write_paused or not self.h2.send_answer(call.h2, head, msg, tail):
            return self._send_unary_slowly(call, msg, ctx)
        call.headers_sent = True
        self._close_if_done()
        return None

    async def _send_unary_slowly(self, call: Call, msg: bytes, ctx: Context, prefix: bytes = b"") -> None:
        await self._send_data(call, msg, prefix)
        self._finish(call, _OK, "", ctx.trailing)

    async def _write_message(self, call: Call, message: Any) -> None:
        assert call.handler is not None
        serialize = call.handler.response_serializer
        payload = serialize(message) if serialize else message
        if len(payload) > LARGE_MESSAGE:
            await self._send_data(call, payload, wire.message_prefix(len(payload)))
        else:
            await self._send_data(call, wire.length_prefixed(payload))

    async def _send_data(self, call: Call, msg: bytes, prefix: bytes = b"") -> None:
        """``prefix`` then ``msg`` as DATA frames within the peer's windows, as views of ``msg``
        (copied once, into the socket's output)."""
        st = call.h2
        if not answering(st.state) or self.closed:
            raise asyncio.CancelledError
        self._send_headers(call)
        total = len(prefix) + len(msg)
        self.queued += total  # counted while it waits for the peer (see accept, sweep)
        try:
            for piece in (prefix, msg) if prefix else (msg,):
                view, pos, n = memoryview(piece), 0, len(piece)
                while pos < n:
                    if not answering(st.state) or self.closed:
                        raise asyncio.CancelledError
                    room = min(self.h2.room(st), n - pos)
                    if room <= 0 or self.write_paused:
                        await self._wait()
                        continue
                    self.h2.send_data(st, view[pos : pos + room] if room < n else piece)
                    pos += room
        finally:
            self.queued -= total

    def _send_headers(self, call: Call) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            ctx = call.ctx
            head = wire.RESPONSE_HEADERS
            if ctx is not None and ctx.initial:
                head += wire.metadata_fields(ctx.initial)
            self.h2.send_headers(call.h2, head, False)

    async def _wait(self) -> None:
        if self.blocked_since is None:
            self.blocked_since = self.loop.time()
        fut = self.loop.create_future()
        self.waiters.append(fut)
        await fut

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _finish(self, call: Call, code: grpc.StatusCode, message: str = "", metadata: Metadata = ()) -> None:
        """Trailers (or a trailers-only answer) and the end of the stream; nothing if the stream
        can no longer be answered."""
        if self.closed or not answering(call.h2.state):
            return
        block = wire.trailers(_status(code), message, metadata)
        if not call.headers_sent:
            block = wire.STATUS_200 + wire.CONTENT_TYPE_GRPC + block
        self.h2.send_headers(call.h2, block, True)
        self._close_if_done()

    def _answer_status(self, st: H2Stream, code: grpc.StatusCode, message: str) -> None:
        """A trailers-only answer on a stream that has no call running."""
        block = wire.STATUS_200 + wire.CONTENT_TYPE_GRPC + wire.trailers(_status(code), message, ())
        self.h2.send_headers(st, block, True)
        self._close_if_done()

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
            self.kick()  # the client's next request often follows its answer

    def _close_if_done(self) -> None:
        if self.h2.going_away and not self.h2.streams:
            self._close_now()

    def go_away(self, code: H2Error = H2Error.NO_ERROR) -> None:
        """Graceful close: no new streams; the connection closes once its calls are answered."""
        if self.h2.going_away or self.closed:
            return
        self.h2.goaway(code)
        if not self.h2.streams:
            self._close_now()

    def _close_now(self) -> None:
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
