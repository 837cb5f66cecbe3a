"""The real server, reached with tritonclient's gRPC clients (sync and asyncio)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.integration.tensors import DATATYPES, echo_arrays
from tests.server_proc import ServerProc, demo_or_variant


@pytest.fixture(scope="module", params=["asyncio", "grpcio"])
def grpc_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProc]:
    """The demo server on Turnout's own gRPC transport (the default) and on grpcio's."""
    variant = None if request.param == "asyncio" else ["--grpc-transport", "grpcio"]
    yield from demo_or_variant(request, tmp_path_factory, variant)


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in arrays.items():
        dt = name.removeprefix("IN_")
        i = grpcclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def test_health_and_metadata(grpc_server: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("mlp")
    assert c.is_model_ready("mlp", "1")
    assert not c.is_model_ready("mlp", "9")
    assert not c.is_model_ready("nope")
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "turnout"
    assert "binary_tensor_data" in meta["extensions"]
    m = c.get_model_metadata("mlp", as_json=True)
    assert m["versions"] == ["1", "2"]
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "32"]}]
    assert m["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "8"]}]
    cfg = c.get_model_config("mlp", as_json=True)["config"]
    assert cfg["max_batch_size"] == 64
    assert cfg["input"][0]["dims"] == ["32"]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
    iris = c.get_model_config("iris", as_json=True)["config"]
    assert iris["max_batch_size"] == 256
    assert [o["name"] for o in iris["output"]] == ["label", "probabilities"]


def test_every_datatype_round_trips(grpc_server: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    arrays = echo_arrays()
    res = c.infer("echo", _inputs(arrays), request_id="rt-1")
    assert res.get_response().id == "rt-1"
    assert res.get_response().model_version == "1"
    for dt in DATATYPES:
        got = res.as_numpy(f"OUT_{dt}")
        want = arrays[f"IN_{dt}"]
        assert got.shape == want.shape, dt
        if dt == "BYTES":
            assert got.tolist() == want.tolist()
        else:
            assert got.dtype == want.dtype, dt
            np.testing.assert_array_equal(got, want, err_msg=dt)


def test_typed_contents_are_accepted(grpc_server: ServerProc) -> None:
    """Requests may carry typed `contents` instead of raw bytes (tritonclient always sends
    raw, so build the protobuf message by hand)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    arrays = echo_arrays(rows=1, cols=2)
    req = service_pb2.ModelInferRequest(model_name="echo")
    fields = {
        "BOOL": "bool_contents",
        "UINT8": "uint_contents",
        "UINT16": "uint_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }
    for dt in DATATYPES:
        if dt == "FP16":
            continue
        t = req.inputs.add(name=f"IN_{dt}", datatype=dt, shape=[1, 2])
        getattr(t.contents, fields[dt]).extend(arrays[f"IN_{dt}"].reshape(-1).tolist())
    with grpc.insecure_channel(grpc_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req)  # FP16 is missing: the model needs every input
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "IN_FP16" in e.value.details()
        t = req.inputs.add(name="IN_FP16", datatype="FP16", shape=[1, 2])
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req)  # FP16 has no typed field
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in e.value.details()


def test_requested_outputs_and_classifier(grpc_server: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    i = grpcclient.InferInput("input", [2, 4], "FP32")
    i.set_data_from_numpy(x)
    res = c.infer("iris", [i], outputs=[grpcclient.InferRequestedOutput("label")])
    assert res.as_numpy("label").tolist() == [0, 2]
    assert res.as_numpy("probabilities") is None


def test_stream_infer(grpc_server: ServerProc) -> None:
    import queue

    results: queue.Queue[object] = queue.Queue()
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    c.start_stream(callback=lambda result, error: results.put(error or result))
    x = np.ones((1, 32), dtype=np.float32)
    for n in range(3):
        i = grpcclient.InferInput("input", [1, 32], "FP32")
        i.set_data_from_numpy(x * n)
        c.async_stream_infer("mlp", [i], request_id=str(n))
    bad = grpcclient.InferInput("input", [1, 31], "FP32")
    bad.set_data_from_numpy(np.ones((1, 31), dtype=np.float32))
    c.async_stream_infer("mlp", [bad], request_id="bad")
    got = [results.get(timeout=10) for _ in range(4)]
    c.stop_stream()
    ok = [r for r in got if not isinstance(r, InferenceServerException)]
    errors = [r for r in got if isinstance(r, InferenceServerException)]
    assert sorted(r.get_response().id for r in ok) == ["0", "1", "2"]  # type: ignore[attr-defined]
    assert len(errors) == 1 and "shape" in str(errors[0])


def test_statistics_and_repository(grpc_server: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    x = np.zeros((3, 32), dtype=np.float32)
    i = grpcclient.InferInput("input", [3, 32], "FP32")
    i.set_data_from_numpy(x)
    before = c.get_inference_statistics("mlp", "1", as_json=True)["model_stats"][0]
    c.infer("mlp", [i], model_version="1")
    after = c.get_inference_statistics("mlp", "1", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 3
    assert (
        int(after["inference_stats"]["success"]["count"])
        == int(before["inference_stats"].get("success", {}).get("count", 0)) + 1
    )
    all_stats = c.get_inference_statistics(as_json=True)["model_stats"]
    assert {(s["name"], s["version"]) for s in all_stats} >= {
        ("mlp", "1"),
        ("mlp", "2"),
        ("iris", "1"),
        ("echo", "1"),
    }
    index = c.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m.get("version"), m["state"]) for m in index} >= {
        ("mlp", "1", "READY"),
        ("iris", "1", "READY"),
    }


@pytest.mark.asyncio
async def test_aio_client(grpc_server: ServerProc) -> None:
    c = grpcaio.InferenceServerClient(grpc_server.grpc_url)
    try:
        assert await c.is_server_ready()
        arrays = echo_arrays(rows=4, cols=1, seed=11)
        inputs = []
        for name, arr in arrays.items():
            i = grpcaio.InferInput(name, list(arr.shape), name.removeprefix("IN_"))
            i.set_data_from_numpy(arr)
            inputs.append(i)
        res = await c.infer("echo", inputs)
        np.testing.assert_array_equal(res.as_numpy("OUT_INT64"), arrays["IN_INT64"])
        assert res.as_numpy("OUT_BYTES").tolist() == arrays["IN_BYTES"].tolist()
    finally:
        await c.close()


def test_unimplemented_extension(grpc_server: ServerProc) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        c.get_system_shared_memory_status()
    assert "StatusCode.UNIMPLEMENTED" in e.value.status()
    assert "not implemented" in e.value.message()


def test_health_service_and_reflection(grpc_server: ServerProc) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(grpc_server.grpc_url) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="")).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(
            iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        assert "grpc.health.v1.Health" in names
