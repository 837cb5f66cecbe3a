"""Orchestrate the Turnout benchmark: models -> raw onnxruntime -> one Turnout server -> points
-> (optional) peers -> benchmarks/results/RESULTS.md + throughput.png + raw/*.jsonl.

Points, for model x protocol x concurrency (default mlp_small,mlp_large x grpc,http x 1,8,32):
  * ``closed``: our load generator (benchmarks.loadgen), closed loop
  * ``neutral``: the team harness's generators via its sweep.py (as the peers were measured)
  * ``perf_analyzer``: Triton's perf_analyzer (HTTP = binary tensor extension)
then ``latency_c1`` (concurrency 1, 5 runs, medians), ``rows16`` (mlp_large, gRPC, 16-row
requests, concurrency 16) and ``overload`` (open loop at 2x the best closed-loop throughput).

Usage: python -m benchmarks.run [--quick] [--duration S] [--models ...] [--protocols grpc,http]
           [--concurrency 1,8,32] [--peers [LIST]] [--skip-perf-analyzer] [--skip-neutral] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import models, points, report
from benchmarks.common import HERE, PEERS_DIR, PYTHON, append_jsonl, read_jsonl
from benchmarks.cpu import pgid_rss_mb
from benchmarks.server import Turnout, http_status

ALL_PEERS = "mlserver,mlserver-batch,kserve,triton,triton-nodelay"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s points, short raw-ORT and PA windows"
    )
    ap.add_argument("--duration", type=float, help="measured seconds per point (default 5, quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1, quick 0.3)")
    ap.add_argument("--models", default="mlp_small,mlp_large")
    ap.add_argument("--protocols", default="grpc,http")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--repeats", type=int, help="runs of the concurrency-1 latency point (default 5, quick 3)"
    )
    ap.add_argument(
        "--peers", nargs="?", const=ALL_PEERS, default="", help=f"also run peers (default {ALL_PEERS})"
    )
    ap.add_argument("--peers-root", type=Path, default=Path(os.environ.get("PEERS", "/tmp/peers")))
    ap.add_argument("--skip-perf-analyzer", action="store_true")
    ap.add_argument("--skip-neutral", action="store_true", help="skip the harness's sweep.py generators")
    ap.add_argument("--skip-raw-ort", action="store_true")
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--server-args", default="", help="extra 'turnout serve' flags, e.g. '--infer-threads 1'")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/turnout-bench"), help="models, server log")
    a = ap.parse_args(argv)
    a.duration = a.duration or (1.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if a.quick else 1.0)
    a.repeats = a.repeats or (3 if a.quick else 5)
    a.models, a.protocols = a.models.split(","), a.protocols.split(",")
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    return a


def machine_info() -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import grpc
    import onnxruntime

    repo = HERE.parent
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": sh("nproc"),
        "cpu_model": sh("lscpu | sed -n 's/^Model name: *//p'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "turnout_commit": sh(f"git -C {repo} rev-parse --short HEAD"),
        "turnout_dirty": bool(sh(f"git -C {repo} status --porcelain -- server model_store protos")),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def show(r: dict[str, Any]) -> None:
    if "error" in r:
        log(f"  {r.get('kind')} {r.get('model')} {r.get('proto')} ERROR {r['error']}")
        return
    c = f"c={r['concurrency']}" if r.get("concurrency") else f"{r.get('offered_rps'):.0f}/s"
    log(
        f"  {r['kind']:13s} {r['model']:9s} {r['proto']:4s} {c:<8} {r['infer_per_s']:>9,.0f} inf/s "
        f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms b={r.get('server_avg_batch')} err={r.get('errors')} "
        f"cpu srv {r.get('server_cores')} cli {r.get('client_cores')} other {r.get('other_cores')}"
    )


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    raw = a.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in raw.glob("*.jsonl"):
        f.unlink()
    meta = {"cmd": "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv),
            "args": {k: str(v) for k, v in vars(a).items()}, **machine_info()}  # fmt: skip
    (raw / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"machine: {meta['nproc']} cores, {meta['cpu_model']}, load {meta['loadavg_at_start']}")

    repo = models.build(a.workdir / "models")
    onnx_dir = a.workdir / "models" / "onnx"
    if not a.skip_raw_ort:
        log("raw onnxruntime")
        secs = "0.2" if a.quick else "1.5"
        p = subprocess.run([PYTHON, "-m", "benchmarks.raw_ort", str(onnx_dir), "--seconds", secs,
                            "--models", ",".join(a.models)], capture_output=True, text=True, check=True)  # fmt: skip
        for line in p.stdout.splitlines():
            append_jsonl(raw / "raw_ort.jsonl", json.loads(line))

    srv = Turnout(repo, a.workdir / "server", extra_args=tuple(shlex.split(a.server_args)))
    srv.start()
    meta["server_cmd"] = shlex.join(srv.cmd)
    (raw / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"turnout up: http {srv.http} grpc {srv.grpc} pgid {srv.pgid} rss {pgid_rss_mb(srv.pgid):.0f} MiB")
    out = raw / "turnout.jsonl"

    def rec(r: dict[str, Any]) -> dict[str, Any]:
        append_jsonl(out, r)
        show(r)
        return r

    lg = {"warmup": a.warmup, "duration": a.duration}
    try:
        for model in a.models:
            for proto in a.protocols:
                for c in a.concurrency:
                    rec(points.loadgen(srv, "closed", proto=proto, model=model, concurrency=c, **lg))
                    if not a.skip_neutral and (PEERS_DIR / "sweep.py").exists():
                        rec(points.neutral(srv, proto=proto, model=model, concurrency=c,
                                           duration=max(1, round(a.duration))))  # fmt: skip
                    if not a.skip_perf_analyzer:
                        rec(points.perf(srv, proto=proto, model=model, concurrency=c,
                                        interval_ms=500 if a.quick else 3000, max_trials=3 if a.quick else 6,
                                        stability=50 if a.quick else 10))  # fmt: skip
        for model in a.models:
            for proto in a.protocols:
                for i in range(a.repeats):
                    r = points.loadgen(srv, "latency_c1", proto=proto, model=model, concurrency=1,
                                       warmup=min(a.warmup, 0.5), duration=min(a.duration, 0.5 if a.quick else 3))  # fmt: skip
                    rec({**r, "repeat": i})
        if "mlp_large" in a.models and "grpc" in a.protocols:
            rec(points.loadgen(srv, "rows16", proto="grpc", model="mlp_large", rows=16, concurrency=16, **lg))
        if not a.skip_overload:
            overload(srv, a, rec)
    finally:
        srv.stop()
        log("turnout stopped")
    if a.peers:
        run_peers(a, raw)
    report.write(a.out)
    log(f"wrote {a.out / 'RESULTS.md'} and {a.out / 'throughput.png'}")


def overload(srv: Turnout, a: argparse.Namespace, rec: Any) -> None:
    """Open loop at 2x the best closed-loop rate of our generator, on the first model."""
    model = a.models[0]
    rows = [
        r
        for r in read_jsonl(a.out / "raw" / "turnout.jsonl")
        if r.get("kind") == "closed" and "error" not in r
    ]
    for proto in a.protocols:
        cap = max((r["req_per_s"] for r in rows if r["model"] == model and r["proto"] == proto), default=0.0)
        if cap <= 0:
            continue
        time.sleep(1.0)  # let the previous point's backlog clear
        opts: dict[str, Any] = {"mode": "open", "rate": round(2 * cap), "warmup": a.warmup, "duration": a.duration,
                                "timeout": 5, "max_outstanding": 2048}  # fmt: skip
        if proto == "http":
            opts["connections"] = 512  # > the model's queue (256): lets Turnout's 503 shedding show
        r = points.loadgen(srv, "overload", proto=proto, model=model, **opts)
        rec({**r, "capacity_rps": cap})


def run_peers(a: argparse.Namespace, raw: Path) -> None:
    root = a.peers_root
    if not (PEERS_DIR / "run_peer.sh").exists() or not root.exists():
        log(f"peers skipped: {PEERS_DIR}/run_peer.sh or {root} (made by setup.sh) missing")
        return
    if http_status("http://127.0.0.1:8000/v2/health/live") or http_status("http://127.0.0.1:8000/"):
        log("peers skipped: something listens on 127.0.0.1:8000")
        return
    base_py = root / "base-venv" / "bin" / "python"
    env = dict(os.environ, PEERS=str(root), BASE_PY=str(base_py if base_py.exists() else PYTHON),
               DURATION=str(max(1, round(a.duration))))  # fmt: skip
    if a.skip_perf_analyzer:
        env["GENERATORS"] = "neutral"
    protos = ",".join("rest" if p == "http" else p for p in a.protocols)
    for peer in a.peers.split(","):
        venv = {"mlserver-batch": "mlserver", "triton-nodelay": "pytriton", "triton": "pytriton"}.get(
            peer, peer
        )
        if not (root / f"{venv}-venv").exists():
            log(f"peer {peer}: {root}/{venv}-venv missing, skipped")
            continue
        log(f"peer {peer}")
        dest = raw / f"peer-{peer}.jsonl"
        cmd = ["bash", str(PEERS_DIR / "run_peer.sh"), peer, "--models", ",".join(a.models), "--protocols", protos,
               "--concurrency", ",".join(map(str, a.concurrency)), "--out", str(dest)]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            log(f"peer {peer} failed: {(p.stdout + p.stderr).strip().splitlines()[-3:]}")
        server_log = root / "results" / f"{peer}.server.log"
        if server_log.exists():
            shutil.copy(server_log, raw / f"peer-{peer}.server.log")


if __name__ == "__main__":
    main()
