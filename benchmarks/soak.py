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
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON
from benchmarks.cpu import CpuMeter, loadavg
from benchmarks.server import ROOT, Turnout
from benchmarks.soak_capacity import (
    closed_loop,
    last_json,
    loadgen_cmd,
    measure_capacity,
    spawn,
    stop_child,
    tail,
)
from benchmarks.soak_report import MODEL, PROTOS, Options, Reload, Sample, Soak, report, timeline

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


# ----------------------------------------------------------------------------- background threads


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


def start_loadgen(srv: Turnout, proto: str, rate: float, opts: Options) -> subprocess.Popen[str]:
    cmd = loadgen_cmd(srv, proto, rate, opts.duration, opts, opts.workdir / f"spans-{proto}.npy")
    return spawn(cmd, opts.workdir / f"loadgen-{proto}.err")


def start_abuse(srv: Turnout, opts: Options, seconds: float) -> subprocess.Popen[str]:
    request_timeout = (
        SHORT_TIMEOUTS["--request-timeout-secs"] if opts.short_timeouts else DEFAULT_REQUEST_TIMEOUT
    )
    cmd = [
        PYTHON, "-m", "benchmarks.abuse", "--http", srv.http, "--grpc", srv.grpc, "--duration", str(seconds),
        "--max-sockets", str(opts.max_sockets), "--hold", str(request_timeout + 15),
    ]  # fmt: skip
    return spawn(cmd, opts.workdir / "abuse.err")


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


# ----------------------------------------------------------------------------- report


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
