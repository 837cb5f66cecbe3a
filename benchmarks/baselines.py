"""The transports' own ceilings, measured beside Turnout in one run.

A *bare* server serves one model over gRPC (a grpc.aio servicer) and HTTP JSON (a Starlette
handler under uvicorn, uvloop + httptools), in one process and one event loop like Turnout. Its
infer handlers only decode, run onnxruntime on the loop and encode: no batching, validation,
metrics, routing or drift. It also answers the health, metadata and config calls that
perf_analyzer makes. Bare and Turnout are started fresh and measured in alternating pairs:

* concurrency 1, median latency: perf_analyzer (gRPC) and wrk (HTTP JSON);
* concurrency 32, throughput: the harness's neutral generators (``loadgen_grpc.py``, and wrk
  through ``loadgen_rest.py``).

    python -m benchmarks.baselines [--pairs 3] [--duration 5] [--out benchmarks/results]
    python -m benchmarks.baselines serve --model-dir REPO/mlp_small --http-port 8000 --grpc-port 8001
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import models, perf_analyzer
from benchmarks.common import MODELS, PEERS_DIR, PYTHON, check_loopback
from benchmarks.server import Turnout, http_status
from turnout.server.cli import apply_grpc_experiments
from turnout.server.settings import Settings

MODEL = "mlp_small"


# ---- the bare server ------------------------------------------------------------------------


def serve(model_dir: Path, http_port: int, grpc_port: int) -> None:
    import grpc
    import numpy as np
    import onnxruntime as ort
    import orjson
    import uvicorn
    import uvloop
    from google.protobuf import text_format
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from turnout.protos import inference_pb2 as pb
    from turnout.protos import inference_pb2_grpc as pbg
    from turnout.protos import model_config_pb2 as mc

    name = model_dir.name
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]

    def tensor_meta(t: Any) -> Any:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=t.name, datatype="FP32", shape=[-1 if not isinstance(d, int) else d for d in t.shape]
        )

    metadata = pb.ModelMetadataResponse(
        name=name,
        versions=["1"],
        platform="onnxruntime_onnx",
        inputs=[tensor_meta(inp)],
        outputs=[tensor_meta(out)],
    )

    class Servicer(pbg.GRPCInferenceServiceServicer):
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=request.name == name)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name="bare", version="0")

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            return metadata

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            return pb.ModelConfigResponse(config=config)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            t = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(t.shape))
            y = sess.run([out.name], {inp.name: x})[0]
            r = pb.ModelInferResponse(model_name=name, model_version="1", id=request.id)
            r.outputs.add(name=out.name, datatype="FP32", shape=y.shape)
            r.raw_output_contents.append(y.tobytes())
            return r

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        t = body["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = sess.run([out.name], {inp.name: x})[0]
        answer = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {"name": out.name, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
            ],
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"")

    app = Starlette(
        routes=[
            Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )

    async def main() -> None:
        server = grpc.aio.server()
        pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=http_port, log_level="warning", access_log=False, http="httptools"
        )
        try:
            await uvicorn.Server(cfg).serve()
        finally:
            await server.stop(None)

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _experiments() -> str:
    env: dict[str, str] = dict(os.environ)
    apply_grpc_experiments(Settings(), env)
    value = env.get("GRPC_EXPERIMENTS", "")
    return f"`GRPC_EXPERIMENTS={value}`" if value else "none (grpc's defaults)"


class Bare:
    def __init__(self, model_dir: Path) -> None:
        http_port, grpc_port = _free_port(), _free_port()
        self.http, self.grpc = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        cmd = [PYTHON, "-m", "benchmarks.baselines", "serve", "--model-dir", str(model_dir)]
        cmd += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        # the same grpc core settings as Turnout's server (`turnout serve` sets them the same way)
        env = dict(os.environ)
        apply_grpc_experiments(Settings(), env)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while http_status(f"http://{self.http}/v2/health/ready") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ---- the measurements -----------------------------------------------------------------------


def peer_tool(script: str, url: str, concurrency: int, duration: float, model: str = MODEL) -> dict[str, Any]:
    check_loopback(url)
    cmd = [PYTHON, str(PEERS_DIR / script), "--url", url, "--model", model, "--width", str(MODELS[model][0])]
    cmd += ["--concurrency", str(concurrency), "--duration", f"{duration:g}"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120)
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def measure(http: str, grpc: str, duration: float) -> dict[str, float]:
    pa = perf_analyzer.run_point(MODEL, "grpc", grpc, 1, 3000, 6, 30, retries=1)
    return {
        "grpc_c1_p50_ms": float(pa.get("p50_ms", float("nan"))),
        "http_c1_p50_ms": float(peer_tool("loadgen_rest.py", http, 1, duration)["p50_ms"]),
        "grpc_c32_rps": float(peer_tool("loadgen_grpc.py", grpc, 32, duration)["infer_per_s"]),
        "http_c32_rps": float(peer_tool("loadgen_rest.py", http, 32, duration)["infer_per_s"]),
    }


LABELS = {
    "grpc_c1_p50_ms": ("gRPC, concurrency 1, p50 (perf_analyzer)", "ms"),
    "http_c1_p50_ms": ("HTTP JSON, concurrency 1, p50 (wrk)", "ms"),
    "grpc_c32_rps": ("gRPC, concurrency 32, throughput (loadgen_grpc.py)", "req/s"),
    "http_c32_rps": ("HTTP JSON, concurrency 32, throughput (wrk)", "req/s"),
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        ap = argparse.ArgumentParser(prog="benchmarks.baselines serve")
        ap.add_argument("--model-dir", type=Path, required=True)
        ap.add_argument("--http-port", type=int, default=8000)
        ap.add_argument("--grpc-port", type=int, default=8001)
        a = ap.parse_args(sys.argv[2:])
        serve(a.model_dir, a.http_port, a.grpc_port)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="turnout-baselines-"))
    repo = models.build(work / "models")
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "turnout": []}
    for i in range(ns.pairs):
        bare = Bare(repo / MODEL)
        try:
            runs["bare"].append(measure(bare.http, bare.grpc, ns.duration))
        finally:
            bare.stop()
        srv = Turnout(repo, work / f"srv-{i}")
        srv.start()
        try:
            runs["turnout"].append(measure(srv.http, srv.grpc, ns.duration))
        finally:
            srv.stop()
        print(f"pair {i + 1}: bare {runs['bare'][-1]} turnout {runs['turnout'][-1]}", flush=True)
    rows = []
    for key, (label, unit) in LABELS.items():
        b = [r[key] for r in runs["bare"]]
        t = [r[key] for r in runs["turnout"]]
        mb = statistics.median([x for x in b if math.isfinite(x)] or [math.nan])
        mt = statistics.median([x for x in t if math.isfinite(x)] or [math.nan])
        pairs = ", ".join(f"{y / x:.2f}" for x, y in zip(b, t, strict=True))
        fmt = ",.3f" if unit == "ms" else ",.0f"
        rows.append(f"| {label} | {mb:{fmt}} {unit} | {mt:{fmt}} {unit} | {mt / mb:.2f} ({pairs}) |")
    md = [
        "# Turnout beside bare transports (mlp_small, single-row requests)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC on the 2-core VM, loopback, {ns.pairs} alternating "
        f"pairs, fresh server per run, {ns.duration:g} s per generator run.",
        "",
        f"Command: `.venv/bin/python -m benchmarks.baselines --pairs {ns.pairs} --duration {ns.duration:g}`",
        "",
        "*Bare* is `benchmarks/baselines.py serve`: a grpc.aio servicer and a Starlette JSON handler in",
        "one uvloop process whose infer handlers only decode, run onnxruntime and encode. It runs with",
        f"the grpc experiments Turnout sets: {_experiments()}.",
        "",
        "| what | bare | Turnout | Turnout / bare (each pair) |",
        "|---|---|---|---|",
        *rows,
        "",
        "Raw values:",
        "",
        "```json",
        json.dumps(runs, indent=1),
        "```",
    ]
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "BASELINES.md").write_text("\n".join(md) + "\n")
    print(f"wrote {ns.out / 'BASELINES.md'}")


if __name__ == "__main__":
    main()
