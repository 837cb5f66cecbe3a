"""What the features cost, measured side by side in one run (medians of alternating runs):

* drift monitoring on vs off: mlp_small throughput at concurrency 32 (gRPC and HTTP);
* dynamic batching on vs off: median latency at concurrency 1 (gRPC and HTTP);
* shadow traffic: 100 % mirrored to a second version vs none, p50 at concurrency 8 (gRPC);
* isolation: p99 of mlp_small at concurrency 4 while mlp_large loads, vs without; and while
  mlp_large is loaded and unloaded back to back (a stress figure);
* the gRPC transport: Turnout's own HTTP/2 gRPC server (the default) against grpcio's
  (``--grpc-transport grpcio``); and, on grpcio's, grpc's default listener against
  ``--grpc-experiments=-event_engine_listener``. Each: p50 at concurrency 1 with perf_analyzer,
  throughput at concurrency 4 and 32 with the harness's loadgen_grpc.py, one server per run;
* the HTTP fast path (inference answered inside the protocol) against ``--http-fast-path false``
  (through ASGI): p50 at concurrency 1 and throughput at concurrency 32 with wrk;
* busy polling (the default ``--busy-poll-us``) against ``--busy-poll-us 0``: p50 at concurrency
  1 (wrk, perf_analyzer) with the server's CPU use in the wrk run, and throughput at concurrency
  32 (wrk, loadgen_grpc.py);
* the HTTP/2 core of the gRPC transport: Turnout's (server/grpc/http2.py) against the h2
  library's under the same interface (``--grpc-h2-engine h2``): p50 at concurrency 1
  (perf_analyzer), throughput at concurrency 32 (loadgen_grpc.py) and the server's CPU per call
  in that run;
* request logging: every request logged (``--request-log-sample 1``) against none; and logged
  with the tensors as base64 (``--request-log-tensors base64``) against JSON (the default):
  throughput of mlp_small and mlp_large at concurrency 32 (loadgen_grpc.py, loadgen_rest.py) and
  the server's CPU per request in those runs.

    python -m benchmarks.features [--duration 5] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import models, perf_analyzer
from benchmarks.baselines import peer_tool
from benchmarks.cpu import pgid_cpu
from benchmarks.loadgen import Config, run_sync
from benchmarks.server import Turnout

# The isolation control: a process at the lowest OS priority that busy-loops for the seconds it
# reads from stdin, then answers a line.
_SPINNER = """
import os, sys, time
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
for line in sys.stdin:
    t = time.perf_counter()
    while time.perf_counter() - t < float(line):
        pass
    print("done", flush=True)
"""


def _load(
    srv: Turnout, proto: str, model: str, concurrency: int, duration: float, warmup: float = 1.0
) -> dict[str, Any]:
    target = srv.grpc if proto == "grpc" else srv.http
    cfg = Config(
        proto=proto, target=target, model=model, concurrency=concurrency, warmup=warmup, duration=duration
    )
    return run_sync(cfg)


def _load_process(
    srv: Turnout, proto: str, model: str, concurrency: int, duration: float, spans_file: Path
) -> dict[str, Any]:
    """The load generator in a process of its own (so that nothing else here shares its GIL)."""
    target = srv.grpc if proto == "grpc" else srv.http
    cmd = [
        sys.executable, "-m", "benchmarks.loadgen", "--proto", proto, "--target", target, "--model", model,
        "--concurrency", str(concurrency), "--warmup", "1", "--duration", str(duration),
        "--spans-file", str(spans_file),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def _post(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> int:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return int(r.status)


def _server(repo: Path, work: Path, *args: str) -> Turnout:
    srv = Turnout(repo, work / f"srv-{time.monotonic_ns()}", extra_args=tuple(args))
    srv.start()
    return srv


def ab(
    repo: Path, work: Path, a: tuple[str, ...], b: tuple[str, ...], measure: Any, repeats: int
) -> tuple[list[float], list[float]]:
    """Alternate A and B ``repeats`` times, a fresh server each run; return both value lists."""
    va: list[float] = []
    vb: list[float] = []
    for _ in range(repeats):
        for args, out in ((a, va), (b, vb)):
            srv = _server(repo, work, *args)
            try:
                out.append(measure(srv))
            finally:
                srv.stop()
    return va, vb


def paired(a: list[float], b: list[float]) -> str:
    """The ratio B / A of each pair of adjacent runs (run i of A, then run i of B): its median
    and quartiles. A pair shares the machine's state of the moment, so the ratios drift less
    than the two arms' medians do on a shared machine."""
    ratios = [y / x for x, y in zip(a, b, strict=False) if x]
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.3f}" if ratios else "-"
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:.3f} [{q1:.3f}, {q3:.3f}]"


SECTIONS = (
    "drift",
    "batching",
    "shadow",
    "isolation",
    "grpc-transport",
    "grpc-listener",
    "http-fast-path",
    "busy-poll",
    "h2-engine",
    "request-log",
    "request-log-tensors",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ns = ap.parse_args()
    only = set(ns.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="turnout-features-"))
    repo = models.build(work / "models")
    rows: list[str] = []
    raw: dict[str, Any] = {}

    def line(name: str, unit: str, a: list[float], b: list[float], label_a: str, label_b: str) -> None:
        ma, mb = statistics.median(a), statistics.median(b)
        raw[name] = {label_a: a, label_b: b}
        rows.append(
            f"| {name} | {label_a}: {ma:,.3f} {unit} | {label_b}: {mb:,.3f} {unit} | {mb / ma:.3f} | {paired(a, b)} |"
        )
        print(rows[-1], flush=True)

    for proto in ("grpc", "http") if "drift" in only else ():
        a, b = ab(
            repo,
            work,
            ("--drift", "false"),
            ("--drift", "true"),
            # 8 s of warm-up: past the capture of the 10,000-row reference, a one-off per version
            lambda s, p=proto: _load(s, p, "mlp_small", 32, ns.duration, warmup=8.0)["infer_per_s"],
            ns.repeats,
        )
        line(f"drift on/off, mlp_small {proto} c=32 throughput", "inf/s", a, b, "off", "on")
    for proto in ("grpc", "http") if "batching" in only else ():
        a, b = ab(
            repo,
            work,
            ("--batching", "false"),
            ("--batching", "true"),
            lambda s, p=proto: _load(s, p, "mlp_small", 1, ns.duration)["p50_ms"],
            max(ns.repeats, 5),
        )
        line(f"batching on/off, mlp_small {proto} c=1 p50", "ms", a, b, "off", "on")

    # the gRPC server: grpcio's against Turnout's own; then, on grpcio's, grpc's default listener
    # (EventEngine: I/O on its own threads) against the classic one (I/O on the thread that waits
    # for completions): latency at concurrency 1 against throughput
    if "grpc-listener" in only and {"GRPC_EXPERIMENTS", "TURNOUT_GRPC_EXPERIMENTS"} & set(os.environ):
        raise SystemExit(
            "grpc-listener: unset GRPC_EXPERIMENTS and TURNOUT_GRPC_EXPERIMENTS (they set both arms)"
        )
    grpcio = ("--grpc-transport", "grpcio")
    Values = dict[str, tuple[str, float]]

    def pa_c1_p50(srv: Turnout) -> float:
        pa = perf_analyzer.run_point("mlp_small", "grpc", srv.grpc, 1, 3000, 6, 30, retries=1)
        return float(pa.get("p50_ms", math.nan))

    def grpc_points(title: str) -> Callable[[Turnout], Values]:
        def measure(srv: Turnout) -> Values:
            values = {f"{title}, mlp_small grpc c=1 p50 (perf_analyzer)": ("ms", pa_c1_p50(srv))}
            for c in (4, 32):
                rps = peer_tool("loadgen_grpc.py", srv.grpc, c, ns.duration)["infer_per_s"]
                values[f"{title}, mlp_small grpc c={c} throughput (loadgen_grpc.py)"] = ("inf/s", rps)
            return values

        return measure

    def http_points(srv: Turnout) -> Values:
        c1 = peer_tool("loadgen_rest.py", srv.http, 1, ns.duration)
        c32 = peer_tool("loadgen_rest.py", srv.http, 32, ns.duration)
        return {
            "HTTP fast path, mlp_small http c=1 p50 (wrk)": ("ms", c1["p50_ms"]),
            "HTTP fast path, mlp_small http c=32 throughput (wrk)": ("inf/s", c32["infer_per_s"]),
        }

    def busy_points(srv: Turnout) -> Values:
        t0, cpu0 = time.monotonic(), pgid_cpu(srv.pgid)
        c1 = peer_tool("loadgen_rest.py", srv.http, 1, ns.duration)
        cores = (pgid_cpu(srv.pgid) - cpu0) / (time.monotonic() - t0)
        return {
            "busy polling, mlp_small http c=1 p50 (wrk)": ("ms", c1["p50_ms"]),
            "busy polling, server cores busy during the http c=1 run": ("cores", cores),
            "busy polling, mlp_small grpc c=1 p50 (perf_analyzer)": ("ms", pa_c1_p50(srv)),
            "busy polling, mlp_small http c=32 throughput (wrk)": (
                "inf/s",
                peer_tool("loadgen_rest.py", srv.http, 32, ns.duration)["infer_per_s"],
            ),
            "busy polling, mlp_small grpc c=32 throughput (loadgen_grpc.py)": (
                "inf/s",
                peer_tool("loadgen_grpc.py", srv.grpc, 32, ns.duration)["infer_per_s"],
            ),
        }

    def h2_points(srv: Turnout) -> Values:
        t0, cpu0 = time.monotonic(), pgid_cpu(srv.pgid)
        run = peer_tool("loadgen_grpc.py", srv.grpc, 32, ns.duration)
        calls = run["infer_per_s"] * (time.monotonic() - t0)
        return {
            "HTTP/2 core, mlp_small grpc c=1 p50 (perf_analyzer)": ("ms", pa_c1_p50(srv)),
            "HTTP/2 core, mlp_small grpc c=32 throughput (loadgen_grpc.py)": ("inf/s", run["infer_per_s"]),
            "HTTP/2 core, server CPU per call at c=32": ("µs", (pgid_cpu(srv.pgid) - cpu0) / calls * 1e6),
        }

    def log_points(title: str) -> Callable[[Turnout], Values]:
        def measure(srv: Turnout) -> Values:
            values: Values = {}
            for model in ("mlp_small", "mlp_large"):
                for proto, tool in (("grpc", "loadgen_grpc.py"), ("http", "loadgen_rest.py")):
                    t0, cpu0 = time.monotonic(), pgid_cpu(srv.pgid)
                    run = peer_tool(tool, srv.grpc if proto == "grpc" else srv.http, 32, ns.duration, model)
                    calls = run["infer_per_s"] * (time.monotonic() - t0)
                    values[f"{title}, {model} {proto} c=32 throughput"] = ("inf/s", run["infer_per_s"])
                    cpu_us = (pgid_cpu(srv.pgid) - cpu0) / calls * 1e6
                    values[f"{title}, server CPU per request, {model} {proto} c=32"] = ("µs", cpu_us)
            return values

        return measure

    request_log = ("--request-log-dir", str(work / "request-log"), "--request-log-sample", "1")
    request_log_b64 = (*request_log, "--request-log-tensors", "base64")

    comparisons: tuple[
        tuple[str, Callable[[Turnout], Values], tuple[tuple[str, ...], ...], tuple[str, str]], ...
    ] = (
        ("grpc-transport", grpc_points("gRPC transport"), (grpcio, ()), ("grpcio", "Turnout's (default)")),
        (
            "grpc-listener",
            grpc_points("grpcio's listener"),
            (grpcio, (*grpcio, "--grpc-experiments=-event_engine_listener")),
            ("EventEngine (grpc's default)", "classic"),
        ),
        (
            "http-fast-path",
            http_points,
            (("--http-fast-path", "false"), ()),
            ("through ASGI", "fast path (default)"),
        ),
        ("busy-poll", busy_points, (("--busy-poll-us", "0"), ()), ("off", "polling (default)")),
        (
            "h2-engine",
            h2_points,
            (("--grpc-h2-engine", "h2"), ()),
            ("h2 library", "Turnout's core (default)"),
        ),
        (
            "request-log",
            log_points("request log"),
            ((), request_log),
            ("off (default)", "every request logged"),
        ),
        (
            "request-log-tensors",
            log_points("request log tensors"),
            (request_log, request_log_b64),
            ("every request logged, JSON tensors (default)", "base64 tensors"),
        ),
    )
    for section, measure, arms, labels in comparisons:
        measured: dict[str, tuple[list[float], list[float]]] = {}
        for _ in range(ns.repeats if section in only else 0):
            for i, args in enumerate(arms):
                srv = _server(repo, work, *args)
                try:
                    values = measure(srv)
                finally:
                    srv.stop()
                for name, (unit, v) in values.items():
                    measured.setdefault(f"{name}|{unit}", ([], []))[i].append(float(v))
        for key, (a, b) in measured.items():
            name, unit = key.split("|")
            line(name, unit, a, b, *labels)

    shadow_repo = work / "shadow-repo"
    shutil.copytree(repo / "mlp_small", shadow_repo / "mlp_small")
    shutil.copytree(shadow_repo / "mlp_small" / "1", shadow_repo / "mlp_small" / "2")
    cfg = shadow_repo / "mlp_small" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "version_policy: { all {} }\n")

    def shadow_p50(mirror: bool) -> Any:
        def m(s: Turnout) -> float:
            body = {"stable": "1", "shadow": {"version": "2", "fraction": 1.0}} if mirror else {"stable": "1"}
            _post(f"http://{s.http}/admin/models/mlp_small/traffic", body, "PUT")
            return float(_load(s, "grpc", "mlp_small", 8, ns.duration)["p50_ms"])

        return m

    va: list[float] = []
    vb: list[float] = []
    for _ in range(ns.repeats if "shadow" in only else 0):
        for mirror, out in ((False, va), (True, vb)):
            srv = _server(shadow_repo, work)
            try:
                out.append(shadow_p50(mirror)(srv))
            finally:
                srv.stop()
    if va:
        line("shadow 100% vs none, mlp_small grpc c=8 p50", "ms", va, vb, "none", "mirrored")

    # the same models, with mlp_large served from a process of its own (isolation: process)
    proc_repo = work / "isolation-process-repo"
    shutil.copytree(repo, proc_repo)
    with (proc_repo / "mlp_large" / "config.pbtxt").open("a") as f:
        f.write('parameters { key: "isolation" value: { string_value: "process" } }\n')

    def isolation(mode: str, spin_ms: float = 0.0, models_dir: Path = repo) -> dict[str, float]:
        """p99 of mlp_small (gRPC, concurrency 4, load generator in its own process) while
        mlp_large is loaded and unloaded: ``quiet`` (never), ``loads`` (load, 0.25 s pause, unload,
        0.25 s pause: the p99 of the requests in flight during a load) or ``churn`` (back to back).
        ``spin`` is the control: no model is loaded, but another process at the lowest OS priority
        (SCHED_IDLE) busy-loops for ``spin_ms`` (the loads' median) with the loads' cadence."""
        srv = _server(models_dir, work, "--model-control-mode", "explicit", "--load-model", "mlp_small")
        stop = threading.Event()
        loads: list[tuple[float, float]] = []
        pause = 0.25 if mode in ("loads", "spin") else 0.0
        spinner = (
            subprocess.Popen(
                [sys.executable, "-c", _SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            if mode == "spin"
            else None
        )

        def churn() -> None:
            base = f"http://{srv.http}/v2/repository/models/mlp_large"
            while not stop.is_set():
                t0 = time.perf_counter()
                if spinner is not None:
                    assert spinner.stdin is not None and spinner.stdout is not None
                    spinner.stdin.write(f"{spin_ms / 1e3}\n")
                    spinner.stdin.flush()
                    spinner.stdout.readline()
                    loads.append((t0, time.perf_counter()))
                    stop.wait(2 * pause)
                    continue
                _post(f"{base}/load")
                loads.append((t0, time.perf_counter()))
                stop.wait(pause)
                _post(f"{base}/unload")
                stop.wait(pause)

        t = threading.Thread(target=churn, daemon=True)
        spans_file = work / f"spans-{time.monotonic_ns()}.npy"
        try:
            if mode != "quiet":
                t.start()
            res = _load_process(srv, "grpc", "mlp_small", 4, ns.duration, spans_file)
        finally:
            stop.set()
            if mode != "quiet":
                t.join(60)
            if spinner is not None:
                spinner.kill()
                spinner.wait()
            srv.stop()
        spans = np.load(spans_file)
        lat_ms = (spans[:, 1] - spans[:, 0]) * 1e3
        out = {"p99_ms": float(res["p99_ms"]), "loads": float(len(loads))}
        if loads:
            starts = np.asarray([a for a, _ in loads])
            ends = np.asarray([b for _, b in loads])
            # a request overlaps a load when it was sent before the load ended and answered after it began
            i = np.searchsorted(ends, spans[:, 0], side="right")  # first load ending after the send
            during = (i < len(loads)) & (starts[np.minimum(i, len(loads) - 1)] < spans[:, 1])
            out["during_p99_ms"] = float(np.percentile(lat_ms[during], 99)) if during.any() else float("nan")
            out["during_requests"] = float(during.sum())
            out["load_ms_median"] = float(np.median((ends - starts) * 1e3))
        raw.setdefault(f"isolation_{mode}" + ("_process" if models_dir != repo else ""), []).append(out)
        return out

    va, vb, vc, vd, ve = [], [], [], [], []
    for _ in range(ns.repeats if "isolation" in only else 0):
        va.append(isolation("quiet")["p99_ms"])
        during = isolation("loads")
        vb.append(during["during_p99_ms"])
        ve.append(isolation("loads", models_dir=proc_repo)["during_p99_ms"])
        vd.append(isolation("spin", during["load_ms_median"])["during_p99_ms"])
        vc.append(isolation("churn")["p99_ms"])
    if va:
        line(
            "mlp_small grpc c=4 p99, requests in flight while mlp_large loads",
            "ms",
            va,
            vb,
            "quiet",
            "during a load",
        )
        line(
            "the same, mlp_large served from a process of its own (isolation: process)",
            "ms",
            va,
            ve,
            "quiet",
            "during a load",
        )
        line(
            "control: the same, while another process busy-loops at SCHED_IDLE as long as a load (no load)",
            "ms",
            va,
            vd,
            "quiet",
            "during the busy loop",
        )
        line(
            "mlp_small grpc c=4 p99, mlp_large loaded/unloaded back to back (stress)",
            "ms",
            va,
            vc,
            "quiet",
            "churn",
        )

    ns.out.mkdir(parents=True, exist_ok=True)
    md = [
        "# Feature costs (medians of alternating runs, fresh server per run)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on the 2-core VM, loopback, our load generator "
        "(`benchmarks/loadgen.py`) or, where a row names it and in the request-log rows, the peer "
        "harness's `loadgen_grpc.py` (gRPC) and `loadgen_rest.py` (HTTP, wrk), "
        f"{ns.duration:.0f} s per run after 1 s warm-up (8 s for the drift rows, "
        f"so that the 10,000-row reference capture is over), {ns.repeats} runs per side "
        "(at least 5 for the latency-at-concurrency-1 rows).",
        "",
        "Command: `.venv/bin/python -m benchmarks.features"
        + (f" --duration {ns.duration:g} --repeats {ns.repeats}")
        + (f" --only {ns.only}" if len(only) < len(SECTIONS) else "")
        + "`",
        "",
        "| what | A | B | B / A (medians) | B / A per pair: median [quartiles] |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Isolation: the load generator runs in its own process and records when each request was sent and "
        "answered; *during a load* is the p99 of the requests in flight while a `load` call of mlp_large "
        "was running (load, 0.25 s pause, unload, 0.25 s pause, repeated); *churn* loads and unloads "
        "back to back and takes the p99 of the whole run. The *control* loads nothing: another process "
        "at the lowest OS priority (SCHED_IDLE) busy-loops for the loads' median duration with the same "
        "cadence, and the row gives the p99 of the requests in flight during each busy loop.",
        "",
        "Raw values:",
        "",
        "```json",
        json.dumps(raw, indent=1),
        "```",
    ]
    name = "FEATURES.md" if len(only) == len(SECTIONS) else f"FEATURES-{'-'.join(sorted(only))}.md"
    (ns.out / name).write_text("\n".join(md) + "\n")
    print(f"wrote {ns.out / name}")


if __name__ == "__main__":
    main()
