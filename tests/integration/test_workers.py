"""Several worker processes behind the same ports (SO_REUSEPORT) behave as one server:
explicit loads, traffic policies and metrics are shared."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.server_proc import running_server

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


def fresh_connection_posts(base: str, path: str, n: int) -> list[httpx.Response]:
    out = []
    for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
        with httpx.Client(base_url=base, timeout=10) as c:
            out.append(c.post(path, json=BODY))
    return out


def test_two_workers_act_as_one_server(tmp_path: Path) -> None:
    args = ["--workers", "2", "--model-control-mode", "explicit", "--state-dir", str(tmp_path / "state")]
    with running_server(tmp_path, args=args, wait_ready=True) as s:
        assert all(r.status_code == 404 for r in fresh_connection_posts(s.base, "/v2/models/iris/infer", 6))
        assert httpx.post(f"{s.base}/v2/repository/models/iris/load").status_code == 200
        time.sleep(1.0)  # the other worker follows the operations log within a tick
        rs = fresh_connection_posts(s.base, "/v2/models/iris/infer", 20)
        assert [r.status_code for r in rs] == [200] * 20
        assert (
            httpx.put(f"{s.base}/admin/models/mlp/traffic", json={"stable": "1"}).status_code == 409
        )  # mlp not loaded
        assert httpx.post(f"{s.base}/v2/repository/models/mlp/load").status_code == 200
        time.sleep(1.0)
        assert httpx.put(f"{s.base}/admin/models/mlp/traffic", json={"stable": "1"}).status_code == 200
        time.sleep(1.0)  # policies reach every worker through the state directory
        x = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": [0.1] * 32}]}
        versions = set()
        for _ in range(20):
            with httpx.Client(base_url=s.base, timeout=10) as c:
                versions.add(c.post("/v2/models/mlp/infer", json=x).json()["model_version"])
        assert versions == {"1"}
        metrics = httpx.get(f"{s.base}/metrics").text
        line = next(
            m for m in metrics.splitlines() if m.startswith('turnout_requests_total{code="ok",model="iris"')
        )
        assert float(line.split()[-1]) == 20.0  # counted across both workers
        rss = [m for m in metrics.splitlines() if m.startswith("process_resident_memory_bytes{")]
        assert len({m.split('pid="')[1].split('"')[0] for m in rss}) == 2, rss  # one series per worker
