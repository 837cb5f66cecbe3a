"""Physical limit: in-process onnxruntime on the benchmark models, no server in between.

For each model and batch size (default 1,8,16,32,64,128) it calls ``session.run`` back to back
for ``--seconds`` and reports calls/s, rows/s and per-call p50/p99.  Two session set-ups:
``threads=default`` (onnxruntime's defaults, as the team harness's raw_ort.py) and
``threads=1`` (one intra-op thread, no spinning: what Turnout runs by default), whose batch-1
row is the "one row at a time, single thread" rate.  One JSON line per point.

Usage: python -m benchmarks.raw_ort ONNX_DIR [--seconds 1.5] [--batches 1,8,16,32,64,128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MODELS


def session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(sess: Any, width: int, batch: int, seconds: float) -> dict[str, float]:
    feed = {"input": np.random.default_rng(0).standard_normal((batch, width), dtype=np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    lat: list[float] = []
    t0 = time.perf_counter()
    t_end = t0 + seconds
    e = t0
    while e < t_end:
        s = time.perf_counter()
        sess.run(None, feed)
        e = time.perf_counter()
        lat.append(e - s)
    el = e - t0
    ms = np.asarray(lat) * 1e3
    return {
        "calls_per_s": round(len(lat) / el, 1),
        "rows_per_s": round(len(lat) * batch / el, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }


def run(onnx_dir: Path, seconds: float, batches: list[int], models: list[str]) -> list[dict[str, Any]]:
    import onnxruntime as ort

    rows = []
    for threads in (None, 1):
        for name in models:
            sess = session(onnx_dir / f"{name}.onnx", threads)
            for b in batches:
                r = {"generator": "raw_ort", "model": name, "batch": b, "threads": threads or "default",
                     "ort": ort.__version__, **measure(sess, MODELS[name][0], b, seconds)}  # fmt: skip
                rows.append(r)
                print(json.dumps(r), flush=True)
            del sess
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx_dir", type=Path)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--batches", default="1,8,16,32,64,128")
    ap.add_argument("--models", default=",".join(MODELS))
    a = ap.parse_args()
    run(a.onnx_dir, a.seconds, [int(b) for b in a.batches.split(",")], a.models.split(","))


if __name__ == "__main__":
    main()
