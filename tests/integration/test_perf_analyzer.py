"""Triton's perf_analyzer completes short runs against Turnout over gRPC and HTTP with no errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_proc import ServerProc, cuda_runtime_lib

PERF_ANALYZER = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", ["mlp", "iris"])
def test_perf_analyzer_short_run(demo_server: ServerProc, protocol: str, model: str, tmp_path: Path) -> None:
    if not Path(PERF_ANALYZER).exists():
        pytest.fail("perf_analyzer is not installed (it comes with tritonclient[all])")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (cuda_runtime_lib(), env.get("LD_LIBRARY_PATH", "")) if p)
    url = demo_server.grpc_url if protocol == "grpc" else demo_server.http_url
    csv = tmp_path / "pa.csv"
    cmd = [
        PERF_ANALYZER,
        "-m",
        model,
        "-i",
        protocol,
        "-u",
        url,
        "--concurrency-range",
        "1:4:3",
        "--measurement-interval",
        "800",
        "--measurement-mode",
        "time_windows",
        "--max-trials",
        "4",
        "--stability-percentage",
        "999",
        "-f",
        str(csv),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "error" not in out.lower(), out
    rates = [float(x) for x in re.findall(r"throughput: ([0-9.]+) infer/sec", out)]
    assert len(rates) == 2 and all(r > 0 for r in rates), out
    assert csv.read_text().startswith("Concurrency,Inferences/Second")
