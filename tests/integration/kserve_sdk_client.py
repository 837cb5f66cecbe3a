"""Drive a running Turnout with the KServe Python SDK (``kserve``'s V2 REST and gRPC clients).

The SDK pins protobuf and grpcio versions of its own, so it lives in a venv of its own
(``make test`` builds ``.venv-kserve``) and this script runs there, not under pytest:

    .venv-kserve/bin/python tests/integration/kserve_sdk_client.py HTTP GRPC IN.npz OUT.npz

``IN.npz`` holds the tensors to send: ``echo/<input name>`` for the demo echo model and
``mlp/input`` for the demo mlp. ``OUT.npz`` receives every output the SDK decoded
(``<transport>/<model>/<output name>``) and ``facts``: a JSON object of what the health calls
and the deliberately bad requests returned.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}


def request(model: str, arrays: dict[str, np.ndarray], binary: bool, request_id: str) -> InferRequest:
    inputs = []
    for name, arr in arrays.items():
        i = InferInput(name, list(arr.shape), DATATYPE[arr.dtype])
        # the SDK sends FP16 only as binary data: a "JSON" request then mixes the two forms
        i.set_data_from_numpy(arr, binary_data=binary or arr.dtype == np.float16)
        inputs.append(i)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=request_id)


async def main() -> None:
    http, grpc_url, src, dst = sys.argv[1:5]
    data = dict(np.load(src, allow_pickle=True))
    by_model: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in data.items():
        model, name = key.split("/", 1)
        by_model.setdefault(model, {})[name] = arr
    out: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    base = f"http://{http}"

    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    try:
        facts["rest_live"] = await rest.is_server_live(base)
        facts["rest_ready"] = await rest.is_server_ready(base)
        facts["rest_model_ready"] = await rest.is_model_ready(base, "mlp")
        facts["rest_unknown_model_ready"] = await rest.is_model_ready(base, "no_such_model")
        for binary in (False, True):
            for model, arrays in by_model.items():
                headers: dict[str, str] = {}
                req = request(model, arrays, binary, f"rest-{binary}")
                res = await rest.infer(base, req, model_name=model, response_headers=headers)
                facts[f"rest{int(binary)}/{model}/id"] = res.id
                # the SDK drops model_version from binary-framed answers; Turnout also sends a header
                facts[f"rest{int(binary)}/{model}/version"] = res.model_version or headers.get(
                    "x-model-version"
                )
                for o in res.outputs:
                    out[f"rest{int(binary)}/{model}/{o.name}"] = o.as_numpy()
        bad = {"input": np.zeros((1, 3), np.float32)}  # mlp takes 32 features
        for model in ("no_such_model", "mlp"):
            try:
                await rest.infer(base, request(model, bad, False, "bad"), model_name=model)
                facts[f"rest_bad/{model}"] = "accepted"
            except httpx.HTTPStatusError as exc:
                facts[f"rest_bad/{model}"] = [exc.response.status_code, exc.response.json().get("error", "")]
    finally:
        await rest.close()

    async with InferenceGRPCClient(grpc_url, retries=2, timeout=30) as client:
        facts["grpc_live"] = await client.is_server_live()
        facts["grpc_ready"] = await client.is_server_ready()
        facts["grpc_model_ready"] = await client.is_model_ready("mlp")
        for model, arrays in by_model.items():
            res = await client.infer(request(model, arrays, True, "grpc"))
            facts[f"grpc/{model}/id"] = res.id
            facts[f"grpc/{model}/version"] = res.model_version
            for o in res.outputs:
                out[f"grpc/{model}/{o.name}"] = o.as_numpy()
        for model in ("no_such_model", "mlp"):
            try:
                await client.infer(request(model, bad, True, "bad"))
                facts[f"grpc_bad/{model}"] = "accepted"
            except grpc.aio.AioRpcError as exc:
                facts[f"grpc_bad/{model}"] = [exc.code().name, exc.details()]

    out["facts"] = np.array(json.dumps(facts))
    np.savez(dst, **out)


if __name__ == "__main__":
    asyncio.run(main())
