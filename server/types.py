"""The vocabulary every module speaks: tensors, requests and responses, protocol-neutral.

Transports decode their wire format into these objects, call the core, and encode the
result back. Tensor data is always a numpy array; BYTES tensors are object arrays of
``bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# V2 parameters are scalars: bool, int, float or str.
ParamValue = bool | int | float | str
Parameters = dict[str, ParamValue]


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str  # V2 datatype name: "FP32", "BYTES", ...
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""  # "" lets the traffic policy choose
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: every output
    parameters: Parameters = field(default_factory=dict)
    routing_key: str | None = None
    protocol: str = "grpc"


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: Parameters = field(default_factory=dict)


def params_from_mapping(raw: Mapping[str, Any] | None) -> Parameters:
    """Keep only scalar parameters (what V2 allows)."""
    if not raw:
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, bool | int | float | str)}
