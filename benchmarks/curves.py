"""Curves: how Turnout's cost grows along the axes production traffic moves on, each swept in one
run beside the limit measured in the same run and, where the team harness serves the same
model, beside the peers.

* ``payload``: an identity model (FP32 in, FP32 out) at 1 KB, 64 KB, 1 MB and 16 MB per request
  over gRPC (raw contents), HTTP with the binary extension and HTTP JSON (up to 1 MB), at
  concurrency 1 and 8; the limit: the same bytes echoed through a bare loopback socket pair
  (:mod:`benchmarks.echo`). MB/s (request bytes, one way), p50, p99.
* ``models``: 1, 10 and 50 loaded copies of mlp_small (plus 2 of mlp_large in every repository),
  traffic spread evenly over the mlp_small copies at concurrency 32: load time, resident memory
  per loaded model, throughput and p99.
* ``load``: open loop (Poisson arrivals, latency from the scheduled send) at 25/50/80/95 % of
  each server's own closed-loop maximum (c=32), mlp_small and mlp_large, both protocols; Turnout
  also at 80 % of the best peer's maximum, and at concurrency 1 (the c=1 p50 figures), next to
  in-process onnxruntime (one intra-op thread, as Turnout runs it).
* ``connections``: 10, 100, 1,000 and 4,000 client connections (gRPC channels) used in turn at a
  fixed total rate, mlp_small.
* ``profile``: where the server's CPU goes at mlp_small c=32 (py-spy samples split into transport,
  core, model and the event loop), when py-spy is installed.

Every point records the server's CPU per request (its process group's CPU over the run divided by
the requests answered). Writes ``CURVES.md``, ``curves-<axis>.png`` and ``raw/curves.jsonl``.

    python -m benchmarks.curves [--axes payload,models,load,connections,profile] [--duration 3]
                                [--peers kserve,triton-nodelay] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import curves_report, echo, models, perf_analyzer
from benchmarks.common import HERE, PYTHON, append_jsonl, read_jsonl
from benchmarks.cpu import CpuMeter, pgid_rss_mb
from benchmarks.peers import Peer, available
from benchmarks.raw_ort import session
from benchmarks.server import Turnout, model_counters

AXES = ("payload", "models", "load", "connections", "profile")
SIZES = {"1 KB": 1 << 10, "64 KB": 64 << 10, "1 MB": 1 << 20, "16 MB": 16 << 20}
JSON_MAX = 1 << 20
MODEL_COUNTS = (1, 10, 50)
FRACTIONS = (0.25, 0.5, 0.8, 0.95)
CONNECTIONS = (10, 100, 1000, 4000)
CONNECTIONS_RATE = 1000.0  # requests/s in total, whatever the number of connections

IDENTITY_CONFIG = """name: "identity"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "input" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
"""

Row = dict[str, Any]
LOADGEN = "turnout-loadgen"  # benchmarks.loadgen's name in its rows


def log(msg: str) -> None:
    print(f"[curves {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- repositories


def identity_repo(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["rows", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["rows", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="curves")
    model.ir_version = 8
    d = root / "identity" / "1"
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(d / "model.onnx"))
    (root / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    return root


def copies_repo(base: Path, root: Path, small: int, large: int = 2) -> tuple[Path, list[str]]:
    """``small`` copies of mlp_small and ``large`` of mlp_large, each its own model."""
    names = []
    for model, n in (("mlp_small", small), ("mlp_large", large)):
        config = (base / model / "config.pbtxt").read_text()
        for i in range(n):
            name = f"{model}_{i:02d}"
            (root / name / "1").mkdir(parents=True, exist_ok=True)
            os.link(base / model / "1" / "model.onnx", root / name / "1" / "model.onnx")
            (root / name / "config.pbtxt").write_text(config.replace(f'name: "{model}"', f'name: "{name}"'))
            if model == "mlp_small":
                names.append(name)
    return root, names


# ----------------------------------------------------------------------------- one point


def generate(target: str, pgid: int, *, proto: str, model: str, **opts: Any) -> Row:
    """One run of benchmarks.loadgen against ``target``, with the server's CPU over it."""
    cmd = [PYTHON, "-m", "benchmarks.loadgen", "--proto", proto, "--target", target, "--model", model]
    for k, v in opts.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    limit = float(opts.get("warmup", 1)) + float(opts.get("duration", 5)) + 120
    with CpuMeter(pgid) as meter:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=HERE.parent)
        cpu = meter.read()
    if p.returncode != 0:
        return {"error": " | ".join((p.stdout + p.stderr).strip().splitlines()[-3:]), **cpu}
    r: Row = json.loads(p.stdout.strip().splitlines()[-1])
    r.pop("config", None)
    r.pop("errors_by_second", None)
    r.update(cpu)
    answered = r["req_per_s"] * (float(opts.get("warmup", 1)) + float(opts.get("duration", 5)))
    r["server_us_per_req"] = round(cpu["server_cpu_s"] / answered * 1e6, 1) if answered else None
    r["rss_mb"] = round(pgid_rss_mb(pgid), 1)
    return r


class Run:
    def __init__(self, out: Path, duration: float, work: Path) -> None:
        self.raw = out / "raw" / "curves.jsonl"
        self.raw.parent.mkdir(parents=True, exist_ok=True)
        self.raw.write_text("")
        self.duration = duration
        self.work = work
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        row["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.rows.append(row)
        append_jsonl(self.raw, row)
        keys = (
            "axis",
            "server",
            "proto",
            "model",
            "size",
            "concurrency",
            "offered_rps",
            "connections",
            "models",
        )
        head = " ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)
        figures = ("req_per_s", "mb_per_s", "p50_ms", "p99_ms", "server_us_per_req", "error_share", "error")
        log(f"{head}: " + " ".join(f"{k}={row[k]}" for k in figures if row.get(k) is not None))
        return row

    def turnout(self, repo: Path, name: str, *args: str) -> Turnout:
        srv = Turnout(repo, self.work / f"turnout-{name}-{time.monotonic_ns()}", extra_args=args)
        srv.start()
        return srv


# ----------------------------------------------------------------------------- axes


def _payload_points(run: Run, server: str, http: str, grpc: str, pgid: int) -> None:
    for label, size in SIZES.items():
        for proto, binary in (("grpc", False), ("http-binary", True), ("http-json", False)):
            if proto == "http-json" and size > JSON_MAX:
                continue
            for c in (1, 8):
                wire = "grpc" if proto == "grpc" else "http"
                r = generate(grpc if wire == "grpc" else http, pgid, proto=wire, model=MODEL_NAME[server],
                             width=size // 4, concurrency=c, duration=run.duration, warmup=1,
                             http_binary=binary, timeout=30)  # fmt: skip
                r["mb_per_s"] = round(r.get("req_per_s", 0) * size / 1e6, 1)
                run.add({**r, "axis": "payload", "server": server, "proto": proto, "size": label,
                         "bytes": size, "concurrency": c})  # fmt: skip


# the harness's KServe wrapper serves the files mlp_small.onnx and mlp_large.onnx of a directory:
# the identity model goes in under those names
MODEL_NAME = {"turnout": "identity", "kserve": "mlp_small"}
KSERVE_LIMITS = (
    "--grpc_max_send_message_length",
    str(64 << 20),
    "--grpc_max_receive_message_length",
    str(64 << 20),
)


def axis_payload(run: Run, base: Path, peers: list[str], peers_root: Path) -> None:
    repo = identity_repo(run.work / "identity-repo")
    for label, size in SIZES.items():
        for c in (1, 8):
            r = echo.measure(size, c, 1.0, run.duration, run.work)
            run.add({"axis": "payload", "server": "loopback", "proto": "tcp", "size": label, "bytes": size,
                     "concurrency": c, **r})  # fmt: skip
    srv = run.turnout(repo, "payload")
    try:
        _payload_points(run, "turnout", srv.http, srv.grpc, srv.pgid)
    finally:
        srv.stop()
    if "kserve" in peers and available(peers_root, "kserve"):
        as_mlp = run.work / "identity-as-mlp"
        as_mlp.mkdir(exist_ok=True)
        for name in ("mlp_small", "mlp_large"):
            shutil.copyfile(repo / "identity" / "1" / "model.onnx", as_mlp / f"{name}.onnx")
        peer = Peer("kserve", peers_root, as_mlp, run.work / "peer-kserve-identity.log", KSERVE_LIMITS)
        try:
            peer.start()
            _payload_points(run, "kserve", peer.http, peer.grpc, peer.pgid)
        except RuntimeError as exc:
            log(f"peer kserve (identity): {exc}")
        finally:
            peer.stop()


def axis_models(run: Run, base: Path) -> None:
    for n in MODEL_COUNTS:
        repo, names = copies_repo(base, run.work / f"repo-{n}", n)
        t0 = time.monotonic()
        srv = run.turnout(repo, f"models-{n}")
        load_s = time.monotonic() - t0
        try:
            rss = pgid_rss_mb(srv.pgid)
            for proto in ("grpc", "http"):
                r = generate(srv.grpc if proto == "grpc" else srv.http, srv.pgid, proto=proto, model=names[0],
                             spread_models=",".join(names), concurrency=32, duration=run.duration, warmup=1)  # fmt: skip
                run.add({**r, "axis": "models", "server": "turnout", "proto": proto, "models": n,
                         "loaded": n + 2, "load_s": round(load_s, 2), "rss_idle_mb": round(rss, 1)})  # fmt: skip
        finally:
            srv.stop()


def _load_sweep(
    run: Run, name: str, http: str, grpc: str, pgid: int, extra: Callable[[str, str], list[float]]
) -> None:
    for model in ("mlp_small", "mlp_large"):
        for proto in ("grpc", "http"):
            target = grpc if proto == "grpc" else http
            before = model_counters(http, model) if name == "turnout" else None
            top = generate(
                target, pgid, proto=proto, model=model, concurrency=32, duration=run.duration, warmup=1
            )
            if before is not None:
                top.update(_execution_figures(before, model_counters(http, model), top.get("req_per_s") or 0.0))
            top = run.add({**top, "axis": "load", "server": name, "kind": "max", "concurrency": 32})
            peak = top.get("req_per_s") or 0.0
            rates = [(f, f * peak) for f in FRACTIONS] + [(None, r) for r in extra(model, proto)]
            for fraction, rate in rates:
                if rate <= 0:
                    continue
                r = generate(target, pgid, proto=proto, model=model, mode="open", arrival="poisson",
                             rate=round(rate, 1), duration=run.duration, warmup=1, max_outstanding=4096)  # fmt: skip
                run.add({**r, "axis": "load", "server": name, "kind": "open", "fraction": fraction,
                         "of_max_rps": peak})  # fmt: skip
            if name == "turnout":
                r = generate(
                    target, pgid, proto=proto, model=model, concurrency=1, duration=run.duration, warmup=1
                )
                run.add({**r, "axis": "load", "server": name, "kind": "c1", "concurrency": 1})


def best_peer_80(rows: list[Row], model: str, proto: str, generator: str = LOADGEN) -> list[float]:
    peaks = [r["req_per_s"] for r in rows if r.get("axis") == "load" and r.get("kind") == "max"
             and r["server"] != "turnout" and r.get("model") == model and r.get("proto") == proto
             and r.get("generator") == generator and r.get("req_per_s")]  # fmt: skip
    return [0.8 * max(peaks)] if peaks else []


def pa_point(target: str, pgid: int, *, proto: str, model: str, concurrency: int = 1,
             rate: float | None = None, stats: str | None = None, headers: tuple[str, ...] = ()) -> Row:  # fmt: skip
    """One perf_analyzer point (its C++ client costs less CPU per request than ours, which matters
    on 2 shared cores), with the server's CPU over it and, for Turnout, its compute time per run."""
    before = model_counters(stats, model) if stats else None
    with CpuMeter(pgid) as meter:
        r = perf_analyzer.run_point(model, proto, target, concurrency, interval_ms=2000, max_trials=6,
                                    stability_pct=40, request_rate=rate, headers=headers, retries=1)  # fmt: skip
        cpu = meter.read()
    r.update(cpu)
    r["req_per_s"] = r.get("infer_per_s")
    answered = (r["req_per_s"] or 0) * cpu["wall_s"]
    r["server_us_per_req"] = round(cpu["server_cpu_s"] / answered * 1e6, 1) if answered else None
    after = model_counters(stats, model) if stats else None
    if before and after and after["compute_count"] > before["compute_count"]:
        charged = after["compute_count"] - before["compute_count"]
        r["compute_us"] = round((after["compute_ns"] - before["compute_ns"]) / charged / 1e3, 1)
    r["rss_mb"] = round(pgid_rss_mb(pgid), 1)
    return r


def _execution_figures(before: dict[str, int], after: dict[str, int], req_per_s: float) -> Row:
    """Formed batch, executions per second (the measured rate over the formed batch), compute time
    per execution, and the time between executions that is not compute (waits for the GIL, for a
    batch to form, for the loop; negative when two threads run executions at once)."""
    d = {k: after[k] - before[k] for k in before}
    if d["execution_count"] <= 0 or d["batch_count"] <= 0 or req_per_s <= 0:
        return {}
    batch = d["inference_count"] / d["execution_count"]
    per_exec_us = 1e6 * batch / req_per_s
    compute_us = d["batch_ns"] / d["batch_count"] / 1e3
    return {"avg_batch": round(batch, 2), "exec_per_s": round(1e6 / per_exec_us, 1),
            "compute_us": round(compute_us, 1), "gap_us": round(per_exec_us - compute_us, 1)}  # fmt: skip


def _load_sweep_pa(
    run: Run,
    name: str,
    http: str,
    grpc: str,
    pgid: int,
    headers: Callable[[str], tuple[str, ...]] = lambda p: (),
) -> None:
    """The same sweep with perf_analyzer as the generator (Turnout and the Triton peers speak
    the model-configuration API it needs; KServe and MLServer do not)."""
    stats = http if name == "turnout" else None
    for model in ("mlp_small", "mlp_large"):
        for proto in ("grpc", "http"):
            target = grpc if proto == "grpc" else http
            hdr = headers(proto)
            top = run.add({**pa_point(target, pgid, proto=proto, model=model, concurrency=32, stats=stats,
                                      headers=hdr),
                           "axis": "load", "server": name, "kind": "max"})  # fmt: skip
            peak = top.get("req_per_s") or 0.0
            rates: list[tuple[float | None, float]] = [(f, f * peak) for f in FRACTIONS]
            if name == "turnout":
                rates += [(None, r) for r in best_peer_80(run.rows, model, proto, "perf_analyzer")]
            for fraction, rate in rates:
                if rate > 0:
                    r = pa_point(
                        target, pgid, proto=proto, model=model, rate=round(rate), stats=stats, headers=hdr
                    )
                    run.add({**r, "axis": "load", "server": name, "kind": "open", "fraction": fraction,
                             "of_max_rps": peak})  # fmt: skip
            if name == "turnout":
                r = pa_point(target, pgid, proto=proto, model=model, concurrency=1, stats=stats)
                run.add({**r, "axis": "load", "server": name, "kind": "c1"})


def axis_load(run: Run, base: Path, peers: list[str], peers_root: Path) -> None:
    onnx_dir = base.parent / "onnx"
    for name in peers:
        if not available(peers_root, name):
            log(f"peer {name}: not installed under {peers_root} (../shared/peers/setup.sh), skipped")
            continue
        peer = Peer(name, peers_root, onnx_dir, run.work / f"peer-{name}.log")
        try:
            peer.start()
            _load_sweep(run, name, peer.http, peer.grpc, peer.pgid, lambda m, p: [])
            if name.startswith("triton"):
                _load_sweep_pa(run, name, peer.http, peer.grpc, peer.pgid, peer.headers)
        except RuntimeError as exc:
            log(f"peer {name}: {exc}")
        finally:
            peer.stop()
    srv = run.turnout(base, "load")
    try:
        _load_sweep(run, "turnout", srv.http, srv.grpc, srv.pgid, lambda m, p: best_peer_80(run.rows, m, p))
        _load_sweep_pa(run, "turnout", srv.http, srv.grpc, srv.pgid)
    finally:
        srv.stop()
    for model in ("mlp_small", "mlp_large"):  # in-process onnxruntime, one intra-op thread
        sess = session(onnx_dir / f"{model}.onnx", 1)
        run.add({"axis": "load", "server": "onnxruntime", "kind": "in-process", "model": model, "concurrency": 1,
                 **ort_point(sess, model, run.duration)})  # fmt: skip


def ort_point(sess: Any, model: str, seconds: float) -> Row:
    import numpy as np

    from benchmarks.common import width

    feed = {"input": np.random.default_rng(0).standard_normal((1, width(model)), dtype=np.float32)}
    for _ in range(50):
        sess.run(None, feed)
    lat = []
    c0, t_end = time.thread_time(), time.perf_counter() + seconds
    while (t := time.perf_counter()) < t_end:
        sess.run(None, feed)
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1e3
    return {"req_per_s": round(len(lat) / seconds, 1), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "cpu_us_per_run": round((time.thread_time() - c0) / len(lat) * 1e6, 1)}  # fmt: skip


def axis_connections(run: Run, base: Path) -> None:
    srv = run.turnout(base, "connections")
    try:
        for proto in ("http", "grpc"):
            for n in CONNECTIONS:
                r = generate(srv.grpc if proto == "grpc" else srv.http, srv.pgid, proto=proto, model="mlp_small",
                             mode="open", arrival="poisson", rate=CONNECTIONS_RATE, connections=n, spread=True,
                             duration=run.duration, warmup=1, max_outstanding=4096)  # fmt: skip
                run.add({**r, "axis": "connections", "server": "turnout", "connections": n})
    finally:
        srv.stop()


def axis_profile(run: Run, base: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(spy).exists():
        log("profile: py-spy not installed (pip install py-spy), skipped")
        return
    srv = run.turnout(base, "profile")
    try:
        for proto in ("grpc", "http"):
            out = run.work / f"profile-{proto}.txt"
            seconds = max(int(run.duration) + 1, 3)
            prof = subprocess.Popen([spy, "record", "-p", str(srv.pgid), "-d", str(seconds), "-r", "250",
                                     "--format", "raw", "-o", str(out), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            r = generate(srv.grpc if proto == "grpc" else srv.http, srv.pgid, proto=proto, model="mlp_small",
                         concurrency=32, duration=seconds, warmup=0.5)  # fmt: skip
            prof.wait(seconds + 30)
            split = curves_report.split_profile(out) if out.exists() else {}
            run.add({**r, "axis": "profile", "server": "turnout", "concurrency": 32, "split": split})
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--axes", default=",".join(AXES))
    ap.add_argument(
        "--duration", type=float, default=3.0, help="measured seconds per point (after 1 s warm-up)"
    )
    ap.add_argument("--peers", default="kserve,triton-nodelay")
    ap.add_argument("--peers-root", type=Path, default=Path(os.environ.get("PEERS", "/tmp/peers")))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--report", action="store_true", help="only rewrite CURVES.md from raw/curves.jsonl")
    a = ap.parse_args()
    cmd = "python -m benchmarks.curves " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k in ("axes", "duration", "peers")
    )
    if a.report:
        rows = read_jsonl(a.out / "raw" / "curves.jsonl")
        meta = next((r for r in rows if r.get("axis") == "meta"), {})
        curves_report.write(rows, a.out, meta.get("cmd", cmd), meta.get("seconds", 0.0), meta.get("commit"))
        return
    work = Path(tempfile.mkdtemp(prefix="turnout-curves-"))
    try:
        base = models.build(work / "models")
        run = Run(a.out, a.duration, work)
        t0 = time.monotonic()
        commit = curves_report.commit()
        run.add({"axis": "meta", "cmd": cmd, "commit": commit})
        for axis in a.axes.split(","):
            log(f"axis {axis}")
            if axis == "payload":
                axis_payload(run, base, [p for p in a.peers.split(",") if p], a.peers_root)
            elif axis == "models":
                axis_models(run, base)
            elif axis == "load":
                axis_load(run, base, [p for p in a.peers.split(",") if p], a.peers_root)
            elif axis == "connections":
                axis_connections(run, base)
            elif axis == "profile":
                axis_profile(run, base)
            else:
                raise SystemExit(f"unknown axis {axis!r}; known: {', '.join(AXES)}")
        seconds = time.monotonic() - t0
        append_jsonl(run.raw, {"axis": "meta", "seconds": round(seconds, 1)})
        curves_report.write(run.rows, a.out, cmd, seconds, commit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
