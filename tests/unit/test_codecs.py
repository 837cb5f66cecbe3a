"""Pure codec logic: raw tensor bytes, V2 JSON + binary bodies, protobuf conversion, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.model_store.datatypes import BY_V2
from turnout.model_store.signature import Signature, TensorSpec
from turnout.protos import inference_pb2 as pb
from turnout.server.errors import InvalidInput
from turnout.server.grpc.convert import decode_request, encode_response
from turnout.server.http.codec import decode_infer_request, encode_infer_response
from turnout.server.http.infer_route import parse_infer_path
from turnout.server.tensor_codec import decode_raw, encode_raw
from turnout.server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from turnout.server.validation import validate_inputs, validate_outputs

FIXED = [n for n in BY_V2 if n != "BYTES"]


def _array(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        return np.array([f"x{i}\u00e9".encode() for i in range(int(np.prod(shape)))], dtype=object).reshape(
            shape
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dt = BY_V2[datatype].numpy
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


@pytest.mark.parametrize("datatype", [*FIXED, "BYTES"])
def test_raw_round_trip(datatype: str) -> None:
    a = _array(datatype, (3, 2))
    back = decode_raw("x", datatype, (3, 2), encode_raw(a, datatype))
    assert back.shape == (3, 2)
    assert back.tolist() == a.tolist()


def test_raw_decode_is_zero_copy() -> None:
    buf = np.arange(8, dtype=np.float32).tobytes()
    arr = decode_raw("x", "FP32", (2, 4), buf)
    assert not arr.flags.owndata  # a view over the received bytes


@pytest.mark.parametrize(
    ("datatype", "shape", "buf", "message"),
    [
        ("FP32", (2,), b"\x00" * 7, "expected 8"),
        ("BYTES", (2,), b"\x04\x00\x00\x00abcd", "ends after 1 of 2"),
        ("BYTES", (2,), b"\x01\x00\x00\x00a", "cannot hold 2 elements"),
        ("BYTES", (1 << 30,), b"\x00" * 16, "cannot hold 1073741824 elements"),
        ("BYTES", (1,), b"\x09\x00\x00\x00a", "claims 9 bytes"),
        ("BYTES", (1,), b"\x01\x00\x00\x00ab", "left over"),
        ("BOOL", (1,), b"\x02", "0 or 1"),
        ("F32", (1,), b"\x00" * 4, "unknown datatype"),
    ],
)
def test_raw_decode_errors(datatype: str, shape: tuple[int, ...], buf: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_raw("x", datatype, shape, buf)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FIXED), st.lists(st.integers(0, 4), min_size=0, max_size=3), st.integers(0, 2**31))
def test_raw_round_trip_property(datatype: str, shape: list[int], seed: int) -> None:
    a = _array(datatype, tuple(shape), seed)
    back = decode_raw("x", datatype, tuple(shape), encode_raw(a, datatype))
    np.testing.assert_array_equal(back, a)


def test_http_json_and_binary_request() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([True, False])
    header = json.dumps(
        {
            "id": "7",
            "parameters": {"routing_key": "u1", "priority": 2},
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {"name": "y", "datatype": "BOOL", "shape": [2], "data": [True, False]},
                {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "\u00e9"]]},
            ],
            "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
        }
    ).encode()
    req = decode_infer_request("m", "3", header + x.tobytes(), str(len(header)))
    assert (req.model_name, req.model_version, req.id, req.routing_key) == ("m", "3", "7", "u1")
    np.testing.assert_array_equal(req.inputs[0].data, x)
    np.testing.assert_array_equal(req.inputs[1].data, y)
    assert req.inputs[2].data.tolist() == [[b"a", "\u00e9".encode()]]
    assert req.outputs == [RequestedOutput("out", {"binary_data": True})]


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{", None, "malformed JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', None, "expected 2"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}]}',
            None,
            "list of integers",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "neither 'data'"),
        (
            b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
            None,
            "JSON strings",
        ),
        (b"{}", "x", "must be an integer"),
        (b"{}", "9", "but the body has"),
    ],
)
def test_http_decode_errors(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request("m", "", body, header)


def test_http_response_json_and_binary() -> None:
    out = np.arange(4, dtype=np.float32).reshape(2, 2)
    resp = InferResponse(
        "m", "1", "9", [Tensor("a", "FP32", (2, 2), out), Tensor("b", "INT64", (2,), np.array([1, 2]))]
    )
    req = InferRequest("m", parameters={})
    body, n = encode_infer_response(resp, req)
    assert n is None
    doc = json.loads(body)
    assert doc["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [0.0, 1.0, 2.0, 3.0],
    }
    req_bin = InferRequest("m", parameters={"binary_data_output": True})
    body, n = encode_infer_response(resp, req_bin)
    assert n is not None
    doc = json.loads(body[:n])
    size = doc["outputs"][0]["parameters"]["binary_data_size"]
    np.testing.assert_array_equal(np.frombuffer(body[n : n + size], np.float32).reshape(2, 2), out)


def test_grpc_round_trip() -> None:
    msg = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    msg.inputs.add(name="x", datatype="INT16", shape=[2])
    msg.raw_input_contents.append(np.array([1, -2], np.int16).tobytes())
    msg.parameters["routing_key"].string_param = "k"
    msg.parameters["timeout"].int64_param = 1000
    req = decode_request(msg)
    assert req.routing_key == "k" and req.parameters["timeout"] == 1000
    assert req.inputs[0].data.tolist() == [1, -2]
    typed = pb.ModelInferRequest(model_name="m")
    t = typed.inputs.add(name="x", datatype="UINT8", shape=[3])
    t.contents.uint_contents.extend([1, 2, 255])
    assert decode_request(typed).inputs[0].data.dtype == np.uint8
    t.contents.uint_contents.append(4)
    with pytest.raises(InvalidInput, match="expected 3"):
        decode_request(typed)
    out = encode_response(
        InferResponse("m", "2", "r", [Tensor("y", "BYTES", (2,), np.array([b"a", b"bc"], dtype=object))])
    )
    assert out.raw_output_contents[0] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"


SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("mask", "BOOL", (2,), optional=True)),
    outputs=(TensorSpec("y", "FP32", (4,)),),
    max_batch_size=8,
)


def _t(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    return Tensor(name, datatype, shape, np.zeros(shape, dtype=BY_V2[datatype].numpy))


def test_validation_accepts_dynamic_dims_and_optional_inputs() -> None:
    feeds, rows = validate_inputs("m", SIG, [_t("x", "FP32", (4, 5, 3))])
    assert rows == 4 and set(feeds) == {"x"}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_t("z", "FP32", (1, 1, 3))], "no input 'z'"),
        ([_t("x", "FP64", (1, 1, 3))], "expects FP32"),
        ([_t("x", "FP32", (1, 1, 4))], r"expects \[-1, -1, 3\]"),
        ([_t("x", "FP32", (9, 1, 3))], "outside 1..8"),
        ([_t("x", "FP32", (2, 1, 3)), _t("mask", "BOOL", (3, 2))], "batch size 3"),
        ([_t("mask", "BOOL", (1, 2))], "needs input"),
        ([_t("x", "FP32", (1, 1, 3)), _t("x", "FP32", (1, 1, 3))], "more than once"),
    ],
)
def test_validation_errors(inputs: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_inputs("m", SIG, inputs)


def test_requested_output_validation() -> None:
    validate_outputs("m", SIG, [RequestedOutput("y")])
    with pytest.raises(InvalidInput, match="no output 'q'"):
        validate_outputs("m", SIG, [RequestedOutput("q")])
    # a response never holds more tensors than the model has outputs; a name repeated is
    # refused first, as the codecs used to before validation was in one place
    with pytest.raises(InvalidInput, match="names 3 outputs, model 'm' has 1"):
        validate_outputs("m", SIG, [RequestedOutput("y"), RequestedOutput("q"), RequestedOutput("r")])
    with pytest.raises(InvalidInput, match="output 'y' is requested more than once"):
        validate_outputs("m", SIG, [RequestedOutput("y")] * 1000)
    two = Signature(
        inputs=SIG.inputs,
        outputs=(TensorSpec("y", "FP32", (4,)), TensorSpec("z", "FP32", (4,))),
        max_batch_size=8,
    )
    with pytest.raises(InvalidInput, match="output 'y' is requested more than once"):
        validate_outputs("m", two, [RequestedOutput("y"), RequestedOutput("y")])


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/v2/models/m/infer", ("m", "")),
        ("/v2/models/m/versions/3/infer", ("m", "3")),
        ("/v2/models//infer", None),
        ("/v2/models/m/versions//infer", None),
        ("/v2/models/m/x/3/infer", None),
        ("/v2/models/m/ready", None),
    ],
)
def test_infer_path(path: str, want: tuple[str, str] | None) -> None:
    assert parse_infer_path(path) == want
