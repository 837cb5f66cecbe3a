"""Load generator for the Open Inference Protocol (KServe V2) over gRPC and HTTP/1.1.

Two modes:

* ``closed``: ``--concurrency N`` asyncio workers; each sends its next request when the previous
  one has answered.  Latency = answer time - send time.
* ``open``: requests are *scheduled* at a fixed rate (``--rate`` req/s, constant or Poisson
  spacing) regardless of how fast answers come.  Latency is measured from the scheduled send time,
  so time spent waiting behind a slow server or a busy generator is counted (no coordinated
  omission).  At most ``--max-outstanding`` requests are in flight; a request due while the cap
  is reached is not sent and is counted as ``CLIENT_DROPPED``.

Request bytes are built once: gRPC sends a pre-serialized ``ModelInferRequest`` through a generic
``unary_unary`` method with identity (de)serializers; HTTP writes a pre-built request (headers
+ JSON body, or the binary tensor extension with ``--http-binary``) on keep-alive connections
of a small asyncio HTTP/1.1 client.  The first answer is decoded and its output shape checked.

Errors are counted by code: the gRPC status name (``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ...),
``HTTP_<status>``, ``TIMEOUT``, ``CONN_ERROR`` or ``CLIENT_DROPPED``, and by the second they were
answered in (``errors_by_second``: whole seconds of ``time.perf_counter()``, which on Linux is the
system-wide ``CLOCK_MONOTONIC``, so another process can place them on its own timeline).

A run is bounded by time (``--warmup`` + ``--duration``) and optionally by ``--requests``
(measured requests).  Loopback targets only.  Prints one JSON line: throughput (inferences/s =
rows/s and requests/s), p50/p90/p99/max latency (ms), errors by code, measured seconds, client CPU.

Example: python -m benchmarks.loadgen --proto grpc --target 127.0.0.1:8001 --model mlp_large \\
             --rows 16 --mode closed --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from benchmarks.common import check_loopback, out_width, width

OK = "OK"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Config:
    proto: str = "grpc"  # grpc | http
    target: str = "127.0.0.1:8001"
    model: str = "mlp_small"
    spread_models: str = ""  # comma-separated copies of --model's shape: requests go to each in turn
    rows: int = 1  # rows per request (the request's batch dimension)
    width: int = 0  # features per row (0 = the model's; set it for an identity model of any size)
    mode: str = "closed"  # closed | open
    concurrency: int = 1
    rate: float = 0.0  # open loop: requests per second
    arrival: str = "constant"  # constant | poisson
    warmup: float = 1.0
    duration: float = 5.0
    requests: int = 0  # stop after this many measured requests (0 = time only)
    max_outstanding: int = 2048
    connections: int = 0  # HTTP connections / gRPC channels (0 = concurrency in closed loop (HTTP),
    # 64 in open loop (HTTP), one channel (gRPC))
    spread: bool = False  # use every connection in turn (and open them all before measuring)
    timeout: float = 10.0
    http_binary: bool = False
    loop: str = "auto"  # auto | asyncio | uvloop
    spans_file: str = ""  # write each measured OK request's (sent, answered) perf_counter times (.npy)


# ----------------------------------------------------------------------------- request bytes


def _width(cfg: Config) -> int:
    return cfg.width or width(cfg.model)


def _out_width(cfg: Config) -> int:
    return cfg.width or out_width(cfg.model)  # with --width the model is an identity


def _input(cfg: Config) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((cfg.rows, _width(cfg)), dtype=np.float32)


def grpc_request_bytes(cfg: Config) -> bytes:
    from tritonclient.grpc import service_pb2

    x = _input(cfg)
    req = service_pb2.ModelInferRequest(model_name=cfg.model)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return bytes(req.SerializeToString())


def http_request_bytes(cfg: Config) -> bytes:
    x = _input(cfg)
    path = f"/v2/models/{cfg.model}/infer"
    tensor: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    extra = ""
    if cfg.http_binary:
        raw = x.tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(
            {"inputs": [tensor], "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}
        )
        body = head.encode() + raw
        extra = f"Inference-Header-Content-Length: {len(head.encode())}\r\n"
        ctype = "application/octet-stream"
    else:
        tensor["data"] = [float(v) for v in x.ravel()]
        body = json.dumps({"inputs": [tensor]}).encode()
        ctype = "application/json"
    headers = (
        f"POST {path} HTTP/1.1\r\nHost: {cfg.target}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return headers.encode() + body


def _each_model(cfg: Config, build: Callable[[Config], bytes]) -> list[bytes]:
    names = [m for m in cfg.spread_models.split(",") if m] or [cfg.model]
    return [build(replace(cfg, model=m)) for m in names]


class _Turns:
    """Round robin over a list (connections, channels, request bodies)."""

    __slots__ = ("i", "items")

    def __init__(self, items: list[Any]) -> None:
        self.items, self.i = items, 0

    def next(self) -> Any:
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


# ----------------------------------------------------------------------------- transports


def _identity(b: bytes) -> bytes:
    return b


class GrpcTarget:
    def __init__(self, cfg: Config) -> None:
        import grpc

        self._grpc = grpc
        self.cfg = cfg
        self.body = grpc_request_bytes(cfg)
        self.bodies = _Turns(_each_model(cfg, grpc_request_bytes))
        options = [
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ]
        if cfg.connections > 1:  # one TCP connection per channel, not one shared subchannel
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channels = [
            grpc.aio.insecure_channel(cfg.target, options=options) for _ in range(max(cfg.connections, 1))
        ]
        self.examples: dict[str, str] = {}
        self.calls = [
            ch.unary_unary(GRPC_METHOD, request_serializer=_identity, response_deserializer=_identity)
            for ch in self.channels
        ]
        self.call = self.calls[0]
        self.turns = _Turns(self.calls)

    async def connect_all(self) -> None:
        for i in range(0, len(self.channels), 256):
            await asyncio.gather(*(ch.channel_ready() for ch in self.channels[i : i + 256]))

    async def check(self) -> list[int]:
        from tritonclient.grpc import service_pb2

        reply = service_pb2.ModelInferResponse.FromString(await self.call(self.body, timeout=30))
        return list(reply.outputs[0].shape)

    async def send(self) -> str:
        call = self.turns.next() if len(self.calls) > 1 else self.call
        body = self.bodies.next() if len(self.bodies.items) > 1 else self.body
        try:
            await call(body, timeout=self.cfg.timeout)
        except self._grpc.aio.AioRpcError as e:
            code = str(e.code().name)
            self.examples.setdefault(code, str(e.details())[:200])
            return code
        return OK

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


class _Conn:
    """One keep-alive HTTP/1.1 connection (connects lazily, reconnects after an error)."""

    __slots__ = ("host", "port", "reader", "writer")

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        if "content-length" not in hdrs:
            raise ConnectionError("response without Content-Length")
        body = await self.reader.readexactly(int(hdrs["content-length"]))
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class HttpTarget:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data = http_request_bytes(cfg)
        self.bodies = _Turns(_each_model(cfg, http_request_bytes))
        host, port = cfg.target.rsplit(":", 1)
        n = cfg.connections or (cfg.concurrency if cfg.mode == "closed" else 64)
        self.conns = [_Conn(host, int(port)) for _ in range(n)]
        self.examples: dict[str, str] = {}
        # the most recently used connection first (warm), or with --spread each in turn
        self.idle: asyncio.Queue[_Conn] = asyncio.Queue() if cfg.spread else asyncio.LifoQueue()
        for c in self.conns:
            self.idle.put_nowait(c)

    async def connect_all(self) -> None:
        for i in range(0, len(self.conns), 256):
            await asyncio.gather(*(c.connect() for c in self.conns[i : i + 256]))

    async def check(self) -> list[int]:
        conn = await self.idle.get()
        try:
            status, hdrs, body = await conn.request(self.data)
        finally:
            self.idle.put_nowait(conn)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        n = int(hdrs.get("inference-header-content-length", len(body)))
        return list(json.loads(body[:n])["outputs"][0]["shape"])

    async def send(self) -> str:
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self.cfg.timeout):  # covers waiting for a free connection
                conn = await self.idle.get()
                data = self.bodies.next() if len(self.bodies.items) > 1 else self.data
                status, _, body = await conn.request(data)
        except TimeoutError:
            if conn is not None:
                conn.close()
            return "TIMEOUT"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            if conn is not None:
                conn.close()
            return "CONN_ERROR"
        finally:
            if conn is not None:
                self.idle.put_nowait(conn)
        if status == 200:
            return OK
        code = f"HTTP_{status}"
        self.examples.setdefault(code, body[:200].decode("utf-8", "replace"))
        return code

    async def close(self) -> None:
        for c in self.conns:
            c.close()


# ----------------------------------------------------------------------------- measurement


@dataclass
class Recorder:
    """Latency samples and error counts of the measurement window [t_start, t_end)."""

    t_start: float
    t_end: float
    by_schedule: bool  # open loop: sample = scheduled in window; closed loop: answered in window
    limit: int = 0
    lat: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ok_in_window: int = 0
    last_done: float = 0.0
    lag: list[float] = field(default_factory=list)
    spans: list[tuple[float, float]] | None = None  # (sent, answered) of each OK sample, if kept
    errors_by_second: Counter[int] = field(default_factory=Counter)  # int(answered time) -> failures
    full: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, t_sched: float, t_done: float, code: str) -> None:
        ok = code == OK
        if ok and self.t_start <= t_done < self.t_end:
            self.ok_in_window += 1
            self.last_done = t_done
        t = t_sched if self.by_schedule else t_done
        if not self.t_start <= t < self.t_end:
            return
        if ok:
            self.lat.append(t_done - t_sched)
            if self.spans is not None:
                self.spans.append((t_sched, t_done))
        else:
            self.errors[code] += 1
            self.errors_by_second[int(t_done)] += 1
        if self.limit and not self.by_schedule and len(self.lat) + self.errors.total() >= self.limit:
            self.t_end = t_done  # count bound reached: close the window here
            self.full.set()

    def measured(self) -> int:
        return len(self.lat) + self.errors.total()


async def closed_loop(cfg: Config, target: GrpcTarget | HttpTarget, rec: Recorder) -> None:
    stop = False

    async def worker() -> None:
        while not stop:
            t0 = time.perf_counter()
            code = await target.send()
            rec.record(t0, time.perf_counter(), code)
            if code != OK:
                await asyncio.sleep(0.001)  # never hot-loop on a refusing server

    tasks = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(rec.full.wait(), rec.t_end - time.perf_counter())
    stop = True
    await asyncio.gather(*tasks)


async def open_loop(cfg: Config, target: GrpcTarget | HttpTarget, rec: Recorder) -> None:
    rng = random.Random(1)
    outstanding = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(t_sched: float) -> None:
        nonlocal outstanding
        t_go = time.perf_counter()
        if t_sched >= rec.t_start:
            rec.lag.append(t_go - t_sched)
        try:
            code = await target.send()
        except asyncio.CancelledError:
            rec.record(t_sched, time.perf_counter(), "CLIENT_CANCELLED")  # still open at the drain limit
            raise
        finally:
            outstanding -= 1
        rec.record(t_sched, time.perf_counter(), code)

    def gap() -> float:
        return rng.expovariate(cfg.rate) if cfg.arrival == "poisson" else 1.0 / cfg.rate

    t_next = time.perf_counter()
    scheduled = 0
    end = rec.t_end
    while True:
        now = time.perf_counter()
        while t_next <= now and t_next < end:
            measured = t_next >= rec.t_start
            if outstanding >= cfg.max_outstanding:
                rec.record(t_next, now, "CLIENT_DROPPED")
            else:
                outstanding += 1
                task = asyncio.create_task(one(t_next))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if measured:
                scheduled += 1
                if cfg.requests and scheduled >= cfg.requests:
                    end = t_next + 1e-9  # count bound: stop scheduling, the window ends here
            t_next += gap()
        if t_next >= end:
            break
        await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
    if end < rec.t_end:
        rec.t_end = max(end, rec.t_start)
    if tasks:  # let scheduled requests finish (each is bounded by its own timeout)
        await asyncio.wait(set(tasks), timeout=cfg.timeout + 2.0)
        for t in list(tasks):
            t.cancel()


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 3) if a.size else None


async def run(cfg: Config) -> dict[str, Any]:
    check_loopback(cfg.target)
    if cfg.mode == "open" and cfg.rate <= 0:
        raise SystemExit("open loop needs --rate > 0")
    target: GrpcTarget | HttpTarget = GrpcTarget(cfg) if cfg.proto == "grpc" else HttpTarget(cfg)
    try:
        shape = await target.check()
        if shape != [cfg.rows, _out_width(cfg)]:
            raise RuntimeError(f"unexpected output shape {shape}")
        if cfg.spread:
            await target.connect_all()
        t0 = time.perf_counter()
        rec = Recorder(t0 + cfg.warmup, t0 + cfg.warmup + cfg.duration, cfg.mode == "open", cfg.requests)
        if cfg.spans_file:
            rec.spans = []
        cpu0 = time.process_time()
        driver: Callable[[Config, Any, Recorder], Awaitable[None]] = (
            open_loop if cfg.mode == "open" else closed_loop
        )
        await driver(cfg, target, rec)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t0
    finally:
        await target.close()
    seconds = max(rec.t_end - rec.t_start, 1e-9)
    if cfg.spans_file and rec.spans is not None:
        np.save(cfg.spans_file, np.asarray(rec.spans, dtype=np.float64).reshape(-1, 2))
    ms = np.asarray(rec.lat) * 1e3
    lag = np.asarray(rec.lag) * 1e3
    return {
        "generator": "turnout-loadgen",
        "proto": cfg.proto,
        "mode": cfg.mode,
        "model": cfg.model,
        "rows": cfg.rows,
        "concurrency": cfg.concurrency if cfg.mode == "closed" else None,
        "offered_rps": cfg.rate if cfg.mode == "open" else None,
        "requests": rec.measured(),
        "ok": len(rec.lat),
        "errors": dict(rec.errors),
        "error_examples": target.examples,
        "errors_by_second": dict(sorted(rec.errors_by_second.items())),  # perf_counter = CLOCK_MONOTONIC
        "error_share": round(rec.errors.total() / rec.measured(), 4) if rec.measured() else 0.0,
        "seconds": round(seconds, 3),
        "req_per_s": round(rec.ok_in_window / seconds, 1),
        "infer_per_s": round(rec.ok_in_window * cfg.rows / seconds, 1),
        "p50_ms": _pct(ms, 50),
        "p90_ms": _pct(ms, 90),
        "p99_ms": _pct(ms, 99),
        "p999_ms": _pct(ms, 99.9),
        "max_ms": round(float(ms.max()), 3) if ms.size else None,
        "send_lag_p99_ms": _pct(lag, 99) if cfg.mode == "open" else None,
        "client_cpu": round(cpu / wall, 2),
        "output_shape": shape,
        "config": asdict(cfg),
    }


def run_sync(cfg: Config) -> dict[str, Any]:
    use_uvloop = cfg.loop == "uvloop" or (cfg.loop == "auto" and cfg.proto == "http")
    if use_uvloop:
        try:
            import uvloop

            return uvloop.run(run(cfg))
        except ImportError:
            pass
    return asyncio.run(run(cfg))


def parse_args(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    ap.add_argument("--proto", choices=["grpc", "http"], default=d.proto)
    ap.add_argument("--target", default=None, help="host:port (default 127.0.0.1:8001 grpc / :8000 http)")
    ap.add_argument("--model", default=d.model)
    ap.add_argument(
        "--spread-models", default="", help="comma-separated models (of --model's shape), in turn"
    )
    ap.add_argument("--rows", type=int, default=d.rows, help="rows per request")
    ap.add_argument("--width", type=int, default=d.width, help="features per row (identity models)")
    ap.add_argument("--mode", choices=["closed", "open"], default=d.mode)
    ap.add_argument("--concurrency", type=int, default=d.concurrency)
    ap.add_argument("--rate", type=float, default=d.rate, help="open loop: requests/s")
    ap.add_argument("--arrival", choices=["constant", "poisson"], default=d.arrival)
    ap.add_argument("--warmup", type=float, default=d.warmup)
    ap.add_argument("--duration", type=float, default=d.duration)
    ap.add_argument("--requests", type=int, default=d.requests, help="measured requests cap (0 = none)")
    ap.add_argument("--max-outstanding", type=int, default=d.max_outstanding)
    ap.add_argument("--connections", type=int, default=d.connections, help="HTTP connections / gRPC channels")
    ap.add_argument("--spread", action="store_true", help="use every connection in turn, all opened first")
    ap.add_argument("--timeout", type=float, default=d.timeout)
    ap.add_argument("--http-binary", action="store_true")
    ap.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default=d.loop)
    ap.add_argument(
        "--spans-file", default=d.spans_file, help="save (sent, answered) times of OK requests (.npy)"
    )
    a = vars(ap.parse_args(argv))
    if a["target"] is None:
        a["target"] = "127.0.0.1:8001" if a["proto"] == "grpc" else "127.0.0.1:8000"
    return Config(**a)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    res = run_sync(cfg)
    res["cmd"] = "python -m benchmarks.loadgen " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
