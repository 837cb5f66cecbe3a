"""V2 HTTP/JSON bodies <-> core types, including the binary tensor extension.

A body with an ``Inference-Header-Content-Length: N`` header is N bytes of JSON followed by
the binary tensors, in input order, each taking ``parameters.binary_data_size`` bytes.
Responses put an output in the binary part when the request asks for it
(``binary_data_output`` for all, or ``binary_data`` on one output).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from turnout.model_store.datatypes import BY_V2
from turnout.server.errors import InvalidInput
from turnout.server.tensor_codec import check_shape, decode_raw, element_count, encode_raw
from turnout.server.types import InferRequest, InferResponse, RequestedOutput, Tensor, params_from_mapping

HEADER_LENGTH = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def loads(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON body: {exc}") from exc


def decode_infer_request(model: str, version: str, body: bytes, header_length: str | None) -> InferRequest:
    binary = memoryview(b"")
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length must be an integer, got '{header_length}'"
            ) from None
        if n < 0 or n > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
        mv = memoryview(body)
        obj = loads(mv[:n])
        binary = mv[n:]
    else:
        obj = loads(body)
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    offset = 0
    inputs: list[Tensor] = []
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset)
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"the binary part has {len(binary)} bytes but the inputs use {offset}")
    params = params_from_mapping(_dict(obj.get("parameters"), "parameters"))
    outputs = _decode_outputs(obj.get("outputs"))
    rid = obj.get("id", "")
    key = params.get("routing_key")
    return InferRequest(
        model_name=model,
        model_version=version,
        id=rid if isinstance(rid, str) else str(rid),
        inputs=inputs,
        outputs=outputs,
        parameters=params,
        routing_key=str(key) if key is not None else None,
        protocol="http",
    )


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{what}' must be a JSON object")
    return value


def _decode_input(item: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput("each entry of 'inputs' must be a JSON object")
    name = item.get("name")
    datatype = item.get("datatype")
    shape_raw = item.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input is missing its 'name'")
    if not isinstance(datatype, str) or datatype not in BY_V2:
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {', '.join(BY_V2)}"
        )
    if not isinstance(shape_raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape_raw
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of integers")
    shape = check_shape(name, shape_raw)
    params = _dict(item.get("parameters"), f"inputs[{name}].parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}': binary_data_size {size} at offset {offset} runs past the end of the body "
                f"({len(binary)} binary bytes)"
            )
        data = decode_raw(name, datatype, shape, binary[offset : offset + size])
        return Tensor(name, datatype, shape, data, params_from_mapping(params)), size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return Tensor(
        name,
        datatype,
        shape,
        _decode_json_data(name, datatype, shape, item["data"]),
        params_from_mapping(params),
    ), 0


def _flatten(name: str, data: Any, rank: int) -> list[Any]:
    """The elements of ``data`` (a value, a flat list, or lists nested at most ``rank`` deep),
    in row-major order. Iterative: a hostile nesting depth is refused, never recursed into."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    limit = max(rank, 1)
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                if len(stack) >= limit:
                    raise _too_deep(name, rank)
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _too_deep(name: str, rank: int) -> InvalidInput:
    return InvalidInput(f"input '{name}': 'data' is nested deeper than the shape's {rank} dimensions")


def _check_depth(name: str, data: Any, rank: int) -> None:
    """Refuse ``data`` whose first element is nested deeper than ``rank`` lists (O(rank))."""
    limit = max(rank, 1)
    depth = 0
    while isinstance(data, list):
        depth += 1
        if depth > limit:
            raise _too_deep(name, rank)
        if not data:
            return
        data = data[0]


def _decode_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(name, data, len(shape))
        if len(flat) != count:
            raise InvalidInput(
                f"input '{name}': got {len(flat)} elements, expected {count} for shape {list(shape)}"
            )
        arr = np.empty(count, dtype=object)
        for i, x in enumerate(flat):
            if isinstance(x, str):
                arr[i] = x.encode("utf-8")
            else:
                raise InvalidInput(f"input '{name}': BYTES elements must be JSON strings")
        return arr.reshape(shape)
    dtype = BY_V2[datatype].numpy
    try:
        if datatype == "BOOL":
            arr = _bool_array(name, data, len(shape))
        else:
            if type(data) is list and data and type(data[0]) is list:
                _check_depth(name, data, len(shape))
            arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"input '{name}': data is not a (nested) list of {datatype} values: {exc}"
        ) from exc
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': got {arr.size} elements, expected {count} for shape {list(shape)}"
        )
    return arr.reshape(shape)


def _bool_array(name: str, data: Any, rank: int) -> np.ndarray:
    flat = _flatten(name, data, rank)
    if not all(isinstance(x, bool) or x in (0, 1) for x in flat):
        raise InvalidInput(f"input '{name}': BOOL elements must be true or false")
    return np.asarray(flat, dtype=np.bool_)


def _decode_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    out: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
        out.append(
            RequestedOutput(
                item["name"], params_from_mapping(_dict(item.get("parameters"), "outputs.parameters"))
            )
        )
    return out or None


def encode_infer_response(resp: InferResponse, req: InferRequest) -> tuple[bytes, int | None]:
    """The body, and the JSON header length when a binary part follows (else None)."""
    all_binary = bool(req.parameters.get("binary_data_output", False))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in resp.outputs:
        binary = bool(t.parameters.get("binary_data", all_binary))
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            blob = encode_raw(t.data, t.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t.datatype == "BYTES":
            entry["data"] = [
                x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in t.data.reshape(-1)
            ]
        else:
            entry["data"] = np.ascontiguousarray(t.data).reshape(-1)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_NUMPY)
