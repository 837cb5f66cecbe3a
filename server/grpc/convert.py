"""protobuf <-> core types for the inference service. Paired: each decode has its encode."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format

from turnout.model_store.datatypes import BY_V2
from turnout.protos import inference_pb2 as pb
from turnout.server.errors import InvalidInput
from turnout.server.tensor_codec import check_shape, decode_raw, element_count, encode_raw
from turnout.server.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

# which typed-contents field carries each datatype
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_params(params: Mapping[str, pb.InferParameter]) -> Parameters:
    out: Parameters = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def encode_param(value: Any, param: pb.InferParameter) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    raw = msg.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {n_raw} entries for {len(msg.inputs)} inputs; they must match"
        )
    inputs: list[Tensor] = []
    for i, t in enumerate(msg.inputs):
        name, datatype = t.name, t.datatype
        if datatype not in BY_V2:
            raise InvalidInput(
                f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(BY_V2)}"
            )
        shape = check_shape(name, t.shape)
        if n_raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input '{name}': give either contents or raw_input_contents, not both")
            data = decode_raw(name, datatype, shape, raw[i])
        else:
            data = _decode_contents(name, datatype, shape, t.contents)
        inputs.append(
            Tensor(name, datatype, shape, data, decode_params(t.parameters) if t.parameters else {})
        )
    outputs = _decode_outputs(msg.outputs) if msg.outputs else None
    if msg.parameters:
        params = decode_params(msg.parameters)
        key = params.get("routing_key")
        routing_key = str(key) if key is not None else None
    else:
        params, routing_key = {}, None
    return InferRequest(
        msg.model_name, msg.model_version, msg.id, inputs, outputs, params, routing_key, "grpc"
    )


def _decode_outputs(
    requested: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor],
) -> list[RequestedOutput]:
    # names are checked against the model (and for repeats) in server/validation.py
    return [RequestedOutput(o.name, decode_params(o.parameters) if o.parameters else {}) for o in requested]


def _decode_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': got {len(values)} elements in {field}, expected {count} for shape {list(shape)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = BY_V2[datatype].numpy
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input '{name}': values do not fit {datatype}: {exc}") from exc


def encode_response(resp: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    outs = msg.outputs
    raw = msg.raw_output_contents
    for t in resp.outputs:
        outs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        raw.append(encode_raw(t.data, t.datatype))
    for k, v in resp.parameters.items():
        encode_param(v, msg.parameters[k])
    return msg


def dict_to_message(d: dict[str, Any], cls: Any) -> Any:
    return json_format.ParseDict(d, cls(), ignore_unknown_fields=True)
