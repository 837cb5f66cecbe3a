"""What the features cost, measured side by side in one run (medians of alternating runs):

* drift monitoring on vs off: mlp_small throughput at concurrency 32 (gRPC and HTTP);
* dynamic batching on vs off: median latency at concurrency 1 (gRPC and HTTP);
* shadow traffic: 100 % mirrored to a second version vs none, p50 at concurrency 8 (gRPC);
* isolation: p99 of mlp_small at concurrency 4 while mlp_large is loaded and unloaded over and
  over, vs without.

    python -m benchmarks.features [--duration 5] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import models
from benchmarks.loadgen import Config, run_sync
from benchmarks.server import Turnout


def _load(srv: Turnout, proto: str, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    target = srv.grpc if proto == "grpc" else srv.http
    cfg = Config(
        proto=proto, target=target, model=model, concurrency=concurrency, warmup=1.0, duration=duration
    )
    return run_sync(cfg)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--only", default="drift,batching,shadow,isolation", help="comma-separated sections")
    ns = ap.parse_args()
    only = set(ns.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="turnout-features-"))
    repo = models.build(work / "models")
    rows: list[str] = []
    raw: dict[str, Any] = {}

    def line(name: str, unit: str, a: list[float], b: list[float], label_a: str, label_b: str) -> None:
        ma, mb = statistics.median(a), statistics.median(b)
        raw[name] = {label_a: a, label_b: b}
        rows.append(f"| {name} | {label_a}: {ma:,.3f} {unit} | {label_b}: {mb:,.3f} {unit} | {mb / ma:.3f} |")
        print(rows[-1], flush=True)

    for proto in ("grpc", "http") if "drift" in only else ():
        a, b = ab(
            repo,
            work,
            ("--drift", "false"),
            ("--drift", "true"),
            lambda s, p=proto: _load(s, p, "mlp_small", 32, ns.duration)["infer_per_s"],
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

    def isolation(load_b: bool) -> float:
        srv = _server(repo, work, "--model-control-mode", "explicit", "--load-model", "mlp_small")
        stop = threading.Event()
        cycles = [0]

        def churn() -> None:
            base = f"http://{srv.http}/v2/repository/models/mlp_large"
            while not stop.is_set():
                _post(f"{base}/load")
                _post(f"{base}/unload")
                cycles[0] += 1

        t = threading.Thread(target=churn, daemon=True)
        try:
            if load_b:
                t.start()
            p99 = float(_load(srv, "grpc", "mlp_small", 4, ns.duration)["p99_ms"])
        finally:
            stop.set()
            if load_b:
                t.join(60)
            srv.stop()
        raw.setdefault("isolation_load_cycles", []).append(cycles[0])
        return p99

    va, vb = [], []
    for _ in range(ns.repeats if "isolation" in only else 0):
        va.append(isolation(False))
        vb.append(isolation(True))
    if va:
        line("mlp_small grpc c=4 p99 while mlp_large loads/unloads", "ms", va, vb, "quiet", "loading")

    ns.out.mkdir(parents=True, exist_ok=True)
    md = [
        "# Feature costs (medians of alternating runs, fresh server per run)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on the 2-core VM, loopback, our load generator "
        f"(`benchmarks/loadgen.py`), {ns.duration:.0f} s per run after 1 s warm-up, {ns.repeats} runs per side "
        "(5 for the latency-at-concurrency-1 rows).",
        "",
        "Command: `.venv/bin/python -m benchmarks.features"
        + (f" --duration {ns.duration:g} --repeats {ns.repeats}")
        + "`",
        "",
        "| what | A | B | B / A |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Load/unload cycles of mlp_large during the isolation runs: {raw.get('isolation_load_cycles')}.",
        "",
        "Raw values:",
        "",
        "```json",
        json.dumps(raw, indent=1),
        "```",
    ]
    name = "FEATURES.md" if len(only) == 4 else f"FEATURES-{'-'.join(sorted(only))}.md"
    (ns.out / name).write_text("\n".join(md) + "\n")
    print(f"wrote {ns.out / name}")


if __name__ == "__main__":
    main()
