"""Soak: Turnout under steady load, with a canary, a shadow, drift on, a model reload every
minute and abusive clients beside it; then check that no legitimate request failed and that
memory and file descriptors came back.

1. Starts Turnout from this checkout on 127.0.0.1 (ephemeral ports, default edge flags or, with
   ``--short-timeouts``, shorter ones), a copy of the demo repository in explicit model-control
   mode, all models loaded, drift on (the default), and sets ``mlp``'s traffic policy: stable 1,
   canary 2 at ``--canary`` weight, each version shadowing the other at ``--shadow`` fraction.
2. Warm-up (both protocols, 5 s), then the baseline RSS (``/proc/<pid>/status`` VmRSS) and open
   descriptors (``/proc/<pid>/fd``) of the idle, warmed server.
3. The abusers of ``benchmarks.abuse`` start in their own process (unless ``--no-abuse``) and run
   until the soak ends. Capacity is measured in the soak's own conditions, beside the abusers and
   with the traffic policy in place (the shadow copies are part of the cost): closed loop at
   concurrency 32 on ``mlp``, both protocols at once, for ``--capacity-seconds``; then open-loop
   probes with the soak's own generators find the highest fraction of that rate that is served
   with no failure and a p99 under ``--probe-p99-ms`` (the open-loop generators take more of
   the shared cores than the closed-loop ones): the sustained capacity.
4. For ``--duration`` seconds: open-loop Poisson load on each protocol at ``--rate-fraction`` of
   its sustained capacity from step 3, one ``benchmarks.loadgen`` process per protocol; every
   ``--reload-every`` seconds ``mlp``'s config.pbtxt gets a new comment line and the model is
   loaded again through ``POST /v2/repository/models/mlp/load`` (both versions are swapped for
   new sessions); RSS and descriptors are sampled every ``--sample-every`` seconds.
5. After the load and the abusers stop, ``--settle`` seconds, then (waiting up to 15 s more for
   descriptors to drop back) the end RSS and descriptors of the idle server.
6. Prints the summary and writes it to ``--out`` (default ``benchmarks/results/SOAK.md``) and a
   JSON twin next to it. Exit status 1 if a legitimate request failed, RSS grew by
   ``--max-rss-growth`` (5 %) or more, descriptors did not come back to the baseline, a reload
   failed or the server died; 0 otherwise.

Everything is bounded in time, targets loopback only, and the server and every child process are
stopped at the end, also on Ctrl-C, SIGTERM or an error.

    python -m benchmarks.soak                       # the 10-minute soak (about 13 min in all)
    python -m benchmarks.soak --duration 60 --reload-every 20 --short-timeouts   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import points
from benchmarks.common import HERE, PYTHON
from benchmarks.cpu import CpuMeter, loadavg
from benchmarks.server import ROOT, Turnout

MODEL = "mlp"
PROTOS = ("grpc", "http")
DEMO_REPO = ROOT / "model_store" / "demo" / "repository"
EXPLICIT = ("--model-control-mode", "explicit", "--load-model", "*")
SHORT_TIMEOUTS = {  # flag -> seconds, with --short-timeouts (defaults: 10, 10, 60, 300, 30)
    "--handshake-timeout-secs": 2.0,
    "--header-timeout-secs": 3.0,
    "--request-timeout-secs": 5.0,
    "--idle-timeout-secs": 15.0,
    "--write-timeout-secs": 5.0,
}
DEFAULT_REQUEST_TIMEOUT = 60.0
METRIC_PREFIXES = (
    "turnout_edge_events_total",
    "turnout_rejected_requests_total",
    "turnout_shadow_requests_total",
    "turnout_drift_status",
    "turnout_drift_dropped_total",
    "turnout_drift_monitor_restarts_total",
    "turnout_model_load_failures_total",
    "turnout_request_duration_seconds_sum",
    "turnout_request_duration_seconds_count",
)
LOADED = re.compile(rb"model mlp version \S+ loaded")


@dataclass
class Options:
    duration: float = 600.0
    rate_fraction: float = 0.8
    reload_every: float = 60.0
    abuse: bool = True
    short_timeouts: bool = False
    capacity_seconds: float = 10.0
    probe_seconds: float = 15.0
    probes: int = 4
    probe_p99_ms: float = 250.0
    canary: float = 0.1
    shadow: float = 0.1
    settle: float = 10.0
    sample_every: float = 2.0
    max_sockets: int = 200
    max_rss_growth: float = 5.0
    request_timeout: float = 10.0  # the legitimate clients' own deadline
    workdir: Path = Path("/tmp/turnout-soak")
    out: Path = HERE / "results" / "SOAK.md"


# ----------------------------------------------------------------------------- small helpers


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except OSError as e:
        return 0, str(e).encode()


def git(*args: str) -> str:
    p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return p.stdout.strip()


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


# ----------------------------------------------------------------------------- background threads


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_kb: int
    fds: int


class Sampler(threading.Thread):
    """RSS and descriptors of the server every ``every`` seconds."""

    def __init__(self, pid: int, every: float, t0: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid, self.every, self.t0 = pid, every, t0
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def sample(self) -> Sample:
        return Sample(round(time.perf_counter() - self.t0, 1), rss_kb(self.pid), fds(self.pid))

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                self.samples.append(self.sample())
            except (OSError, RuntimeError):
                return  # the server is gone; the main thread notices


@dataclass
class Reload:
    at: float  # perf_counter when the load call was sent
    seconds: float
    status: int
    detail: str


class Reloader(threading.Thread):
    """Every ``every`` seconds: give the model's config.pbtxt a new comment line and ask the
    server to load the model. The config is part of every version's sha256, so each version is
    loaded into a new session and swapped in (touching the file would not do: a version whose
    sha256 is unchanged keeps its session)."""

    def __init__(self, base: str, config: Path, scratch: Path, every: float) -> None:
        super().__init__(name="reloader", daemon=True)
        self.base, self.config, self.scratch, self.every = base, config, scratch, every
        self.original = config.read_text()
        self.reloads: list[Reload] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.scratch.write_text(f"{self.original}\n# soak reload {len(self.reloads) + 1}\n")
            os.replace(self.scratch, self.config)  # the server never sees a half-written config
            t0 = time.perf_counter()
            status, body = http("POST", f"{self.base}/v2/repository/models/{MODEL}/load", {}, timeout=60)
            self.reloads.append(Reload(t0, round(time.perf_counter() - t0, 3), status, body[:200].decode()))


# ----------------------------------------------------------------------------- the soak


@dataclass
class Soak:
    opts: Options
    server_args: list[str]
    command: str
    policy: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, dict[str, Any]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)  # the open-loop capacity search
    sustained: float = 0.0  # the highest probe fraction of the closed-loop capacity that held
    load: dict[str, dict[str, Any]] = field(default_factory=dict)
    abuse: dict[str, Any] = field(default_factory=dict)
    reloads: list[Reload] = field(default_factory=list)
    versions_loaded: int = 0
    samples: list[Sample] = field(default_factory=list)
    t0: float = 0.0  # perf_counter when the soak load started
    timeline: list[dict[str, Any]] = field(default_factory=list)
    baseline: Sample | None = None
    end: Sample | None = None
    metrics: list[str] = field(default_factory=list)
    shadow_pairs: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    loadavg: tuple[float, float] = (0.0, 0.0)
    server_alive: bool = True
    server_exit: int | None = None
    started: str = ""
    commit: str = ""

    # --------------------------------------------------------------- verdict

    def failed_requests(self) -> int:
        return sum(sum(r.get("errors", {}).values()) + (1 if "error" in r else 0) for r in self.load.values())

    def rss_growth_pct(self) -> float | None:
        if self.baseline is None or self.end is None:
            return None
        return round(100.0 * (self.end.rss_kb - self.baseline.rss_kb) / self.baseline.rss_kb, 2)

    def busy(self) -> str:
        """Why the figures say little about the server, if the machine was too busy: the server got
        clearly fewer cores in the soak than in the capacity runs, or other users took a lot."""
        caps = [float(c.get("server_cores") or 0) for c in self.capacity.values()]
        cap = statistics.mean(caps) if caps else 0.0
        got, others = float(self.cpu.get("server_cores", 0)), float(self.cpu.get("other_cores", 0))
        why = []
        if cap > 0 and got < 0.8 * cap:
            why.append(
                f"the server got {got:.2f} cores in the soak against {cap:.2f} in the capacity runs, so the "
                f"offered load was about {self.opts.rate_fraction * cap / max(got, 0.01):.0%} of what it could do"
            )
        if others > 0.3:
            why.append(f"other users kept {others:.2f} cores busy")
        return "; ".join(why)

    def problems(self) -> list[str]:
        out = []
        if (n := self.failed_requests()) > 0:
            out.append(f"{n} legitimate requests failed")
        growth = self.rss_growth_pct()
        if growth is None or growth >= self.opts.max_rss_growth:
            out.append(f"RSS growth {growth} % (limit < {self.opts.max_rss_growth:g} %)")
        if self.baseline is None or self.end is None or self.end.fds > self.baseline.fds:
            b, e = (self.baseline.fds if self.baseline else None), (self.end.fds if self.end else None)
            out.append(f"descriptors {b} -> {e}: not back to the baseline")
        if bad := [r for r in self.reloads if r.status != 200]:
            out.append(f"{len(bad)} of {len(self.reloads)} reloads failed")
        if not self.server_alive or self.server_exit not in (0, None):
            out.append(f"the server died or exited with {self.server_exit}")
        return out


def set_policy(srv: Turnout, opts: Options) -> dict[str, Any]:
    policy = {
        "stable": "1",
        "canary": {"version": "2", "weight": opts.canary},
        "shadows": [{"version": "2", "fraction": opts.shadow}, {"version": "1", "fraction": opts.shadow}],
    }
    status, body = http("PUT", f"http://{srv.http}/admin/models/{MODEL}/traffic", policy)
    if status != 200:
        raise RuntimeError(f"setting the traffic policy failed: {status} {body[:300]!r}")
    return dict(json.loads(body))


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
        p: _spawn(loadgen_cmd(srv, p, rates[p], seconds, opts, None), opts.workdir / f"probe-{p}.err")
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


def start_loadgen(srv: Turnout, proto: str, rate: float, opts: Options) -> subprocess.Popen[str]:
    cmd = loadgen_cmd(srv, proto, rate, opts.duration, opts, opts.workdir / f"spans-{proto}.npy")
    return _spawn(cmd, opts.workdir / f"loadgen-{proto}.err")


def start_abuse(srv: Turnout, opts: Options, seconds: float) -> subprocess.Popen[str]:
    request_timeout = (
        SHORT_TIMEOUTS["--request-timeout-secs"] if opts.short_timeouts else DEFAULT_REQUEST_TIMEOUT
    )
    cmd = [
        PYTHON, "-m", "benchmarks.abuse", "--http", srv.http, "--grpc", srv.grpc, "--duration", str(seconds),
        "--max-sockets", str(opts.max_sockets), "--hold", str(request_timeout + 15),
    ]  # fmt: skip
    return _spawn(cmd, opts.workdir / "abuse.err")


def _spawn(cmd: list[str], err: Path) -> subprocess.Popen[str]:
    """A child whose one JSON line comes on stdout; its stderr goes to a file (a pipe nobody
    reads during a 10-minute run could fill up and block it)."""
    with err.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)


def server_side(metrics: list[str]) -> str:
    """The server's own mean time per inference by protocol (from Core.infer's histogram, over
    the whole run): beside the clients' latencies, it tells the server's delays from the
    generators' (on a 2-core machine they share the server's cores)."""
    totals: dict[str, list[float]] = {}
    for line in metrics:
        m = re.match(r'turnout_request_duration_seconds_(sum|count)\{.*protocol="(\w+)".*\} (\S+)', line)
        if m:
            totals.setdefault(m.group(2), [0.0, 0.0])[m.group(1) == "count"] += float(m.group(3))
    parts = [
        f"{proto} {1000 * s / n:.2f} ms over {n:,.0f} requests"
        for proto, (s, n) in sorted(totals.items())
        if n
    ]
    return "* the server's own mean time per inference (Core.infer): " + ("; ".join(parts) or "-")


def scrape(srv: Turnout, soak: Soak) -> None:
    status, body = http("GET", f"http://{srv.http}/metrics")
    if status == 200:
        text = body.decode()
        soak.metrics = [ln for ln in text.splitlines() if ln.startswith(METRIC_PREFIXES)]
    status, body = http("GET", f"http://{srv.http}/admin/models/{MODEL}/shadow")
    if status == 200:
        soak.shadow_pairs = list(json.loads(body).get("pairs", []))


def run(opts: Options, soak: Soak, children: list[subprocess.Popen[str]], srv: Turnout) -> None:
    print(f"starting Turnout: {' '.join(srv.cmd)}", flush=True)
    srv.start()
    assert srv.proc is not None
    pid = srv.proc.pid
    soak.policy = set_policy(srv, opts)
    closed_loop(srv, 5.0)  # warm-up: sessions, arenas, the drift reference
    time.sleep(3)  # the warm-up generators' connections close
    soak.baseline = Sample(0.0, rss_kb(pid), fds(pid))
    log = opts.workdir / "turnout.log"
    loaded_before = len(LOADED.findall(log.read_bytes()))
    print(f"baseline: RSS {soak.baseline.rss_kb / 1024:.1f} MiB, {soak.baseline.fds} descriptors", flush=True)
    abuse_for = opts.capacity_seconds + opts.probes * (opts.probe_seconds + 5) + 20 + opts.duration
    abuse = start_abuse(srv, opts, abuse_for) if opts.abuse else None
    if abuse is not None:
        children.append(abuse)
        time.sleep(3)  # the abusers are at work before capacity is measured
    measure_capacity(srv, soak)

    t0 = soak.t0 = time.perf_counter()
    sampler = Sampler(pid, opts.sample_every, t0)
    config = opts.workdir / "repo" / MODEL / "config.pbtxt"
    reloader = Reloader(f"http://{srv.http}", config, opts.workdir / "config.tmp", opts.reload_every)
    gens = {proto: start_loadgen(srv, proto, soak.rates[proto], opts) for proto in PROTOS}
    children.extend(gens.values())
    sampler.start()
    reloader.start()
    limit = t0 + opts.duration + opts.request_timeout + 60  # the generators' own bound, and a margin
    next_note = t0 + 30
    try:
        with CpuMeter(srv.pgid) as meter:
            while any(g.poll() is None for g in gens.values()) and time.perf_counter() < limit:
                if srv.proc.poll() is not None:
                    soak.server_alive = False
                    break
                if time.perf_counter() >= next_note:
                    s = sampler.samples[-1] if sampler.samples else soak.baseline
                    ok = sum(1 for r in reloader.reloads if r.status == 200)
                    print(
                        f"t={time.perf_counter() - t0:5.0f} s  RSS {s.rss_kb / 1024:.1f} MiB  fds {s.fds}  "
                        f"reloads {ok}/{len(reloader.reloads)} ok",
                        flush=True,
                    )
                    next_note += 30
                time.sleep(0.5)
            reloader.done.set()
            for proto, g in gens.items():
                if g.poll() is None:  # past its own time bound, or the server died
                    stop_child(g, grace=0.1)
                out, _ = g.communicate()
                soak.load[proto] = (
                    last_json(out)
                    if g.returncode == 0
                    else {"error": tail(opts.workdir / f"loadgen-{proto}.err")}
                )
            if abuse is not None:
                stop_child(abuse, grace=30)
                out, _ = abuse.communicate()
                soak.abuse = last_json(out) if out.strip() else {"error": tail(opts.workdir / "abuse.err")}
            soak.cpu = meter.read()  # the children have been waited for: their CPU is counted
    finally:
        reloader.done.set()
        reloader.join(65)  # a load call in flight (bounded by its own 60 s timeout)
        soak.reloads = list(reloader.reloads)
    if srv.proc.poll() is not None:
        soak.server_alive = False
        sampler.done.set()
        soak.samples = list(sampler.samples)
        soak.timeline = timeline(soak)
        return
    print(f"load and abuse over; settling {opts.settle:g} s", flush=True)
    time.sleep(opts.settle)
    deadline = time.monotonic() + 15
    while fds(pid) > soak.baseline.fds and time.monotonic() < deadline:
        time.sleep(0.5)
    sampler.done.set()
    sampler.join(5)
    soak.end = Sample(round(time.perf_counter() - t0, 1), rss_kb(pid), fds(pid))
    soak.samples = [*sampler.samples, soak.end]
    soak.versions_loaded = len(LOADED.findall(log.read_bytes())) - loaded_before
    soak.timeline = timeline(soak)
    scrape(srv, soak)


def timeline(soak: Soak) -> list[dict[str, Any]]:
    """The soak in windows of max(10 s, duration / 20): per protocol the requests sent in the window
    that succeeded and their p50/p99 (from the generators' spans files), the failures answered in
    it, the highest RSS and descriptor count sampled, and the reloads started."""
    window = max(10.0, soak.opts.duration / 20)
    spans = {}
    for proto in PROTOS:
        f = soak.opts.workdir / f"spans-{proto}.npy"
        spans[proto] = np.load(f) if f.exists() else np.empty((0, 2))
    rows = []
    for i in range(int(np.ceil(soak.opts.duration / window))):
        a, b = soak.t0 + i * window, soak.t0 + (i + 1) * window
        row: dict[str, Any] = {"t": round(i * window)}
        for proto in PROTOS:
            sp = spans[proto]
            sent = sp[(sp[:, 0] >= a) & (sp[:, 0] < b)]
            ms = (sent[:, 1] - sent[:, 0]) * 1e3
            by_second = soak.load.get(proto, {}).get("errors_by_second", {})
            row[proto] = {
                "ok": len(sent),
                "failed": sum(n for sec, n in by_second.items() if a <= int(sec) + 0.5 < b),
                "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else None,
                "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else None,
            }
        inside = [x for x in soak.samples if i * window <= x.t < (i + 1) * window]
        row["rss_mib"] = round(max(x.rss_kb for x in inside) / 1024, 1) if inside else None
        row["fds"] = max((x.fds for x in inside), default=None)
        row["reloads"] = sum(1 for r in soak.reloads if a <= r.at < b)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def near_reload(second: int, reloads: list[Reload]) -> bool:
    """Does the second ``second`` (of perf_counter) overlap a reload, from 1 s before its load call
    to 5 s after its answer?"""
    return any(second + 1 >= r.at - 1 and second <= r.at + r.seconds + 5 for r in reloads)


def report(soak: Soak) -> str:
    o = soak.opts
    problems = soak.problems()
    lines = [f"# Turnout soak, {soak.started}", ""]
    if o.duration < 600:
        lines += [f"> **Short run ({o.duration:g} s), not the 10-minute soak**: it checks the tooling.", ""]
    lines += [
        f"**Verdict: {'PASS' if not problems else 'FAIL'}**"
        + ("" if not problems else ": " + "; ".join(problems)),
        "",
        *(
            [
                f"**The machine was busy**: {soak.busy()}. Rerun on a quieter machine before reading much into "
                "latencies or into failures that come with overload.",
                "",
            ]
            if soak.busy()
            else []
        ),
        f"* command: `{soak.command}`",
        f"* commit: `{soak.commit}`",
        f"* machine: {os.cpu_count()} cores, **shared with other users** (load average "
        f"{soak.loadavg[0]:.2f} before, {soak.loadavg[1]:.2f} after; during the soak the server used "
        f"{soak.cpu.get('server_cores', 0):.2f} cores, our generators and abusers "
        f"{soak.cpu.get('client_cores', 0):.2f}, everybody else {soak.cpu.get('other_cores', 0):.2f}). "
        "Figures are from one run on a busy machine; latencies are noisy.",
        f"* server: `turnout serve <copy of the demo repository> {' '.join(soak.server_args)}` "
        "(drift on by default)",
        f"* traffic policy of `{MODEL}`: `{json.dumps({k: soak.policy.get(k) for k in ('stable', 'canaries', 'shadows')})}`",
        "",
        "## Legitimate requests",
        "",
        f"Capacity, in the soak's own conditions (beside the abusers, with the traffic policy, on the machine "
        f"the generators share): closed loop at concurrency 32, both protocols at once for {o.capacity_seconds:g} s; "
        f"then the highest fraction of that rate the soak's open-loop generators are served at with no failure "
        f"and p99 under {o.probe_p99_ms:g} ms ({len(soak.probes)} probes of {o.probe_seconds:g} s, bisecting): "
        f"**{soak.sustained:.2f}**, the sustained capacity. Soak: open loop, Poisson arrivals, "
        f"{o.rate_fraction:.0%} of each protocol's sustained capacity, {o.duration:g} s, client deadline "
        f"{o.request_timeout:g} s. Latency from the scheduled send time.",
        "",
        "| protocol | closed-loop capacity req/s | sustained req/s | offered req/s | sent | ok | failed | "
        "failures by code | near a reload | p50 ms | p99 ms | max ms | send lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for proto in PROTOS:
        r = soak.load.get(proto, {})
        errs = r.get("errors", {})
        by_second = r.get("errors_by_second", {}).items()
        near = sum(n for sec, n in by_second if near_reload(int(sec), soak.reloads))
        lines.append(
            f"| {proto} | {soak.capacity.get(proto, {}).get('req_per_s', '-')} | "
            f"{round(soak.sustained * float(soak.capacity.get(proto, {}).get('req_per_s') or 0), 1)} | "
            f"{soak.rates.get(proto, '-')} | "
            f"{r.get('requests', '-')} | {r.get('ok', '-')} | {sum(errs.values()) if 'error' not in r else 'run failed'} | "
            f"{json.dumps(errs) if errs else '-'} | {near if errs else '-'} | {_ms(r.get('p50_ms'))} | "
            f"{_ms(r.get('p99_ms'))} | {_ms(r.get('max_ms'))} | {_ms(r.get('send_lag_p99_ms'))} |"
        )
    cap = {p: soak.capacity.get(p, {}) for p in PROTOS}
    if soak.probes:
        lines += ["", "Capacity probes (open loop, both protocols at once):", ""]
        lines += [
            "| fraction | held | gRPC ok | gRPC failed | gRPC p99 ms | HTTP ok | HTTP failed | HTTP p99 ms |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for pr in soak.probes:
            g, h = pr.get("grpc", {}), pr.get("http", {})
            lines.append(
                f"| {pr['fraction']:.3f} | {'yes' if pr['held'] else 'no'} | {g.get('ok', '-')} | "
                f"{sum((g.get('errors') or {}).values())} | {_ms(g.get('p99_ms'))} | {h.get('ok', '-')} | "
                f"{sum((h.get('errors') or {}).values())} | {_ms(h.get('p99_ms'))} |"
            )
    lines += [
        "",
        "CPU in cores (server process / our generators and abusers / everybody else on the machine): "
        + "; ".join(
            f"capacity {p} {c.get('server_cores')} / {c.get('client_cores')} / {c.get('other_cores')}"
            for p, c in cap.items()
        )
        + f"; soak {soak.cpu.get('server_cores')} / {soak.cpu.get('client_cores')} / {soak.cpu.get('other_cores')}. "
        "When the server gets fewer cores in the soak than in the capacity runs, the offered rate is more "
        f"than {o.rate_fraction:.0%} of what it could do then.",
    ]
    if soak.timeline:
        w = soak.timeline[1]["t"] if len(soak.timeline) > 1 else o.duration
        lines += [
            "",
            f"Over time, in windows of {w} s (ok and latency: requests sent in the window; failed: answered "
            "in it; RSS and descriptors: highest sample; reloads started):",
            "",
            "| t s | gRPC ok | failed | p50 ms | p99 ms | HTTP ok | failed | p50 ms | p99 ms | RSS MiB | fds | reloads |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in soak.timeline:
            g, h = row["grpc"], row["http"]
            lines.append(
                f"| {row['t']} | {g['ok']} | {g['failed']} | {_ms(g['p50_ms'])} | {_ms(g['p99_ms'])} | "
                f"{h['ok']} | {h['failed']} | {_ms(h['p50_ms'])} | {_ms(h['p99_ms'])} | "
                f"{row['rss_mib'] if row['rss_mib'] is not None else '-'} | {row['fds'] if row['fds'] is not None else '-'} | "
                f"{row['reloads'] or ''} |"
            )
    if any("CLIENT_DROPPED" in r.get("errors", {}) for r in soak.load.values()):
        lines += [
            "",
            "`CLIENT_DROPPED`: due but never sent, because the generator already had 2048 requests "
            "outstanding: the server (or the machine) fell seconds behind the offered rate.",
        ]
    examples = {p: r.get("error_examples") or r.get("error") for p, r in soak.load.items()}
    if any(examples.values()):
        lines += ["", "Error examples: `" + json.dumps(examples)[:1000] + "`"]
    durations = [r.seconds for r in soak.reloads]
    lines += [
        "",
        "## Reloads, canary, shadow, drift",
        "",
        f"* reloads of `{MODEL}` (every {o.reload_every:g} s, after a new comment line in its config.pbtxt): {len(soak.reloads)}, "
        f"{sum(1 for r in soak.reloads if r.status == 200)} answered 200; load call median "
        f"{statistics.median(durations) if durations else 0:.2f} s, max {max(durations, default=0):.2f} s; "
        f"{soak.versions_loaded} version loads in the server log",
    ]
    for rl in soak.reloads:
        if rl.status != 200:
            lines.append(f"  * failed reload: HTTP {rl.status} {rl.detail!r}")
    for p in soak.shadow_pairs:
        lines.append(f"* shadow pair: `{json.dumps(p)}`")
    lines += ["", server_side(soak.metrics)]
    growth = soak.rss_growth_pct()
    peak = max((s.rss_kb for s in soak.samples), default=0)
    peak_fds = max((s.fds for s in soak.samples), default=0)
    b, e = soak.baseline, soak.end
    lines += [
        "",
        "## Memory and descriptors (the server process)",
        "",
        "Baseline: idle after a warm-up, before the abusers, the capacity runs and the soak load. End: idle, "
        f"{o.settle:g} s after they stopped. Sampled every {o.sample_every:g} s in between.",
        "",
        "| | baseline | peak | end | growth |",
        "|---|---|---|---|---|",
        f"| RSS MiB | {b.rss_kb / 1024 if b else 0:.1f} | {peak / 1024:.1f} | {e.rss_kb / 1024 if e else 0:.1f} | "
        f"{growth if growth is not None else '-'} % |",
        f"| descriptors | {b.fds if b else '-'} | {peak_fds} | {e.fds if e else '-'} | "
        f"{(e.fds - b.fds) if b and e else '-'} |",
        "",
        "## Abusive clients",
        "",
    ]
    if not o.abuse:
        lines.append("None (`--no-abuse`).")
    elif "abusers" not in soak.abuse:
        lines.append(f"The abuse process failed: `{soak.abuse.get('error')}`")
    else:
        lines += [
            f"At most {soak.abuse.get('max_sockets')} sockets at once, all to 127.0.0.1; "
            f"{soak.abuse.get('seconds')} s.",
            "",
            "| abuser | rounds | connections | closed by server | closed by us | cut at end | connect failed | "
            "what the server answered |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, t in soak.abuse["abusers"].items():
            lines.append(
                f"| {name} | {t['rounds']} | {t['connections']} | {t['closed_by_server']} | {t['closed_by_us']} | "
                f"{t['cut_at_end']} | {t['connect_failed']} | {json.dumps(t['answers']) if t['answers'] else '-'} |"
            )
    lines += [
        "",
        "## Metrics at the end (`/metrics`)",
        "",
        "`turnout_drift_status`: 0 collecting, 1 ok, 2 warning, 3 drift.",
        "",
        "```",
        *soak.metrics,
        "```",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> Options:
    d = Options()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=d.duration, help="seconds of soak load")
    ap.add_argument("--rate-fraction", type=float, default=d.rate_fraction, help="of the measured capacity")
    ap.add_argument("--reload-every", type=float, default=d.reload_every, help="seconds between reloads")
    ap.add_argument("--no-abuse", dest="abuse", action="store_false", help="no abusive clients")
    ap.add_argument("--short-timeouts", action="store_true", help=f"server edge timeouts {SHORT_TIMEOUTS}")
    ap.add_argument("--capacity-seconds", type=float, default=d.capacity_seconds)
    ap.add_argument("--probe-seconds", type=float, default=d.probe_seconds, help="each open-loop probe")
    ap.add_argument("--probes", type=int, default=d.probes, help="open-loop probes of the capacity search")
    ap.add_argument("--probe-p99-ms", type=float, default=d.probe_p99_ms, help="a probe holds under this p99")
    ap.add_argument("--canary", type=float, default=d.canary, help="weight of the canary (mlp version 2)")
    ap.add_argument("--shadow", type=float, default=d.shadow, help="fraction mirrored to the other version")
    ap.add_argument("--settle", type=float, default=d.settle, help="seconds before the end sample")
    ap.add_argument("--sample-every", type=float, default=d.sample_every)
    ap.add_argument("--max-sockets", type=int, default=d.max_sockets, help="abusers' sockets at once")
    ap.add_argument("--max-rss-growth", type=float, default=d.max_rss_growth, help="percent")
    ap.add_argument("--request-timeout", type=float, default=d.request_timeout, help="legitimate clients")
    ap.add_argument("--workdir", type=Path, default=d.workdir, help="repository copy, server log, samples")
    ap.add_argument("--out", type=Path, default=d.out, help="the summary (Markdown; JSON next to it)")
    opts = Options(**vars(ap.parse_args(argv)))
    positive = (
        "duration",
        "rate_fraction",
        "reload_every",
        "capacity_seconds",
        "probe_seconds",
        "probes",
        "sample_every",
        "request_timeout",
    )
    if bad := [name for name in positive if getattr(opts, name) <= 0]:
        ap.error(f"must be > 0: {', '.join('--' + b.replace('_', '-') for b in bad)}")
    return opts


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job may start with it ignored
        signal.signal(sig, _interrupt)
    server_args = [*EXPLICIT, "--state-dir", str(opts.workdir / "state")]
    if opts.short_timeouts:
        server_args += [a for flag, v in SHORT_TIMEOUTS.items() for a in (flag, f"{v:g}")]
    shutil.rmtree(opts.workdir, ignore_errors=True)
    opts.workdir.mkdir(parents=True)
    shutil.copytree(DEMO_REPO, opts.workdir / "repo")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    soak = Soak(
        opts=opts,
        server_args=server_args,
        command="python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        commit=git("rev-parse", "--short", "HEAD") + dirty,
    )
    srv = Turnout(opts.workdir / "repo", opts.workdir, extra_args=tuple(server_args), source=ROOT)
    children: list[subprocess.Popen[str]] = []
    la0 = loadavg()
    try:
        run(opts, soak, children, srv)
    finally:
        for child in children:
            stop_child(child, grace=5)
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
        if srv.proc is not None:
            soak.server_exit = srv.proc.returncode
    soak.loadavg = (la0, loadavg())
    text = report(soak)
    print(text)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    raw = {**asdict(soak), "opts": {k: str(v) for k, v in asdict(opts).items()}, "problems": soak.problems()}
    opts.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(f"wrote {opts.out} and {opts.out.with_suffix('.json')}; server log {opts.workdir / 'turnout.log'}")
    return 1 if soak.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
