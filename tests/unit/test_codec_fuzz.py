"""Fuzzing the request codecs: whatever a client sends, only the project's own errors escape.

Property, for the HTTP JSON codec, the binary tensor extension and the gRPC conversion: decoding
either raises a :class:`TurnoutError` (answered 4xx / INVALID_ARGUMENT) or returns a request
that respects the limits (dimensions, element count, data matching its shape) and whose outputs
server.validation either accepts, each named once, or refuses. Never RecursionError, ValueError,
MemoryError, KeyError... (an answer of 500).

Bounded and deterministic: ``derandomize=True`` makes every run draw the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.model_store.datatypes import BY_V2
from turnout.model_store.signature import Signature, TensorSpec
from turnout.protos import inference_pb2 as pb
from turnout.server.errors import InvalidInput, TurnoutError
from turnout.server.grpc.convert import decode_request
from turnout.server.grpc.servicer import _BadMessage, _deserializer
from turnout.server.http.codec import decode_infer_request
from turnout.server.tensor_codec import MAX_DIMS, MAX_ELEMENTS, check_shape, decode_raw
from turnout.server.types import InferRequest
from turnout.server.validation import validate_outputs

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DATATYPES = [*BY_V2, "FLOAT", "", "bytes"]
NAMES = ["input", "x", "y", ""]


def check_limits(req: InferRequest) -> None:
    for t in req.inputs:
        assert len(t.shape) <= MAX_DIMS
        assert math.prod(d or 1 for d in t.shape) <= MAX_ELEMENTS
        assert min(t.shape, default=0) >= 0
        assert t.data.shape == t.shape
        assert t.datatype in BY_V2
    if req.outputs is not None:
        # duplicates are refused in one place, server.validation, whatever the codec
        names = [o.name for o in req.outputs]
        sig = Signature(
            inputs=(),
            outputs=tuple(TensorSpec(n, "FP32", (1,)) for n in dict.fromkeys(names)),
            max_batch_size=0,
        )
        try:
            validate_outputs("m", sig, req.outputs)
        except InvalidInput as exc:
            assert "requested more than once" in str(exc) and len(names) != len(set(names))
        else:
            assert len(names) == len(set(names))


def decodes_or_refuses(decode: Callable[[], InferRequest]) -> None:
    """Only a TurnoutError may escape ``decode``; what it returns obeys the limits."""
    try:
        req = decode()
    except TurnoutError:
        return
    check_limits(req)


# ---- HTTP: JSON --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)

shapes = st.lists(st.integers(0, 3), max_size=4) | st.lists(
    st.integers(-3, 6) | st.integers(-(2**63), 2**64 - 1) | st.just(0), max_size=MAX_DIMS + 8
)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


tensor_data = (
    json_values
    | st.lists(st.integers(0, 3) | st.text(max_size=3) | st.booleans(), max_size=12)
    | st.builds(nested, st.integers(0, 80), json_scalars)
)

json_inputs = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "datatype": st.sampled_from(DATATYPES), "shape": shapes},
    optional={
        "data": tensor_data,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "p"]), json_scalars, max_size=2),
    },
)


def as_nested(flat: list[Any], shape: list[int]) -> Any:
    """``flat`` as lists nested like ``shape`` (row-major)."""
    for d in reversed(shape[1:]):
        if d == 0:
            return flat
        flat = [flat[i : i + d] for i in range(0, len(flat), d)]
    return flat


@st.composite
def fitting_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """An input whose data fits its shape and datatype (flat or nested), to reach the success path."""
    datatype = draw(st.sampled_from(list(BY_V2)))
    shape = draw(st.lists(st.integers(1, 3), max_size=4))
    count = math.prod(shape)
    element = (
        st.text(max_size=3)
        if datatype == "BYTES"
        else st.booleans()
        if datatype == "BOOL"
        else st.integers(0, 1)
    )
    flat = draw(st.lists(element, min_size=count, max_size=count))
    data = as_nested(flat, shape) if draw(st.booleans()) else flat
    return {"name": draw(st.sampled_from(NAMES[:3])), "datatype": datatype, "shape": shape, "data": data}


json_outputs = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(NAMES)}, optional={"parameters": json_values}), max_size=6
)
json_requests = st.fixed_dictionaries(
    {"inputs": st.lists(fitting_inputs() | json_inputs, min_size=1, max_size=3) | json_values},
    optional={"outputs": json_outputs | json_values, "parameters": json_values, "id": json_values},
)


@FUZZ
@given(json_requests)
def test_http_structured_json_requests(doc: dict[str, Any]) -> None:
    body = orjson.dumps(doc)
    decodes_or_refuses(lambda: decode_infer_request("m", "", body, None))


@FUZZ
@given(json_values)
def test_http_arbitrary_json_values(value: Any) -> None:
    body = orjson.dumps(value)
    decodes_or_refuses(lambda: decode_infer_request("m", "", body, None))


@FUZZ
@given(st.binary(max_size=256), st.none() | st.integers(-4, 300).map(str) | st.text(max_size=4))
def test_http_arbitrary_bytes(body: bytes, header_length: str | None) -> None:
    decodes_or_refuses(lambda: decode_infer_request("m", "", body, header_length))


# ---- HTTP: binary tensor extension ---------------------------------------------------------

binary_inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(NAMES),
        "datatype": st.sampled_from(DATATYPES),
        "shape": shapes,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 40) | json_scalars}),
    }
)


@FUZZ
@given(
    st.lists(binary_inputs, min_size=1, max_size=3),
    json_outputs,
    st.binary(max_size=96),
    st.integers(-3, 3),
)
def test_http_binary_extension(inputs: list[dict[str, Any]], outputs: Any, tail: bytes, skew: int) -> None:
    header = orjson.dumps({"inputs": inputs, "outputs": outputs})
    body = header + tail
    decodes_or_refuses(lambda: decode_infer_request("m", "", body, str(len(header) + skew)))


@FUZZ
@given(
    st.sampled_from(list(BY_V2)),
    st.lists(st.integers(0, 5) | st.integers(2**20, 2**64 - 1), max_size=MAX_DIMS + 4),
    st.binary(max_size=128),
)
def test_raw_tensor_bytes(datatype: str, shape: list[int], buf: bytes) -> None:
    try:  # as both codecs do: the shape is checked, then the bytes decoded
        arr = decode_raw("t", datatype, check_shape("t", shape), buf)
    except TurnoutError:
        return
    assert arr.shape == tuple(shape)


# ---- gRPC --------------------------------------------------------------------------------

int32s = st.integers(-(2**31), 2**31 - 1)
uint32s = st.integers(0, 2**32 - 1)
contents = st.builds(
    pb.InferTensorContents,
    bool_contents=st.lists(st.booleans(), max_size=6),
    int_contents=st.lists(int32s, max_size=6),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
    uint_contents=st.lists(uint32s, max_size=6),
    uint64_contents=st.lists(st.integers(0, 2**64 - 1), max_size=6),
    fp32_contents=st.lists(st.floats(width=32), max_size=6),
    fp64_contents=st.lists(st.floats(), max_size=6),
    bytes_contents=st.lists(st.binary(max_size=4), max_size=6),
)
grpc_shapes = st.lists(st.integers(-3, 6) | st.integers(-(2**63), 2**63 - 1), max_size=MAX_DIMS + 8)
params = st.dictionaries(
    st.sampled_from(["routing_key", "priority", "timeout", "p"]),
    st.one_of(
        st.builds(pb.InferParameter, bool_param=st.booleans()),
        st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
        st.builds(pb.InferParameter, string_param=st.text(max_size=4)),
        st.builds(pb.InferParameter),
    ),
    max_size=2,
)


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", id=draw(st.text(max_size=4)))
    n = draw(st.integers(0, 3))
    for _ in range(n):
        t = req.inputs.add(
            name=draw(st.sampled_from(NAMES)),
            datatype=draw(st.sampled_from(DATATYPES)),
            shape=draw(grpc_shapes),
        )
        if draw(st.booleans()):
            t.contents.CopyFrom(draw(contents))
        for k, v in draw(params).items():
            t.parameters[k].CopyFrom(v)
    raw = draw(st.lists(st.binary(max_size=48), max_size=4) | st.just([]))
    req.raw_input_contents.extend(raw)
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=5)):
        req.outputs.add(name=name)
    for k, v in draw(params).items():
        req.parameters[k].CopyFrom(v)
    return req


@FUZZ
@given(grpc_requests())
def test_grpc_structured_requests(msg: pb.ModelInferRequest) -> None:
    decodes_or_refuses(lambda: decode_request(msg))
    # and the same message after a trip through the wire format and the server's parser
    parsed = _deserializer(pb.ModelInferRequest)(msg.SerializeToString())
    assert not isinstance(parsed, _BadMessage)
    decodes_or_refuses(lambda: decode_request(parsed))


@FUZZ
@given(st.binary(max_size=512))
def test_grpc_arbitrary_bytes(data: bytes) -> None:
    parsed = _deserializer(pb.ModelInferRequest)(data)
    if isinstance(parsed, _BadMessage):
        assert parsed.error.startswith("malformed ModelInferRequest")
        return
    decodes_or_refuses(lambda: decode_request(parsed))


# ---- the hostile inputs of issue 16, as fixed examples ---------------------------------------


@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "BOOL", "INT64"])
def test_json_data_nested_a_thousand_deep_is_refused(datatype: str) -> None:
    leaf = '"a"' if datatype == "BYTES" else "1"
    data = "[" * 1000 + leaf + "]" * 1000  # (orjson writes at most 255 levels; it reads 1024)
    body = f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": [1], "data": {data}}}]}}'.encode()
    with pytest.raises(InvalidInput, match="input 'x'"):
        decode_infer_request("m", "", body, None)


def test_json_data_nested_as_deep_as_the_shape_is_fine() -> None:
    shape = [1] * 20
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape, "data": nested(20, "a")}]}
    )
    req = decode_infer_request("m", "", body, None)
    assert req.inputs[0].data.shape == tuple(shape)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape, "data": nested(21, "a")}]}
    )
    with pytest.raises(InvalidInput, match="nested deeper than the shape's 20 dimensions"):
        decode_infer_request("m", "", body, None)


def test_ten_thousand_dims_are_refused_on_every_codec() -> None:
    shape = [1] * 10_000
    message = f"input 'x': shape has 10000 dimensions, the limit is {MAX_DIMS}"
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": shape, "data": ["a"]}]})
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request("m", "", body, None)
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request("m", "", header + b"\x00" * 4, str(len(header)))
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=shape)
    msg.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidInput, match=message):
        decode_request(msg)


def test_huge_shapes_are_refused_before_allocation() -> None:
    for shape in ([0, 2**62], [2**40, 2**40], [2**41]):
        msg = pb.ModelInferRequest(model_name="m")
        msg.inputs.add(name="x", datatype="BYTES", shape=shape)
        msg.raw_input_contents.append(b"")
        with pytest.raises(InvalidInput, match="elements"):
            decode_request(msg)
    # within the element limit, BYTES data too short for its count is refused before the array
    with pytest.raises(InvalidInput, match="cannot hold"):
        decode_raw("x", "BYTES", (2**39,), b"\x00" * 8)


def test_duplicate_outputs_are_refused_on_both_protocols() -> None:
    """Decoded by either codec, then validated (server.validation, the one place that checks):
    the same refusal, before the count of outputs is compared with the model's."""
    sig = Signature(inputs=(), outputs=(TensorSpec("y", "FP32", (1,)),), max_batch_size=0)
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        "outputs": [{"name": "y"}] * 1000,
    }
    with pytest.raises(InvalidInput, match="output 'y' is requested more than once"):
        validate_outputs("m", sig, decode_infer_request("m", "", orjson.dumps(doc), None).outputs)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    for _ in range(1000):
        msg.outputs.add(name="y")
    with pytest.raises(InvalidInput, match="output 'y' is requested more than once"):
        validate_outputs("m", sig, decode_request(msg).outputs)
