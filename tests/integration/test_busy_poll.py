"""Busy polling (server/busy_poll.py) in the running server: answers come back on both
protocols with polling on and off, and once traffic stops the server goes back to sleep
instead of burning a core."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.server_proc import ServerProc, start_server

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module", params=["500", "0"], ids=["polling", "off"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(
        tmp_path_factory.mktemp("busy-poll"), args=["--busy-poll-us", request.param, "--drift", "false"]
    )
    yield srv
    assert srv.stop() == 0, srv.log()


def one_at_a_time(server: ServerProc, n: int) -> None:
    """n HTTP and n gRPC requests to the demo iris model, each sent when the one before has
    been answered; every answer must be the same."""
    with httpx.Client(base_url=server.base, timeout=10) as http:
        first = None
        for _ in range(n):
            r = http.post("/v2/models/iris/infer", json=ROW)
            assert r.status_code == 200, r.text
            first = first or r.json()["outputs"]
            assert r.json()["outputs"] == first
    assert first is not None
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        x = np.array(ROW["inputs"][0]["data"], dtype=np.float32).reshape(1, 4)
        for _ in range(n):
            inp = grpcclient.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            res = grpc.infer("iris", [inp])
            for out in first:
                got = res.as_numpy(out["name"])
                assert got is not None and np.allclose(got.ravel(), np.array(out["data"], dtype=got.dtype))


def test_answers_one_at_a_time_clients(server: ServerProc) -> None:
    one_at_a_time(server, 200)
    assert server.alive()


def test_the_server_sleeps_once_traffic_stops(server: ServerProc) -> None:
    """Polling lasts a window (0.5 ms) after the last request; a loop that kept polling would
    use a whole core's second in the second measured here."""
    one_at_a_time(server, 100)
    time.sleep(0.2)
    before = cpu_seconds(server.proc.pid)
    time.sleep(1.0)
    used = cpu_seconds(server.proc.pid) - before
    assert used < 0.3, f"the idle server used {used:.2f} s of CPU in 1 s"
