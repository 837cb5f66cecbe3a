"""The real server over HTTP: tritonclient's HTTP clients (JSON and binary tensors, sync
and asyncio) and plain HTTP requests as curl would send them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from tests.integration.tensors import DATATYPES, echo_arrays
from tests.server_proc import ServerProc


def _inputs(mod: object, arrays: dict[str, np.ndarray], binary: bool) -> list[object]:
    out = []
    for name, arr in arrays.items():
        i = mod.InferInput(name, list(arr.shape), name.removeprefix("IN_"))  # type: ignore[attr-defined]
        i.set_data_from_numpy(arr, binary_data=binary)
        out.append(i)
    return out


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_every_datatype_round_trips(demo_server: ServerProc, binary_in: bool, binary_out: bool) -> None:
    c = httpclient.InferenceServerClient(demo_server.http_url)
    arrays = echo_arrays()
    outputs = [httpclient.InferRequestedOutput(f"OUT_{dt}", binary_data=binary_out) for dt in DATATYPES]
    res = c.infer("echo", _inputs(httpclient, arrays, binary_in), outputs=outputs, request_id="h-1")
    assert res.get_response()["id"] == "h-1"
    for dt in DATATYPES:
        got = res.as_numpy(f"OUT_{dt}")
        want = arrays[f"IN_{dt}"]
        assert got.shape == want.shape, dt
        if dt == "BYTES":
            assert [
                bytes(x) if not isinstance(x, str) else x.encode() for x in got.reshape(-1)
            ] == want.reshape(-1).tolist()
        elif dt == "FP16" and not binary_out:
            np.testing.assert_allclose(got.astype(np.float16), want, err_msg=dt)
        else:
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=dt)


def test_health_metadata_config_stats(demo_server: ServerProc) -> None:
    c = httpclient.InferenceServerClient(demo_server.http_url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("iris") and not c.is_model_ready("iris", "5")
    assert c.get_server_metadata()["name"] == "turnout"
    meta = c.get_model_metadata("mlp", "2")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 32]}
    cfg = c.get_model_config("mlp")
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["dims"] == [32]
    stats = c.get_inference_statistics("mlp")["model_stats"]
    assert {s["version"] for s in stats} == {"1", "2"}


@pytest.mark.asyncio
async def test_aio_client(demo_server: ServerProc) -> None:
    c = httpaio.InferenceServerClient(demo_server.http_url)
    try:
        arrays = echo_arrays(rows=3, cols=2, seed=5)
        res = await c.infer("echo", _inputs(httpaio, arrays, True))
        np.testing.assert_array_equal(res.as_numpy("OUT_UINT64"), arrays["IN_UINT64"])
        np.testing.assert_array_equal(res.as_numpy("OUT_FP16"), arrays["IN_FP16"])
    finally:
        await c.close()


def test_curl_style_json(demo_server: ServerProc) -> None:
    body = {
        "id": "abc",
        "parameters": {"note": "passed through"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [[5.1, 3.5, 1.4, 0.2]]}],
        "outputs": [{"name": "label"}],
    }
    r = httpx.post(f"{demo_server.base}/v2/models/iris/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "abc" and doc["model_name"] == "iris" and doc["model_version"] == "1"
    assert doc["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}]
    assert r.headers["x-model-version"] == "1"


def test_version_pinned_url(demo_server: ServerProc) -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    outs = {}
    for v in ("1", "2"):
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 32], "data": x.reshape(-1).tolist()}
            ]
        }
        r = httpx.post(f"{demo_server.base}/v2/models/mlp/versions/{v}/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == v
        outs[v] = r.json()["outputs"][0]["data"]
    assert outs["1"] != outs["2"]


def test_repository_index_http(demo_server: ServerProc) -> None:
    r = httpx.post(f"{demo_server.base}/v2/repository/index", json={"ready": True})
    assert r.status_code == 200
    entry = next(e for e in r.json() if e["name"] == "iris")
    assert (entry["version"], entry["state"]) == ("1", "READY")
    assert len(entry["sha256"]) == 64


def test_metrics_endpoint(demo_server: ServerProc) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert httpx.post(f"{demo_server.base}/v2/models/iris/infer", json=body).status_code == 200
    assert httpx.post(f"{demo_server.base}/v2/models/no-such-model/infer", json=body).status_code == 404
    text = httpx.get(f"{demo_server.base}/metrics").text
    assert 'turnout_requests_total{code="ok",model="iris",protocol="http",version="1"}' in text
    # a model the server does not know is counted under model="", not under the client's name
    assert 'turnout_requests_total{code="not_found",model="",protocol="http",version=""}' in text
    assert "no-such-model" not in text
    assert "turnout_request_duration_seconds_bucket" in text


def test_dashboard_page(demo_server: ServerProc) -> None:
    r = httpx.get(f"{demo_server.base}/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for section in ("models", "traffic", "shadow", "audit", "drift"):
        assert f'id="{section}"' in r.text
    assert "/v2/models/stats" in r.text
    # self-contained: nothing loaded from elsewhere
    assert "http://" not in r.text and "https://" not in r.text and "<link" not in r.text
    data = httpx.get(f"{demo_server.base}/dashboard/data").json()
    assert {"interval_s", "capacity", "versions", "models", "drift", "audit", "now"} <= set(data)
    assert {(v["model"], v["version"]) for v in data["versions"]} >= {("iris", "1"), ("mlp", "1")}
