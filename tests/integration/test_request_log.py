"""The request log at 100% sampling under bounded load: no request fails, files rotate at the
configured size, and every request is either written or counted as dropped."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.server_proc import running_server

MAX_FILE_BYTES = 50_000
HTTP_THREADS, GRPC_THREADS, PER_THREAD = 6, 2, 150


def counter(text: str, name: str, model: str) -> float:
    return sum(
        float(v) for v in re.findall(rf'^{name}\{{model="{model}",version="\d+"\}} (\S+)$', text, re.M)
    )


@pytest.mark.parametrize("queue", [256, 1])
def test_full_sampling_under_load_rotates_and_counts(tmp_path: Path, queue: int) -> None:
    """With a queue of one record the writer cannot keep up: records are dropped, requests not."""
    log_dir = tmp_path / "log"
    args = [
        "--request-log-dir",
        str(log_dir),
        "--request-log-sample",
        "0",
        "--request-log-rates",
        "mlp=1",
        "--request-log-max-file-bytes",
        str(MAX_FILE_BYTES),
        "--request-log-max-files",
        "10000",
        "--request-log-queue",
        str(queue),
        "--request-log-exclude",
        "parameters",
        "--no-drift",
    ]
    failures: list[str] = []
    sent_ids: set[str] = set()
    lock = threading.Lock()
    with running_server(tmp_path, args=args) as server:

        def http_worker(t: int) -> None:
            rng = np.random.default_rng(t)
            with httpx.Client(base_url=server.base, timeout=30) as client:
                for i in range(PER_THREAD):
                    rid = f"h{t}-{i}"
                    body = {
                        "id": rid,
                        "inputs": [
                            {
                                "name": "input",
                                "datatype": "FP32",
                                "shape": [1, 32],
                                "data": rng.random(32).tolist(),
                            }
                        ],
                    }
                    r = client.post(
                        "/v2/models/mlp/infer", json=body, headers={"x-routing-key": f"user-{i % 7}"}
                    )
                    with lock:
                        (sent_ids.add(rid) if r.status_code == 200 else failures.append(r.text))

        def grpc_worker(t: int) -> None:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            x = np.random.default_rng(100 + t).random((1, 32), dtype=np.float32)
            for i in range(PER_THREAD):
                inp = grpcclient.InferInput("input", [1, 32], "FP32")
                inp.set_data_from_numpy(x)
                rid = f"g{t}-{i}"
                try:
                    client.infer("mlp", [inp], request_id=rid)
                    with lock:
                        sent_ids.add(rid)
                except Exception as exc:
                    with lock:
                        failures.append(str(exc))
            client.close()

        threads = [threading.Thread(target=http_worker, args=(t,)) for t in range(HTTP_THREADS)]
        threads += [threading.Thread(target=grpc_worker, args=(t,)) for t in range(GRPC_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        total = (HTTP_THREADS + GRPC_THREADS) * PER_THREAD
        assert not failures, failures[:3]
        assert len(sent_ids) == total
        # a model not sampled leaves nothing
        httpx.post(
            f"{server.base}/v2/models/iris/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
                ]
            },
        )
        deadline = time.monotonic() + 30
        while True:
            text = httpx.get(f"{server.base}/metrics").text
            written = counter(text, "turnout_request_log_written_total", "mlp")
            dropped = counter(text, "turnout_request_log_dropped_total", "mlp")
            if written + dropped == total or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert written + dropped == total
        assert written > 0

    files = sorted(log_dir.glob("mlp/*/requests-*.jsonl"))
    assert len(files) > 1, "rotation by size"
    assert all(f.stat().st_size <= MAX_FILE_BYTES for f in files)
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == written
    assert {r["id"] for r in records} <= sent_ids
    assert not (log_dir / "iris").exists()
    first = records[0]
    assert set(first) == {"ts", "model", "version", "id", "routing_key", "inputs", "outputs"}
    assert first["model"] == "mlp" and first["version"] in ("1", "2")
    assert len(first["inputs"]["input"][0]) == 32 and len(first["outputs"]["output"][0]) == 8
    http_keys = {r["routing_key"] for r in records if r["id"].startswith("h")}
    assert http_keys <= {f"user-{k}" for k in range(7)} and http_keys
    print(f"{total} requests, {int(written)} written, {int(dropped)} dropped, {len(files)} files")
