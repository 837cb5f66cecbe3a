"""The soak's capacity search and its child processes: closed-loop capacity at concurrency 32,
then open-loop probes with the soak's own generators (``benchmarks.loadgen``), bisecting for the
highest fraction of it that is served with no failure and a p99 under the bound."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import points
from benchmarks.common import PYTHON
from benchmarks.server import ROOT, Turnout
from benchmarks.soak_report import MODEL, PROTOS, Options, Soak


def stop_child(p: subprocess.Popen[str], grace: float = 10.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def tail(path: Path, chars: int = 500) -> str:
    return path.read_text(errors="replace").strip()[-chars:] if path.exists() else ""


def last_json(out: str) -> dict[str, Any]:
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": out.strip()[-300:] or "no output"}


def closed_loop(srv: Turnout, seconds: float) -> dict[str, dict[str, Any]]:
    """Both protocols at once, closed loop at concurrency 32 each, for ``seconds``."""
    results: dict[str, dict[str, Any]] = {}

    def one(proto: str) -> None:
        results[proto] = points.loadgen(
            srv, "capacity", proto=proto, model=MODEL, mode="closed", concurrency=32,
            warmup=2, duration=seconds,
        )  # fmt: skip

    threads = [threading.Thread(target=one, args=(proto,)) for proto in PROTOS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def measure_capacity(srv: Turnout, soak: Soak) -> None:
    """What the server sustains in the soak's own conditions: both protocols at once, beside the
    abusers (already running), on the same machine as the generators.

    First closed loop at concurrency 32. Then, because the open-loop generators of the soak cost
    the shared cores more than the closed-loop ones, a search for the highest fraction of that
    rate the open-loop generators are served at with no failure and a p99 under
    ``--probe-p99-ms`` (``--probes`` probes of ``--probe-seconds``, bisecting between 0.2 and
    1.0). The soak offers ``--rate-fraction`` of that sustained rate."""
    closed: dict[str, float] = {}
    for proto, r in closed_loop(srv, soak.opts.capacity_seconds).items():
        if "error" in r or not r.get("req_per_s"):
            raise RuntimeError(f"capacity run ({proto}) failed: {r.get('error', r)}")
        keep = ("req_per_s", "p50_ms", "p99_ms", "errors", "server_cores", "client_cores", "other_cores")
        soak.capacity[proto] = {k: r.get(k) for k in keep}
        closed[proto] = float(r["req_per_s"])
        print(f"capacity {proto}: {r['req_per_s']} req/s closed loop at c=32 beside the rest", flush=True)
    low, high, best = 0.2, 1.0, 0.0
    fraction = 0.6
    for _ in range(soak.opts.probes):
        rates = {p: round(fraction * closed[p], 1) for p in PROTOS}
        results = open_loop(srv, rates, soak.opts.probe_seconds, soak.opts)
        held = all(
            "error" not in r
            and not sum(r.get("errors", {}).values())
            and float(r.get("p99_ms") or 1e9) < soak.opts.probe_p99_ms
            for r in results.values()
        )
        soak.probes.append(
            {
                "fraction": fraction,
                "held": held,
                **{
                    p: {k: r.get(k) for k in ("requests", "ok", "errors", "p50_ms", "p99_ms", "error")}
                    for p, r in results.items()
                },
            }
        )
        print(
            f"probe at {fraction:.2f} of closed-loop capacity: {'held' if held else 'did not hold'}",
            flush=True,
        )
        if held:
            best, low = max(best, fraction), fraction
        else:
            high = fraction
        fraction = round((low + high) / 2, 3)
        time.sleep(2)  # the probe's answers drain
    if best == 0.0:
        best = low  # nothing held: offer the lowest fraction searched, and let the soak show it
    soak.sustained = best
    for proto in PROTOS:
        soak.rates[proto] = round(soak.opts.rate_fraction * best * closed[proto], 1)
        print(
            f"sustained open loop {proto}: {best * closed[proto]:.1f} req/s -> {soak.rates[proto]} req/s offered",
            flush=True,
        )


def open_loop(
    srv: Turnout, rates: dict[str, float], seconds: float, opts: Options
) -> dict[str, dict[str, Any]]:
    """Both protocols at once, open loop (the soak's generators) at ``rates``, for ``seconds``."""
    gens = {
        p: spawn(loadgen_cmd(srv, p, rates[p], seconds, opts, None), opts.workdir / f"probe-{p}.err")
        for p in PROTOS
    }
    out: dict[str, dict[str, Any]] = {}
    for p, g in gens.items():
        try:
            stdout, _ = g.communicate(timeout=seconds + opts.request_timeout + 30)
            out[p] = (
                last_json(stdout) if g.returncode == 0 else {"error": tail(opts.workdir / f"probe-{p}.err")}
            )
        except subprocess.TimeoutExpired:
            stop_child(g, grace=1)
            out[p] = {"error": "the probe generator did not finish"}
    return out


def loadgen_cmd(
    srv: Turnout, proto: str, rate: float, seconds: float, opts: Options, spans: Path | None
) -> list[str]:
    cmd = [
        PYTHON, "-m", "benchmarks.loadgen", "--proto", proto, "--target", srv.grpc if proto == "grpc" else srv.http,
        "--model", MODEL, "--mode", "open", "--arrival", "poisson", "--rate", str(rate), "--warmup", "0",
        "--duration", str(seconds), "--timeout", str(opts.request_timeout),
    ]  # fmt: skip
    return cmd + (["--spans-file", str(spans)] if spans is not None else [])


def spawn(cmd: list[str], err: Path) -> subprocess.Popen[str]:
    """A child whose one JSON line comes on stdout; its stderr goes to a file (a pipe nobody
    reads during a 10-minute run could fill up and block it)."""
    with err.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
