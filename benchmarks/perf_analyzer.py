"""Run Triton's perf_analyzer (from tritonclient[all]) against Turnout and parse its CSV.

One call = one model x protocol x concurrency point: ``perf_analyzer -m M -i grpc|http -u URL
--concurrency-range C:C --measurement-interval MS --max-trials N -f out.csv``.  Throughput and
p50/p90/p99 come from the CSV; the server-side average formed batch comes from Turnout's
statistics API (``/v2/models/M/stats``: inference_count / execution_count, before and after;
it covers perf_analyzer's warm-up and all its trials).  perf_analyzer's HTTP mode sends the
binary tensor extension, not JSON.

Usage: python -m benchmarks.perf_analyzer --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 \\
           --model mlp_small --proto grpc --concurrency 1,8,32 [--interval-ms 3000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, check_loopback

PERF_ANALYZER = Path(PYTHON).with_name("perf_analyzer")


def pa_env() -> dict[str, str]:
    """perf_analyzer links libcudart even on CPU: put the wheel's CUDA runtime on the path."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as cr

        lib = os.path.join(next(iter(cr.__path__)), "lib")
        env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    except ImportError:
        pass
    return env


def parse_csv(text: str) -> dict[str, float]:
    row = next(csv.DictReader(text.splitlines()))
    us = {k: int(row[f"{k} latency"]) for k in ("p50", "p90", "p99")}
    return {
        "infer_per_s": float(row["Inferences/Second"]),
        "p50_ms": us["p50"] / 1e3,
        "p90_ms": us["p90"] / 1e3,
        "p99_ms": us["p99"] / 1e3,
    }


def run_point(
    model: str,
    proto: str,
    url: str,
    concurrency: int,
    interval_ms: int = 3000,
    max_trials: int = 6,
    stability_pct: int = 10,
    stats_url: str | None = None,
    retries: int = 0,
    request_rate: float | None = None,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One perf_analyzer point; ``{"error": ...}`` if it failed (e.g. no stable measurement),
    after ``retries`` more attempts (on a noisy machine a run may find no stable window).
    With ``request_rate`` the point is open loop: Poisson arrivals at that rate (req/s)."""
    args = (
        model,
        proto,
        url,
        concurrency,
        interval_ms,
        max_trials,
        stability_pct,
        stats_url,
        request_rate,
        headers,
    )
    for _attempt in range(retries):
        res = _run_once(*args)
        if "error" not in res:
            return res
        print(f"perf_analyzer: {res['error']}; trying again", flush=True)
    return _run_once(*args)


def _run_once(
    model: str,
    proto: str,
    url: str,
    concurrency: int,
    interval_ms: int,
    max_trials: int,
    stability_pct: int,
    stats_url: str | None,
    request_rate: float | None = None,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    check_loopback(url)
    from benchmarks.server import http_json

    def stats() -> dict[str, int] | None:
        if not stats_url:
            return None
        s = http_json(f"http://{stats_url}/v2/models/{model}/stats")["model_stats"]
        return {k: sum(int(v[k]) for v in s) for k in ("inference_count", "execution_count")}

    with tempfile.TemporaryDirectory() as td:
        csv_path = Path(td) / "pa.csv"
        cmd = [
            str(PERF_ANALYZER), "-m", model, "-i", proto, "-u", url,
            *(["--request-rate-range", f"{request_rate:g}:{request_rate:g}", "--request-distribution", "poisson"]
              if request_rate else ["--concurrency-range", f"{concurrency}:{concurrency}"]),
            "--measurement-interval", str(interval_ms), "--max-trials", str(max_trials),
            "--stability-percentage", str(stability_pct), "-f", str(csv_path),
            *(arg for h in headers for arg in ("-H", h)),
        ]  # fmt: skip
        before = stats()
        p = subprocess.run(
            cmd, env=pa_env(), capture_output=True, text=True, timeout=60 + interval_ms * max_trials / 250
        )
        after = stats()
        base: dict[str, Any] = {"generator": "perf_analyzer", "proto": proto, "model": model,
                                "concurrency": None if request_rate else concurrency,
                                "offered_rps": request_rate, "rows": 1, "cmd": " ".join(cmd)}  # fmt: skip
        if p.returncode != 0 or not csv_path.exists():
            tail = (p.stdout + p.stderr).strip().splitlines()[-2:]
            return {**base, "error": " | ".join(tail) or f"exit {p.returncode}"}
        res = {**base, **parse_csv(csv_path.read_text()), "errors": {}}
    if before and after:
        ex = after["execution_count"] - before["execution_count"]
        rows = after["inference_count"] - before["inference_count"]
        res["server_avg_batch"] = round(rows / ex, 2) if ex > 0 else None
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", default="127.0.0.1:8000")
    ap.add_argument("--grpc", default="127.0.0.1:8001")
    ap.add_argument("--model", default="mlp_small")
    ap.add_argument("--proto", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--interval-ms", type=int, default=3000)
    ap.add_argument("--max-trials", type=int, default=6)
    ap.add_argument("--stability-pct", type=int, default=10)
    a = ap.parse_args()
    url = a.grpc if a.proto == "grpc" else a.http
    for c in map(int, a.concurrency.split(",")):
        r = run_point(a.model, a.proto, url, c, a.interval_ms, a.max_trials, a.stability_pct, a.http)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
