"""perf_analyzer against the demo ``mlp`` (version 2) at concurrency 1 and 16, gRPC and HTTP,
beside in-process onnxruntime on the same file; writes results/DEMO_MLP.md.

    python -m benchmarks.demo_mlp
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.perf_analyzer import run_point
from benchmarks.server import Turnout

DEMO = Path(__file__).resolve().parent.parent / "model_store" / "demo" / "repository"


def raw_ort(path: Path, seconds: float = 3.0) -> dict[str, float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, {"input": x})
        lat.append(time.perf_counter() - t)
    a = np.array(lat)
    return {"per_s": len(a) / a.sum(), "p50_us": float(np.percentile(a, 50) * 1e6)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="turnout-demo-bench-"))
    srv = Turnout(DEMO, work)
    srv.start()
    rows = []
    try:
        for proto in ("grpc", "http"):
            for c in (1, 16):
                url = srv.grpc if proto == "grpc" else srv.http
                r = run_point("mlp", proto, url, c, interval_ms=3000, stability_pct=25, stats_url=srv.http)
                rows.append((proto, c, r))
                print(proto, c, r.get("infer_per_s"), r.get("p50_ms"), flush=True)
    finally:
        srv.stop()
    ref = raw_ort(DEMO / "mlp" / "2" / "model.onnx")
    md = [
        "# Demo `mlp` under perf_analyzer, beside in-process onnxruntime",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on the 2-core VM (shared by server and perf_analyzer), "
        "`.venv/bin/python -m benchmarks.demo_mlp`; perf_analyzer in time windows, batch 1 per request, "
        "HTTP with the binary tensor extension.",
        "",
        "| protocol | concurrency | throughput (inf/s) | p50 latency (ms) | p99 latency (ms) | formed batch |",
        "|---|---|---|---|---|---|",
    ]
    for proto, c, r in rows:
        md.append(
            f"| {proto} | {c} | {r.get('infer_per_s', 0):,.0f} | {r.get('p50_ms', 0):.3f} | {r.get('p99_ms', 0):.3f} | "
            f"{r.get('server_avg_batch') or 0:.2f} |"
        )
    md += [
        "",
        f"In-process onnxruntime, same file, one row per call, one intra-op thread: {ref['per_s']:,.0f} calls/s, "
        f"p50 {ref['p50_us']:.1f} µs. Serving costs the transport, not the model: the model is "
        f"{ref['p50_us']:.0f} µs of each request.",
    ]
    out = Path(__file__).resolve().parent / "results" / "DEMO_MLP.md"
    out.write_text("\n".join(md) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
