"""The datatype table: V2 names, numpy dtypes, Triton config enums and ONNX type strings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    v2: str  # Open Inference Protocol name
    numpy: np.dtype  # dtype of the numpy arrays that carry it (object for BYTES)
    config: str  # Triton config.pbtxt name (TYPE_FP32 ...)
    onnx: str  # onnxruntime type string
    itemsize: int  # bytes per element on the wire (0: variable, BYTES)


_ROWS = [
    ("BOOL", np.dtype(np.bool_), "TYPE_BOOL", "tensor(bool)", 1),
    ("UINT8", np.dtype(np.uint8), "TYPE_UINT8", "tensor(uint8)", 1),
    ("UINT16", np.dtype(np.uint16), "TYPE_UINT16", "tensor(uint16)", 2),
    ("UINT32", np.dtype(np.uint32), "TYPE_UINT32", "tensor(uint32)", 4),
    ("UINT64", np.dtype(np.uint64), "TYPE_UINT64", "tensor(uint64)", 8),
    ("INT8", np.dtype(np.int8), "TYPE_INT8", "tensor(int8)", 1),
    ("INT16", np.dtype(np.int16), "TYPE_INT16", "tensor(int16)", 2),
    ("INT32", np.dtype(np.int32), "TYPE_INT32", "tensor(int32)", 4),
    ("INT64", np.dtype(np.int64), "TYPE_INT64", "tensor(int64)", 8),
    ("FP16", np.dtype(np.float16), "TYPE_FP16", "tensor(float16)", 2),
    ("FP32", np.dtype(np.float32), "TYPE_FP32", "tensor(float)", 4),
    ("FP64", np.dtype(np.float64), "TYPE_FP64", "tensor(double)", 8),
    ("BYTES", np.dtype(object), "TYPE_STRING", "tensor(string)", 0),
]

BY_V2: dict[str, DataType] = {r[0]: DataType(*r) for r in _ROWS}
BY_CONFIG: dict[str, DataType] = {d.config: d for d in BY_V2.values()}
BY_ONNX: dict[str, DataType] = {d.onnx: d for d in BY_V2.values()}
BY_NUMPY: dict[np.dtype, DataType] = {d.numpy: d for d in BY_V2.values()}
# little-endian wire dtypes (the protocol's raw layout)
WIRE_DTYPE: dict[str, np.dtype] = {
    name: (dt.numpy.newbyteorder("<") if dt.itemsize > 1 else dt.numpy)
    for name, dt in BY_V2.items()
    if name != "BYTES"
}


def from_numpy(dtype: np.dtype) -> DataType | None:
    if dtype.kind in ("U", "S", "O"):
        return BY_V2["BYTES"]
    return BY_NUMPY.get(dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype)
