"""Abusive clients for the soak (:mod:`benchmarks.soak`): the attacks of
``tests/integration/test_hostile.py``, each in a loop that reconnects after the server closes it.

Abusers (name: what one connection does):

* ``http_no_body``: an inference request's headers with ``Content-Length: 1000`` and no body
  (expects 408 at the request timeout, then a close);
* ``slowloris``: a request line, then one header byte a second, never finishing (408 at the
  header timeout);
* ``grpc_no_data``: 100 ``ModelInfer`` streams that send HEADERS and never DATA (each answered
  ``DEADLINE_EXCEEDED`` at the request timeout; we close once all are answered);
* ``ping_flood`` / ``settings_flood``: PING or SETTINGS frames in batches of 500 until GOAWAY;
* ``rapid_reset``: HEADERS + RST_STREAM pairs in batches of 500 until GOAWAY;
* ``silent_http`` / ``silent_grpc``: connect and send nothing (closed at the handshake timeout).

Bounds: loopback targets only; at most ``--max-sockets`` sockets open at once (shared by all);
a connection the server has not closed after ``--hold`` seconds is closed by us; a pause of
``--pause`` seconds between rounds; the whole run ends after ``--duration`` seconds or on
SIGTERM/SIGINT, and prints one JSON line: per abuser, rounds, connections, how they ended
(closed by the server, closed by us after ``--hold``, cut at the end of the run, connect failures) and what the
server answered.

Example: python -m benchmarks.abuse --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import check_loopback
from tests.h2raw import (
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    frame,
    request_headers,
)

INFER = "/inference.GRPCInferenceService/ModelInfer"
H2_ERRORS = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x7: "REFUSED_STREAM",
    0xB: "ENHANCE_YOUR_CALM",
}
Frames = list[tuple[int, int, int, bytes]]
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
# how many connections each abuser keeps open at once: 40 + 20 + 2 + 1 + 1 + 1 + 40 + 40 = 145
WIDTH = {
    "http_no_body": 40,
    "slowloris": 20,
    "grpc_no_data": 2,
    "ping_flood": 1,
    "settings_flood": 1,
    "rapid_reset": 1,
    "silent_http": 40,
    "silent_grpc": 40,
}


class ServerClosed(Exception):
    """The server closed or reset the connection."""


@dataclass
class Tally:
    rounds: int = 0
    connections: int = 0
    closed_by_server: int = 0
    closed_by_us: int = 0  # still open after --hold seconds, or (grpc_no_data) every stream answered
    cut_at_end: int = 0
    connect_failed: int = 0
    answers: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "answers": dict(self.answers)}


class FrameReader:
    """HTTP/2 frames from an asyncio stream, as ``tests.h2raw.read_frames`` reads them from a socket."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.buf = b""
        self.frames: Frames = []

    async def until(self, done: Callable[[Frames], bool], within: float) -> bool:
        """Read until ``done(frames)``; False on timeout; raises ServerClosed when the peer closes."""
        deadline = time.monotonic() + within
        while not done(self.frames):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return False
            except ConnectionError:
                raise ServerClosed from None
            if not chunk:
                raise ServerClosed
            self.buf += chunk
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
                n = int.from_bytes(self.buf[:3], "big")
                b = self.buf
                self.frames.append((b[3], b[4], int.from_bytes(b[5:9], "big"), b[9 : 9 + n]))
                self.buf = b[9 + n :]
        return True


def goaway(frames: Frames) -> str | None:
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            return H2_ERRORS.get(code, hex(code))
    return None


async def wait_closed(reader: Reader, within: float) -> bool:
    """Discard what the server sends until it closes (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            if not await asyncio.wait_for(reader.read(65536), left):
                return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
    return False


async def send(writer: Writer, data: bytes) -> None:
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        raise ServerClosed from None


def status_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("latin-1")[:40] if data else "nothing"


class Abuse:
    def __init__(self, http: str, grpc: str, max_sockets: int, hold: float, pause: float) -> None:
        for target in (http, grpc):
            check_loopback(target)
        host, port = http.rsplit(":", 1)
        self.http = (host, int(port))
        host, port = grpc.rsplit(":", 1)
        self.grpc = (host, int(port))
        self.sockets = asyncio.Semaphore(max_sockets)
        self.hold = hold
        self.pause = pause
        self.tallies = {name: Tally() for name in WIDTH}

    # -------------------------------------------------------------- one connection, one abuser

    async def session(
        self, name: str, addr: tuple[str, int], play: Callable[[Reader, Writer], Awaitable[bool]]
    ) -> None:
        """Connect and play the attack: ``play`` returns True once the server has closed the
        connection, False when we should close it; after ``--hold`` seconds we close it anyway."""
        t = self.tallies[name]
        async with self.sockets:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), 5)
            except (OSError, TimeoutError):
                t.connect_failed += 1
                await asyncio.sleep(1)
                return
            t.connections += 1
            try:
                try:
                    async with asyncio.timeout(self.hold):
                        closed = await play(reader, writer)
                except (ServerClosed, ConnectionError):
                    closed = True
                except TimeoutError:
                    closed = False
                if closed:
                    t.closed_by_server += 1
                else:
                    t.closed_by_us += 1
            except asyncio.CancelledError:
                t.cut_at_end += 1
                raise
            finally:
                writer.close()

    async def abuser(self, name: str) -> None:
        addr, play = self.plays()[name]
        t = self.tallies[name]
        while True:
            await asyncio.gather(*(self.session(name, addr, play) for _ in range(WIDTH[name])))
            t.rounds += 1
            await asyncio.sleep(self.pause)

    def plays(self) -> dict[str, tuple[tuple[str, int], Callable[[Reader, Writer], Awaitable[bool]]]]:
        return {
            "http_no_body": (self.http, self.http_no_body),
            "slowloris": (self.http, self.slowloris),
            "grpc_no_data": (self.grpc, self.grpc_no_data),
            "ping_flood": (self.grpc, self.flood(frame(PING, 0, 0, b"12345678"), "ping_flood")),
            "settings_flood": (self.grpc, self.flood(frame(SETTINGS, 0, 0, b""), "settings_flood")),
            "rapid_reset": (self.grpc, self.rapid_reset),
            "silent_http": (self.http, self.silent),
            "silent_grpc": (self.grpc, self.silent),
        }

    # -------------------------------------------------------------- the attacks

    async def silent(self, reader: Reader, writer: Writer) -> bool:
        return await wait_closed(reader, self.hold)

    async def http_no_body(self, reader: Reader, writer: Writer) -> bool:
        await send(writer, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        return await self._answer_then_close("http_no_body", reader)

    async def slowloris(self, reader: Reader, writer: Writer) -> bool:
        await send(writer, b"POST /v2/models/mlp/infer HTTP/1.1\r\n")
        while True:  # one header byte a second until the server answers (bounded by --hold)
            with contextlib.suppress(ServerClosed):
                await send(writer, b"X")
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(4096), 1.0)
                self.tallies["slowloris"].answers[status_line(data)] += 1
                return not data or await wait_closed(reader, self.hold)

    async def _answer_then_close(self, name: str, reader: Reader) -> bool:
        try:
            data = await reader.read(4096)
        except ConnectionError:
            data = b""
        self.tallies[name].answers[status_line(data)] += 1
        return not data or await wait_closed(reader, self.hold)

    async def grpc_no_data(self, reader: Reader, writer: Writer) -> bool:
        block = request_headers(INFER)
        streams = range(1, 200, 2)  # 100 streams, the default per-connection limit
        await send(
            writer,
            PREFACE
            + frame(SETTINGS, 0, 0, b"")
            + b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in streams),
        )
        fr = FrameReader(reader)

        def settled(fs: Frames) -> bool:
            ended = {
                sid
                for kind, flags, sid, _ in fs
                if (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM
            }
            return len(ended) >= len(streams) or goaway(fs) is not None

        await fr.until(settled, self.hold)
        answers = self.tallies["grpc_no_data"].answers
        answers["stream ended (trailers)"] += sum(
            1 for kind, flags, _, _ in fr.frames if kind == HEADERS and flags & END_STREAM
        )
        for kind, _, _, payload in fr.frames:
            if kind == RST_STREAM:
                answers[f"RST_STREAM {H2_ERRORS.get(int.from_bytes(payload[:4], 'big'), 'other')}"] += 1
        if code := goaway(fr.frames):
            answers[f"GOAWAY {code}"] += 1
        return False  # every stream answered: the attack is over, we close

    def flood(self, one: bytes, name: str) -> Callable[[Reader, Writer], Awaitable[bool]]:
        async def play(reader: Reader, writer: Writer) -> bool:
            await send(writer, PREFACE + frame(SETTINGS, 0, 0, b""))
            return await self._until_goaway(name, reader, writer, lambda i: one * 500)

        return play

    async def rapid_reset(self, reader: Reader, writer: Writer) -> bool:
        block = request_headers(INFER)
        cancel = (8).to_bytes(4, "big")  # CANCEL

        def batch(i: int) -> bytes:
            sids = range(1 + 1000 * i, 1000 * (i + 1), 2)  # 500 streams, ids never reused
            return b"".join(
                frame(HEADERS, END_HEADERS, sid, block) + frame(RST_STREAM, 0, sid, cancel) for sid in sids
            )

        await send(writer, PREFACE + frame(SETTINGS, 0, 0, b""))
        return await self._until_goaway("rapid_reset", reader, writer, batch)

    async def _until_goaway(
        self, name: str, reader: Reader, writer: Writer, batch: Callable[[int], bytes]
    ) -> bool:
        """Up to 12 batches (a few thousand frames), each followed by a short look for GOAWAY,
        then wait for the server to close."""
        fr = FrameReader(reader)
        answers = self.tallies[name].answers
        for i in range(12):
            await send(writer, batch(i))
            if await fr.until(lambda fs: goaway(fs) is not None, 0.05):
                break
        else:
            await fr.until(lambda fs: goaway(fs) is not None, 5.0)
        answers[f"GOAWAY {goaway(fr.frames)}"] += 1
        return await wait_closed(reader, self.hold)


async def run(
    http: str, grpc: str, duration: float, max_sockets: int, hold: float, pause: float, only: list[str]
) -> dict[str, Any]:
    abuse = Abuse(http, grpc, max_sockets, hold, pause)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(abuse.abuser(name)) for name in only]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "max_sockets": max_sockets,
        "abusers": {name: abuse.tallies[name].to_json() for name in only},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", required=True, help="host:port of Turnout's HTTP server (loopback)")
    ap.add_argument("--grpc", required=True, help="host:port of Turnout's gRPC server (loopback)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--max-sockets", type=int, default=200, help="sockets open at once, all abusers together")
    ap.add_argument("--hold", type=float, default=75.0, help="close a connection the server keeps longer")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between an abuser's rounds")
    ap.add_argument("--only", default=",".join(WIDTH), help="comma-separated abusers")
    a = ap.parse_args(argv)
    only = [n for n in a.only.split(",") if n]
    unknown = set(only) - set(WIDTH)
    if unknown:
        raise SystemExit(f"unknown abusers {sorted(unknown)}; known: {', '.join(WIDTH)}")
    res = asyncio.run(run(a.http, a.grpc, a.duration, a.max_sockets, a.hold, a.pause, only))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
