"""Hot reload under steady load: versions appear, change, disappear and arrive corrupt
while gRPC and HTTP clients keep sending; no request fails and every answer comes from a
version whose content was valid at that moment."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from tests.integration.load import LoadDriver, Outcome
from tests.server_proc import ServerProc, running_server

CONFIG = (
    "max_batch_size: 16\nversion_policy: { all {} }\ndynamic_batching { max_queue_delay_microseconds: 200 }\n"
)


def linear_model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["output"])],
        f"lin{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


MODELS = {s: linear_model(s) for s in (1, 2, 3, 4)}


SESSIONS = {s: ort.InferenceSession(m) for s, m in MODELS.items()}


def expected(seed: int, x: np.ndarray) -> np.ndarray:
    return SESSIONS[seed].run(None, {"input": x})[0]


def place(repo: Path, version: str, content: bytes) -> None:
    """Atomically put a version in place (write elsewhere, rename in)."""
    tmp = repo / f".tmp-{version}-{time.monotonic_ns()}"
    tmp.mkdir()
    (tmp / "model.onnx").write_bytes(content)
    dest = repo / "m" / version
    if dest.exists():
        # replace the file inside an existing version directory atomically
        os.replace(tmp / "model.onnx", dest / "model.onnx")
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, dest)


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text(CONFIG)
    place(repo, "1", MODELS[1])
    return repo


def x_for(i: int) -> np.ndarray:
    return np.array([[i % 7, (i * 3) % 5, 1.0, -(i % 11)]], dtype=np.float32)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_load(s: ServerProc) -> LoadDriver:
    """Two gRPC and two HTTP clients sending until stopped; 150 s is the bound that binds
    (LoadDriver.max_requests is far above what fits in it)."""
    return LoadDriver(s.grpc_url, s.http_url, "m", x_for, threads_per_protocol=2, max_seconds=150.0).start()


def wait_for_traffic(driver: LoadDriver, version: str) -> None:
    wait_for(lambda: driver.seen(version) or not driver.running(), f"traffic on version {version}")
    assert driver.seen(version), (
        f"the load driver stopped after {driver.count()} requests before version {version} answered"
    )


def index(s: ServerProc) -> dict[tuple[str, str], dict[str, str]]:
    return {(m["name"], m.get("version", "")): m for m in httpx.post(f"{s.base}/v2/repository/index").json()}


def latest_version(s: ServerProc) -> str:
    r = httpx.post(
        f"{s.base}/v2/models/m/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]},
    )
    return str(r.json().get("model_version", ""))


def check(outcomes: list[Outcome], contents: dict[str, set[int]]) -> None:
    errors = [o.error for o in outcomes if o.error]
    assert errors == [], errors[:5]
    assert len(outcomes) > 50
    for o in outcomes:
        assert o.output is not None and o.input is not None
        seeds = contents.get(o.version)
        assert seeds, f"answer from version {o.version!r}, which never held a valid model"
        assert any(np.allclose(o.output, expected(seed, o.input), atol=1e-5) for seed in seeds), (
            f"version {o.version} answered with output matching none of its contents {seeds}"
        )


def scenario(s: ServerProc, repo: Path, apply: Callable[[], None]) -> dict[str, set[int]]:
    contents: dict[str, set[int]] = {"1": {1}}
    place(repo, "2", MODELS[2])
    contents["2"] = {2}
    apply()
    wait_for(lambda: latest_version(s) == "2", "version 2 to serve")

    place(repo, "2", MODELS[3])  # replace version 2's file
    contents["2"].add(3)
    apply()
    wait_for(
        lambda: index(s)[("m", "2")].get("sha256", "") != "" and _answers_like(s, 3),
        "version 2 to be replaced",
    )

    shutil.rmtree(repo / "m" / "2")  # lose version 2
    apply()
    wait_for(lambda: latest_version(s) == "1", "version 1 to serve again")

    (repo / "m" / "3").mkdir()  # a corrupt version arrives
    (repo / "m" / "3" / "model.onnx").write_bytes(b"\x00corrupt\xff" * 100)
    apply()
    wait_for(
        lambda: index(s).get(("m", "3"), {}).get("state") == "UNAVAILABLE", "corrupt version 3 to be reported"
    )
    assert "cannot load" in index(s)[("m", "3")]["reason"]
    assert latest_version(s) == "1"

    place(repo, "3", MODELS[4])  # ... and is then fixed
    contents["3"] = {4}
    apply()
    wait_for(lambda: latest_version(s) == "3", "fixed version 3 to serve")
    return contents


def _answers_like(s: ServerProc, seed: int) -> bool:
    x = np.zeros((1, 4), np.float32)
    r = httpx.post(
        f"{s.base}/v2/models/m/versions/2/infer",
        json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x.reshape(-1).tolist()}]
        },
    )
    return r.status_code == 200 and np.allclose(
        np.array(r.json()["outputs"][0]["data"]).reshape(1, 3), expected(seed, x), atol=1e-5
    )


def test_poll_mode_swaps_under_load(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    args = [
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.2",
        "--repository-settle-secs",
        "0.3",
    ]
    with running_server(tmp_path, repo, args) as s:
        driver = start_load(s)
        try:
            contents = scenario(s, repo, lambda: None)
            wait_for_traffic(driver, "3")  # it has only just gone live
        finally:
            outcomes = driver.stop()
        check(outcomes, contents)
        versions = {o.version for o in outcomes}
        assert {"1", "2", "3"} <= versions
        assert "retired" in s.log()
        metrics = httpx.get(f"{s.base}/metrics").text
        assert 'turnout_model_load_failures_total{model="m"} 1.0' in metrics


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_explicit_mode_swaps_under_load(tmp_path: Path, isolation: str) -> None:
    repo = make_repo(tmp_path)
    args = ["--model-control-mode", "explicit", "--load-model", "m", "--model-isolation", isolation]
    with running_server(tmp_path, repo, args) as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)

        def load() -> None:
            try:
                client.load_model("m")
            except Exception as exc:  # the corrupt version fails the load; serving versions stay
                assert "cannot load" in str(exc)

        driver = start_load(s)
        try:
            contents = scenario(s, repo, load)
            wait_for_traffic(driver, "3")  # it has only just gone live
        finally:
            outcomes = driver.stop()
        check(outcomes, contents)
        assert {"1", "2", "3"} <= {o.version for o in outcomes}


def test_poll_recovers_after_failed_load_and_ignores_half_written_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    args = [
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.1",
        "--repository-settle-secs",
        "0.6",
    ]
    with running_server(tmp_path, repo, args) as s:
        bad = repo / "broken" / "1"
        bad.mkdir(parents=True)
        (bad / "model.onnx").write_bytes(b"not a model")
        wait_for(
            lambda: index(s).get(("broken", "1"), {}).get("state") == "UNAVAILABLE", "the failure to show"
        )
        assert "cannot load" in index(s)[("broken", "1")]["reason"]
        # polling still works: a half-written version is held back while it is being copied ...
        content = MODELS[2]
        (repo / "m" / "2").mkdir()
        with (repo / "m" / "2" / "model.onnx").open("wb") as f:
            for k in range(0, len(content), max(len(content) // 8, 1)):
                f.write(content[k : k + max(len(content) // 8, 1)])
                f.flush()
                time.sleep(0.15)
                assert index(s).get(("m", "2"), {}).get("state") != "UNAVAILABLE", (
                    "half-written file was loaded"
                )
        # ... and loads once stable
        wait_for(lambda: latest_version(s) == "2", "version 2 to load once its file settled")
        # the broken model gets a good file: it loads normally
        shutil.copyfile(repo / "m" / "1" / "model.onnx", bad / "model.onnx")
        wait_for(lambda: index(s).get(("broken", "1"), {}).get("state") == "READY", "the fixed model to load")
        assert s.alive()
