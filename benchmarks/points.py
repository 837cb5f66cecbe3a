"""One measured point = one generator run against the running Turnout, wrapped with what the
server did meanwhile: CPU split (server / generator / rest of machine, :class:`CpuMeter`), the
formed batch size (statistics API before/after) and the server's resident memory."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from benchmarks import perf_analyzer
from benchmarks.common import PEERS_DIR, PYTHON
from benchmarks.cpu import CpuMeter, loadavg, pgid_rss_mb
from benchmarks.server import Turnout, avg_batch


def _wrap(srv: Turnout, model: str, kind: str, fn: Any) -> dict[str, Any]:
    before = srv.stats(model)
    rss0 = pgid_rss_mb(srv.pgid)
    with CpuMeter(srv.pgid) as cpu:
        r: dict[str, Any] = fn()
        used = cpu.read()
    after = srv.stats(model)
    r.update(used)
    r.setdefault("server_avg_batch", avg_batch(before, after))
    r.update(
        kind=kind,
        peer="turnout",
        rss_mb_before=round(rss0, 1),
        rss_mb_after=round(pgid_rss_mb(srv.pgid), 1),
        loadavg=loadavg(),
        ts=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return r


def _last_json(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {p.returncode}"}
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def loadgen(srv: Turnout, kind: str, *, proto: str, model: str, **opts: Any) -> dict[str, Any]:
    """Our generator (benchmarks.loadgen) in a subprocess; opts are its flags (rows=16 -> --rows 16)."""
    target = srv.grpc if proto == "grpc" else srv.http
    cmd = [PYTHON, "-m", "benchmarks.loadgen", "--proto", proto, "--target", target, "--model", model]
    for k, v in opts.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:  # (0 == False: "v not in (None, False)" dropped --warmup 0)
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    limit = (
        float(opts.get("warmup", 1)) + float(opts.get("duration", 5)) + float(opts.get("timeout", 10)) + 60
    )

    def go() -> dict[str, Any]:
        r = _last_json(subprocess.run(cmd, capture_output=True, text=True, timeout=limit))
        r.update(proto=proto, model=model, generator="turnout-loadgen")
        return r

    return _wrap(srv, model, kind, go)


def neutral(srv: Turnout, *, proto: str, model: str, concurrency: int, duration: int) -> dict[str, Any]:
    """The team harness's neutral generators through its sweep.py (one point per call), exactly as
    the peers were measured (loadgen_grpc.py for gRPC, wrk via loadgen_rest.py for REST)."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [
            PYTHON, str(PEERS_DIR / "sweep.py"), "--peer", "turnout", "--http", srv.http, "--grpc", srv.grpc,
            "--models", model, "--protocols", "rest" if proto == "http" else "grpc",
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--server-pgid", str(srv.pgid), "--out", out.name,
        ]  # fmt: skip

        def go() -> dict[str, Any]:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
            lines = [ln for ln in open(out.name).read().splitlines() if ln.strip()]
            if p.returncode != 0 or not lines:
                return {"error": " | ".join((p.stdout + p.stderr).strip().splitlines()[-3:])}
            r: dict[str, Any] = json.loads(lines[-1])
            r["sweep_server_cpu"] = r.pop("server_cpu", None)
            return r

        r = _wrap(srv, model, "neutral", go)
    r.update(proto=proto, sweep_cmd=" ".join(cmd[1:]))
    if isinstance(r.get("errors"), int):
        r["errors"] = {"ANY": r["errors"]} if r["errors"] else {}
    return r


def perf(
    srv: Turnout,
    *,
    proto: str,
    model: str,
    concurrency: int,
    interval_ms: int,
    max_trials: int,
    stability: int,
) -> dict[str, Any]:
    url = srv.grpc if proto == "grpc" else srv.http

    def go() -> dict[str, Any]:
        r = perf_analyzer.run_point(model, proto, url, concurrency, interval_ms, max_trials, stability)
        if "stable" in str(r.get("error", "")):  # noisy machine: one retry with a looser stability bound
            loose = min(stability * 3, 100)
            r = perf_analyzer.run_point(model, proto, url, concurrency, interval_ms, max_trials, loose)
            r["pa_stability_pct"] = loose
        return r

    return _wrap(srv, model, "perf_analyzer", go)
