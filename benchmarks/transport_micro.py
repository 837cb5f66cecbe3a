"""The asyncio gRPC transport alone: unary calls fed to one ``GrpcConnection`` through a fake
socket (HEADERS + DATA frames, an echo handler, answers discarded), CPU time per call. No
network, no model, no core: the figure moves only with the transport's own code, so two
source trees can be compared with it on a busy machine.

    python -m benchmarks.transport_micro [--calls 30000] [--batch 1]

Run it from each tree's root (``cd <tree> && python -m benchmarks.transport_micro``) to compare
them; quote medians of several runs."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import grpc
import hpack
import uvloop

from turnout.server.grpc.connection import GrpcConnection
from turnout.server.grpc.transport import AsyncioGrpcServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/t.T/Echo"),
    (":authority", "x"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("grpc-accept-encoding", "identity,deflate,gzip"),
    ("user-agent", "grpc-python/1.60"),
]


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


class FakeSocket:
    """What the protocol sees of its transport; everything written is counted and dropped."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def run(calls: int, batch: int) -> float:
    """CPU seconds per call."""
    server = AsyncioGrpcServer(max_message_bytes=1 << 20, max_calls=1000)

    async def echo(req: bytes, ctx: Any) -> bytes:
        return req

    handler = grpc.method_handlers_generic_handler("t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    conn = GrpcConnection(server)
    sock = FakeSocket()
    conn.connection_made(sock)  # type: ignore[arg-type]
    big = (2**31 - 1).to_bytes(4, "big")  # windows wide open: answers never wait
    conn.data_received(
        PREFACE
        + frame(4, 0, 0, (4).to_bytes(2, "big") + big)
        + frame(8, 0, 0, (2**31 - 1 - 65_535).to_bytes(4, "big"))
    )
    encoder = hpack.Encoder()
    message = b"\x00" + (100).to_bytes(4, "big") + b"x" * 100
    sid = 1

    def chunk() -> bytes:
        nonlocal sid
        out = []
        for _ in range(batch):
            out.append(frame(1, 4, sid, encoder.encode(HEADERS)) + frame(0, 1, sid, message))
            sid += 2
        return b"".join(out)

    for _ in range(200):  # warm-up: the HPACK table fills, the memo settles
        conn.data_received(chunk())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    chunks = [chunk() for _ in range(calls // batch)]
    t0 = time.process_time()
    for c in chunks:
        conn.data_received(c)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    for _ in range(1_000_000):  # the last calls finish within a few loop steps
        if not getattr(server, "calls", server.active_calls):  # (older trees count active_calls only)
            break
        await asyncio.sleep(0)
    elapsed = time.process_time() - t0
    if conn.closed or not sock.written:
        raise RuntimeError("the connection closed or answered nothing: the figure would be meaningless")
    return elapsed / (len(chunks) * batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=1, help="calls per read (1: one per data_received)")
    ap.add_argument("--repeats", type=int, default=5)
    ns = ap.parse_args()
    per_call = [uvloop.run(run(ns.calls, ns.batch)) for _ in range(ns.repeats)]
    print(f"transport CPU per unary call, median of {ns.repeats}: {statistics.median(per_call) * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
