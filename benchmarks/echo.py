"""The loopback limit: the same bytes echoed through a bare TCP socket pair on 127.0.0.1.

A request is an 8-byte length then that many bytes; the server (its own process, one thread per
connection) reads the whole message and writes it back. The client (threads, one connection
each, sockets with TCP_NODELAY) measures each round trip. Whatever a server does on top of
moving the bytes (framing, decoding, a model, encoding) shows as the gap to this figure.

    python -m benchmarks.echo --serve PORT_FILE     (the server; prints nothing, runs until killed)
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON

HEAD = struct.Struct("!Q")


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _serve_one(sock: socket.socket) -> None:
    buf = bytearray(1 << 16)
    head = memoryview(bytearray(HEAD.size))
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while _recv_exact(sock, head):
            (n,) = HEAD.unpack(head)
            if n > len(buf):
                buf = bytearray(n)
            view = memoryview(buf)[:n]
            if not _recv_exact(sock, view):
                return
            sock.sendall(view)


def serve(port_file: Path) -> None:
    lsock = socket.create_server(("127.0.0.1", 0), backlog=64)
    port_file.write_text(str(lsock.getsockname()[1]))
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def measure(size: int, concurrency: int, warmup: float, duration: float, workdir: Path) -> dict[str, Any]:
    """Echo ``size``-byte messages on ``concurrency`` connections; MB/s (one way) and latency."""
    port_file = workdir / "echo.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.echo", "--serve", str(port_file)], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("echo server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        payload = np.random.default_rng(0).bytes(size)
        t_start = time.perf_counter() + warmup
        t_end = t_start + duration
        lat: list[list[float]] = [[] for _ in range(concurrency)]

        def client(i: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                back = memoryview(bytearray(size))
                head = HEAD.pack(size)
                while True:
                    t0 = time.perf_counter()
                    if t0 >= t_end:
                        return
                    s.sendall(head)
                    s.sendall(payload)
                    if not _recv_exact(s, back):
                        return
                    if t0 >= t_start:
                        lat[i].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(warmup + duration + 60)
    finally:
        proc.kill()
        proc.wait(5)
    ms = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    n = int(ms.size)
    return {
        "req_per_s": round(n / duration, 1),
        "mb_per_s": round(n * size / duration / 1e6, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if n else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if n else None,
        "requests": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=Path, required=True, help="write the listening port here")
    serve(ap.parse_args().serve)


if __name__ == "__main__":
    main()
