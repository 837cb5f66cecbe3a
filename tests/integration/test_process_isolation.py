"""Models served from processes of their own (``--model-isolation process``): the same answers
as in-process onnxruntime for every datatype, and a model process that dies costs only that
version's requests until the model is loaded again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.tensors import DATATYPES, echo_arrays
from tests.server_proc import DEMO_REPO, ROOT, ServerProc, running_server

ARGS = ["--model-isolation", "process", "--model-control-mode", "explicit"]
ARGS += ["--load-model", "echo", "--load-model", "iris", "--load-model", "mlp"]


def _all_pids(s: ServerProc) -> dict[tuple[str, str], list[int]]:
    pattern = r"model (\S+) version (\S+) loaded \(sha256 \w+, serving from process(?:es)? ([\d, ]+)\)"
    found = re.findall(pattern, s.log())
    return {(m, v): [int(p) for p in pids.split(", ")] for m, v, pids in found}  # the last load wins


def _model_pids(s: ServerProc) -> dict[tuple[str, str], int]:
    return {key: pids[0] for key, pids in _all_pids(s).items()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out |= {int(c) for c in f.read().split()}
    return {c for c in out if _alive(c)}


def _mlp(version: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(DEMO_REPO / "mlp" / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out: np.ndarray = sess.run(["output"], {"input": x})[0]
    return out


def _infer_mlp(c: grpcclient.InferenceServerClient, x: np.ndarray, version: str) -> np.ndarray:
    i = grpcclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    out: np.ndarray = c.infer("mlp", [i], model_version=version).as_numpy("output")
    return out


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_server(tmp_path_factory.mktemp("isolated"), DEMO_REPO, ARGS) as s:
        yield s


def test_every_model_runs_in_its_own_process_with_the_same_answers(isolated: ServerProc) -> None:
    pids = _model_pids(isolated)
    assert {("echo", "1"), ("iris", "1"), ("mlp", "1"), ("mlp", "2")} <= set(pids), isolated.log()
    assert len(set(pids.values())) == len(pids) and isolated.proc.pid not in pids.values()
    assert all(_alive(pid) for pid in pids.values())

    c = grpcclient.InferenceServerClient(isolated.grpc_url)
    arrays = echo_arrays()
    inputs = []
    for name, arr in arrays.items():
        i = grpcclient.InferInput(name, list(arr.shape), name.removeprefix("IN_"))
        i.set_data_from_numpy(arr)
        inputs.append(i)
    res = c.infer("echo", inputs)
    for dt in DATATYPES:
        got, want = res.as_numpy(f"OUT_{dt}"), arrays[f"IN_{dt}"]
        if dt == "BYTES":
            assert got.reshape(-1).tolist() == want.reshape(-1).tolist()
        else:
            np.testing.assert_array_equal(got, want, err_msg=dt)

    x = np.random.default_rng(5).standard_normal((5, 32)).astype(np.float32)
    for v in ("1", "2"):
        np.testing.assert_allclose(_infer_mlp(c, x, v), _mlp(v, x), rtol=1e-5, atol=1e-6)
    meta = c.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "32"]


def test_a_dead_model_process_fails_only_its_version_until_reloaded(isolated: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(isolated.grpc_url)
    x = np.ones((2, 32), np.float32)
    pid = _model_pids(isolated)[("mlp", "2")]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    # its requests fail with a clear error; the server, the other version and the other models serve on
    with pytest.raises(Exception, match="process exited"):
        _infer_mlp(c, x, "2")
    r = httpx.post(
        f"{isolated.base}/v2/models/mlp/versions/2/infer",
        json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 32], "data": x.ravel().tolist()}]
        },
    )
    assert r.status_code == 500 and "process exited" in r.json()["error"]
    np.testing.assert_allclose(_infer_mlp(c, x, "1"), _mlp("1", x), rtol=1e-5, atol=1e-6)
    assert c.is_model_ready("iris") and c.is_model_ready("mlp", "1") and not c.is_model_ready("mlp", "2")
    index = {
        (e["name"], e.get("version", "")): e for e in c.get_model_repository_index(as_json=True)["models"]
    }
    assert index[("mlp", "2")]["state"] == "UNAVAILABLE" and "process exited" in index[("mlp", "2")]["reason"]
    assert isolated.alive()

    # loading the model again restarts the dead version's process; the live one is kept
    v1 = _model_pids(isolated)[("mlp", "1")]
    c.load_model("mlp")
    pids = _model_pids(isolated)
    assert pids[("mlp", "2")] != pid and _alive(pids[("mlp", "2")])
    assert pids[("mlp", "1")] == v1 and _alive(v1)
    np.testing.assert_allclose(_infer_mlp(c, x, "2"), _mlp("2", x), rtol=1e-5, atol=1e-6)
    assert c.is_model_ready("mlp", "2")


def test_unloading_ends_the_model_processes(isolated: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(isolated.grpc_url)
    pid = _model_pids(isolated)[("iris", "1")]
    c.unload_model("iris")
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not c.is_model_ready("iris")


def test_each_instance_of_a_version_gets_a_process(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "mlp", repo / "mlp")
    cfg = repo / "mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("count: 1", "count: 2"))
    with running_server(tmp_path, repo, ["--model-isolation", "process"]) as s:
        pids = _all_pids(s)[("mlp", "2")]
        assert len(set(pids)) == 2 and all(_alive(p) for p in pids)
        c = grpcclient.InferenceServerClient(s.grpc_url)
        before = [_cpu_ticks(p) for p in pids]
        xs = [np.random.default_rng(i).standard_normal((3, 32)).astype(np.float32) for i in range(400)]
        # CPU time moves in 10 ms ticks: send rounds of requests until both processes show work
        # (bounded; a second instance that never runs fails the test)
        for _ in range(20):
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda x: _infer_mlp(c, x, "2"), xs))
            for x, out in zip(xs, outs, strict=True):
                np.testing.assert_allclose(out, _mlp("2", x), rtol=1e-5, atol=1e-6)
            if all(_cpu_ticks(p) > b for p, b in zip(pids, before, strict=True)):
                break
        else:
            raise AssertionError(f"not both processes worked: {before} -> {[_cpu_ticks(p) for p in pids]}")


def test_a_version_that_cannot_load_leaves_no_process_behind(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "mlp", repo / "mlp")
    (repo / "mlp" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    args = ["--model-isolation", "process", "--model-control-mode", "explicit"]
    with running_server(tmp_path, repo, args) as s:
        before = _children(s.proc.pid)
        c = grpcclient.InferenceServerClient(s.grpc_url)
        try:
            c.load_model(
                "mlp"
            )  # version 1 loads; whether the call reports version 2's failure is beside the point
        except Exception as exc:
            assert "cannot load" in str(exc)
        index = {
            (e["name"], e.get("version", "")): e for e in c.get_model_repository_index(as_json=True)["models"]
        }
        assert (
            index[("mlp", "2")]["state"] == "UNAVAILABLE" and "cannot load" in index[("mlp", "2")]["reason"]
        )
        assert c.is_model_ready("mlp", "1") and not c.is_model_ready("mlp", "2")
        v1 = _model_pids(s)[("mlp", "1")]
        deadline = time.monotonic() + 10
        while _children(s.proc.pid) - before - {v1} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _children(s.proc.pid) - before == {v1}  # the failed version's process is gone


def test_a_hung_model_process_is_stopped_after_the_run_timeout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(DEMO_REPO / "mlp", repo / "mlp")
    cfg = repo / "mlp" / "config.pbtxt"  # room for a request larger than the pipe buffers
    cfg.write_text(cfg.read_text().replace("max_batch_size: 64", "max_batch_size: 8192"))
    args = ["--model-isolation", "process", "--process-run-timeout-s", "1.5", "--log-format", "json"]
    with running_server(tmp_path, repo, args) as s:
        pids = _model_pids(s)
        # the children log through the server's stderr, in its format, marked with their origin
        lines = [json.loads(line) for line in s.log().splitlines() if line.startswith("{")]
        built = [e for e in lines if "warmed up" in e["msg"]]
        assert {e["logger"] for e in built} == {
            f"turnout.model_store[mlp/{v} pid {pids[('mlp', v)]}]" for v in ("1", "2")
        }, s.log()

        c = grpcclient.InferenceServerClient(s.grpc_url)
        # version 2 stops answering: a small request waits for the run timeout, then fails;
        # version 1 stops reading its pipe: an 8192-row request (1 MiB, more than a socket pair
        # buffers) cannot even be sent, and only the watchdog ends the wait
        for version, rows in (("2", 2), ("1", 8192)):
            hung = pids[("mlp", version)]
            x = np.ones((rows, 32), np.float32)
            os.kill(hung, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(Exception, match=r"did not answer within 1\.5 s"):
                    _infer_mlp(c, x, version)
                assert time.monotonic() - t0 < 15
                deadline = time.monotonic() + 10
                while _alive(hung) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not _alive(hung)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hung, signal.SIGCONT)
            assert not c.is_model_ready("mlp", version)
        assert s.alive()
        c.load_model("mlp")  # loading again restarts both
        x = np.ones((3, 32), np.float32)
        for version in ("1", "2"):
            np.testing.assert_allclose(_infer_mlp(c, x, version), _mlp(version, x), rtol=1e-5, atol=1e-6)


def _catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("point", ["importing", "loading", "serving"])
def test_sigterm_during_the_start_ends_cleanly(tmp_path: Path, point: str) -> None:
    """Exit status 0 (a requested stop) and no process of the server's left, whether the signal
    comes while Python imports (once the server handles SIGTERM at all), while the models load
    into their processes, or once serving."""
    ports = tmp_path / "ports.json"
    cmd = [sys.executable, "-m", "turnout", "serve", "--host", "127.0.0.1", "--http-port", "0"]
    cmd += ["--grpc-port", "0", "--model-isolation", "process", "--ports-file", str(ports)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        reached = {
            "importing": lambda: _catches_sigterm(proc.pid),
            "loading": lambda: "serving from process" in log_path.read_text(errors="replace"),
            "serving": ports.exists,
        }[point]
        deadline = time.monotonic() + 60
        while not reached():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text(errors="replace")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anything left in the server's process group?
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("a process of the server outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
