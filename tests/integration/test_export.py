"""``turnout export`` on a real server's request log: the Parquet rows are the logged requests
of the slice, each with the label its feedback gave."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.server_proc import ROOT, running_server


@pytest.mark.parametrize("tensors", ["json", "base64"])
def test_export_joins_logged_requests_with_their_feedback(tmp_path: Path, tensors: str) -> None:
    log_dir = tmp_path / "log"
    args = [
        "--request-log-tensors",
        tensors,
        "--request-log-dir",
        str(log_dir),
        "--request-log-sample",
        "1",
        "--feedback-models",
        "iris",
        "--no-drift",
    ]
    rng = np.random.default_rng(7)
    sent: dict[str, list[float]] = {}
    answers: dict[str, list[int]] = {}
    with (
        running_server(tmp_path, args=args) as server,
        httpx.Client(base_url=server.base, timeout=30) as client,
    ):

        def infer(rid: str | None) -> str:
            row = (rng.random(4) * [4, 2, 5, 2] + [4, 2, 1, 0]).astype(np.float32).tolist()
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}
            if rid:
                body["id"] = rid
            resp = client.post("/v2/models/iris/infer", json=body).json()
            sent[resp["id"]] = row
            answers[resp["id"]] = next(o for o in resp["outputs"] if o["name"] == "label")["data"]
            return str(resp["id"])

        before = [infer(f"old-{i}") for i in range(5)]
        time.sleep(0.05)
        since = time.time()
        time.sleep(0.05)
        after = [infer(f"new-{i}" if i % 2 else None) for i in range(40)]
        labels = {rid: (i % 3) for i, rid in enumerate(after) if i % 4}  # three in four get a label
        got = client.post(
            "/v2/models/iris/feedback", json={"feedback": [{"id": k, "label": v} for k, v in labels.items()]}
        ).json()
        assert got["accepted"] == len(labels)
        client.post("/v2/models/iris/feedback", json={"feedback": [{"id": before[0], "label": 1}]})
    # the server has stopped: its writer wrote what was queued
    logged = b"".join(p.read_bytes() for p in (log_dir / "iris" / "1").glob("requests-*.jsonl"))
    assert (b'"b64":' in logged) == (tensors == "base64")
    out = tmp_path / "slice.parquet"
    cmd = [
        sys.executable,
        "-m",
        "turnout",
        "export",
        "--log-dir",
        str(log_dir),
        "--model",
        "iris",
        "--version",
        "1",
        "--since",
        str(since),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"40 rows ({len(labels)} labelled)" in done.stdout
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == after  # the slice, in order; nothing from before --since
    for r in table:
        assert r["model"] == "iris" and r["version"] == "1"
        assert np.array_equal(np.float32(r["input.input"][0]), np.float32(sent[r["id"]]))  # exact
        assert r["output.label"] == answers[r["id"]]
        assert len(r["output.probabilities"][0]) == 3
        assert r["label"] == labels.get(r["id"])
        assert (r["feedback_ts"] is None) == (r["id"] not in labels)
        assert r["ts"].timestamp() >= since

    labelled_only = tmp_path / "labelled.parquet"
    cmd[-1] = str(labelled_only)
    subprocess.run([*cmd, "--labelled-only"], check=True, capture_output=True, cwd=ROOT, timeout=60)
    assert sorted(pq.read_table(labelled_only).column("id").to_pylist()) == sorted(labels)
