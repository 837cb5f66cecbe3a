"""Drift monitoring end to end: shifted traffic changes the status and the metric, the
captured reference survives a restart, a webhook hears about it, and live histograms from
two server processes add up to those of one process that saw the whole stream."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import numpy as np

from tests.server_proc import DEMO_REPO, ServerProc, running_server
from turnout.drift import Reference

DRIFT_ARGS = ["--drift-reference-rows", "300", "--drift-window-rows", "200"]


def send(s: ServerProc, x: np.ndarray, batch: int = 20) -> None:
    """Binary tensors (JSON cannot carry NaN)."""
    with httpx.Client(base_url=s.base, timeout=30) as c:
        for i in range(0, len(x), batch):
            part = np.ascontiguousarray(x[i : i + batch])
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": list(part.shape),
                            "parameters": {"binary_data_size": part.nbytes},
                        }
                    ]
                }
            ).encode()
            r = c.post(
                "/v2/models/iris/infer",
                content=header + part.tobytes(),
                headers={"inference-header-content-length": str(len(header))},
            )
            assert r.status_code == 200, r.text


def report(s: ServerProc, view: str = "window") -> dict:
    return httpx.get(
        f"{s.base}/v2/models/iris/versions/1/drift", params={"view": view, "histograms": "0"}
    ).json()


def wait_status(s: ServerProc, want: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rep = report(s)
        if rep["status"] == want:
            return rep
        assert time.monotonic() < deadline, rep
        time.sleep(0.1)


def iris_like(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.7, 0.7], (n, 4)).astype(np.float32)
    x[:, 2] += shift
    return x


class _Hook(BaseHTTPRequestHandler):
    events: list[dict] = []

    def do_POST(self) -> None:
        n = int(self.headers["content-length"])
        _Hook.events.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_shift_is_detected_and_the_reference_survives_a_restart(tmp_path: Path) -> None:
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    args = [
        *DRIFT_ARGS,
        "--state-dir",
        str(tmp_path / "state"),
        "--drift-webhook",
        f"http://127.0.0.1:{hook.server_port}/drift",
    ]
    rng = np.random.default_rng(1)
    try:
        with running_server(tmp_path, args=args) as s:
            assert report(s)["status"] == "collecting"
            send(s, iris_like(rng, 300))  # the reference
            send(s, iris_like(rng, 400))  # two windows like it
            rep = wait_status(s, "ok")
            assert rep["window"]["reference_rows"] == 300
            send(s, iris_like(rng, 400, shift=2.5))
            rep = wait_status(s, "drift")
            drifted = {f["name"] for f in rep["features"] if f["status"] == "drift"}
            assert drifted == {"input[2]"}, rep["features"]
            assert any(o["status"] == "drift" for o in rep["outputs"])  # the predictions moved too
            metrics = httpx.get(f"{s.base}/metrics").text
            assert 'turnout_drift_status{model="iris",version="1"} 3.0' in metrics
        deadline = time.monotonic() + 10
        while not any(e.get("new") == "drift" for e in _Hook.events):
            assert time.monotonic() < deadline, _Hook.events
            time.sleep(0.1)
        with running_server(tmp_path, args=args) as s:  # restart: no new capture needed
            send(s, iris_like(rng, 200))
            rep = wait_status(s, "ok")
            assert rep["window"]["reference_rows"] == 300 and rep["window"]["capture_rows"] == 0
            assert "restored" in s.log()
    finally:
        hook.shutdown()


def test_histograms_from_two_processes_add_up_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "iris", repo / "iris")
    train = iris_like(rng, 2000)
    np.savez(repo / "iris" / "1" / "reference.npz", X=train, feature_names=np.array(["a", "b", "c", "d"]))
    stream = iris_like(rng, 600, shift=0.3)
    stream[::17, 1] = np.nan  # missing values land in the NaN bin
    stream[::29, 3] = 50.0  # beyond the last edge: the overflow bin
    args = ["--drift-window-rows", "100000"]
    with (
        running_server(tmp_path, repo, args) as a,
        running_server(tmp_path, repo, args) as b,
        running_server(tmp_path, repo, args) as whole,
    ):
        send(a, stream[:250])
        send(b, stream[250:])
        send(whole, stream)
        ha, hb, hw = report(a, "live"), report(b, "live"), report(whole, "live")
    assert ha["rows"] + hb["rows"] == hw["rows"] == 600
    for key in ("features", "outputs"):
        for fa, fb, fw in zip(ha[key], hb[key], hw[key], strict=True):
            assert fa["name"] == fw["name"]
            assert fa.get("edges") == fw.get("edges")
            assert [x + y for x, y in zip(fa["counts"], fb["counts"], strict=True)] == fw["counts"], fw[
                "name"
            ]
    assert Reference.from_npz(repo / "iris" / "1" / "reference.npz").feature_names == ["a", "b", "c", "d"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _drift_child(pid: int) -> int:
    for c in _children(pid):
        if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace"):
            return c
    raise AssertionError("no drift monitor process")


def test_a_killed_drift_process_costs_no_request_and_comes_back(tmp_path: Path) -> None:
    import os
    import signal

    rng = np.random.default_rng(5)
    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "iris", repo / "iris")
    np.savez(repo / "iris" / "1" / "reference.npz", X=iris_like(rng, 2000))
    with running_server(tmp_path, repo, ["--drift-window-rows", "200"]) as s:
        send(s, iris_like(rng, 400))
        wait_status(s, "ok")
        first = _drift_child(s.proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # requests keep succeeding (send asserts 200) while the monitor is away
            send(s, iris_like(rng, 100))
            if time.monotonic() > deadline:
                raise AssertionError("no new drift monitor process")
            children = [c for c in _children(s.proc.pid) if c != first]
            if any(
                "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
                for c in children
            ):
                break
            time.sleep(0.5)
        send(s, iris_like(rng, 400))
        rep = wait_status(s, "ok")  # the shipped reference again, new windows
        assert rep["monitor"]["rows"] >= 200
        assert "drift monitor process restarted" in s.log()
        assert "turnout_drift_monitor_restarts_total 1.0" in httpx.get(f"{s.base}/metrics").text


def wide_repo(root: Path, width: int) -> Path:
    """A model of ``width`` features and one output (their mean): a stand-in for an image model."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["output"], axes=[1], keepdims=1)],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "iris" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "iris" / "1" / "model.onnx"))
    return root


def test_a_wide_tensor_is_monitored_on_every_kth_column(tmp_path: Path) -> None:
    """1,000 features and --drift-max-features 250: every 4th column is monitored, by its name,
    and a shift of a monitored column is found."""
    repo = wide_repo(tmp_path / "repo", 1000)
    rng = np.random.default_rng(2)
    args = [*DRIFT_ARGS, "--drift-max-features", "250"]
    with running_server(tmp_path, repo=repo, args=args) as s:
        send(s, rng.normal(0, 1, (300, 1000)).astype(np.float32))
        send(s, rng.normal(0, 1, (400, 1000)).astype(np.float32))
        rep = wait_status(s, "ok")
        names = [f["name"] for f in rep["features"]]
        assert names == [f"input[{i}]" for i in range(0, 1000, 4)]
        shifted = rng.normal(0, 1, (400, 1000)).astype(np.float32)
        shifted[:, 8] += 3.0
        send(s, shifted)
        rep = wait_status(s, "drift")
        assert {f["name"] for f in rep["features"] if f["status"] == "drift"} == {"input[8]"}
