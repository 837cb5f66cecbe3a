"""The soak's vocabulary and its verdict: the options, the samples, what a run collected
(``Soak``, with the pass/fail rules) and the Markdown report ``benchmarks.soak`` writes."""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import HERE

MODEL = "mlp"


PROTOS = ("grpc", "http")


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


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_kb: int
    fds: int


@dataclass
class Reload:
    at: float  # perf_counter when the load call was sent
    seconds: float
    status: int
    detail: str


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
