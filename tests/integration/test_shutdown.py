"""A SIGTERM while requests are in flight: the server turns unready, finishes every request it
has accepted, over gRPC and HTTP, and exits with 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from tests.server_proc import ServerProc, running_server
from turnout.model_store.demo.build import mlp

DIMS = [256, 1024, 1024, 1024, 1024, 16]  # ~4 ms per 64-row batch on one core
ROWS = 64
REQUESTS = 24  # per protocol: about 200 ms of inference in all, far more than the signal takes


def _repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "heavy" / "1").mkdir(parents=True)
    model = mlp(DIMS, np.random.default_rng(3), "heavy", producer="turnout-tests")
    onnx.save(model, str(repo / "heavy" / "1" / "model.onnx"))
    (repo / "heavy" / "config.pbtxt").write_text(
        'name: "heavy"\nbackend: "onnxruntime"\nmax_batch_size: 64\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 256 ] } ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        "dynamic_batching { }\n"
    )
    return repo


async def _grpc(c: grpcaio.InferenceServerClient, x: np.ndarray) -> tuple[np.ndarray, float]:
    i = grpcaio.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    out = (await c.infer("heavy", [i], client_timeout=60)).as_numpy("output")
    return out, time.monotonic()


async def _http(c: httpaio.InferenceServerClient, x: np.ndarray) -> tuple[np.ndarray, float]:
    i = httpaio.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=True)
    out = (await c.infer("heavy", [i])).as_numpy("output")
    return out, time.monotonic()


async def _scenario(
    s: ServerProc, xs: list[np.ndarray]
) -> tuple[list[tuple[np.ndarray, float]], float, bool]:
    # one client per protocol, connected before the burst, as a service's clients would be
    g = grpcaio.InferenceServerClient(s.grpc_url)
    hc = httpaio.InferenceServerClient(s.http_url, conn_limit=REQUESTS, conn_timeout=60)
    try:
        assert await g.is_server_ready() and await hc.is_server_ready()
        calls = [_grpc(g, x) for x in xs[:REQUESTS]] + [_http(hc, x) for x in xs[REQUESTS:]]
        tasks = [asyncio.create_task(c) for c in calls]
        async with httpx.AsyncClient() as h:
            # signal once the server is busy with them: its first batches have run
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stats = (await h.get(f"{s.base}/v2/models/heavy/stats")).json()["model_stats"][0]
                if stats["inference_count"] >= 2 * ROWS:
                    break
                await asyncio.sleep(0.002)
            s.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # from the signal on, readiness is false (503) until the HTTP side closes
            unready = False
            for _ in range(2000):
                try:
                    r = await h.get(f"{s.base}/v2/health/ready", timeout=1)
                except httpx.HTTPError:
                    unready = True
                    break
                if r.status_code == 503:
                    unready = True
                    break
                await asyncio.sleep(0.005)
        return await asyncio.gather(*tasks), signalled, unready
    finally:
        await g.close()
        await hc.close()


def test_sigterm_under_load_finishes_every_accepted_request(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    sess = ort.InferenceSession(str(repo / "heavy" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    xs = [
        np.random.default_rng(i).standard_normal((ROWS, 256)).astype(np.float32) for i in range(2 * REQUESTS)
    ]

    with running_server(tmp_path, repo) as s:
        results, signalled, unready = asyncio.run(_scenario(s, xs))
        code = s.proc.wait(60)

    assert code == 0, s.log()
    for x, (out, _) in zip(xs, results, strict=True):
        np.testing.assert_allclose(out, sess.run(["output"], {"input": x})[0], rtol=1e-4, atol=1e-5)
    finished_after = sum(t > signalled for _, t in results)
    assert finished_after > 0, "no request was still in flight at the signal: the test proves nothing"
    assert unready
