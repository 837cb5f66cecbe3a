"""Test data for the demo ``echo`` model: one tensor of every V2 datatype."""

from __future__ import annotations

import numpy as np

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def echo_arrays(rows: int = 2, cols: int = 3, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for dt in DATATYPES:
        shape = (rows, cols)
        if dt == "BOOL":
            a = rng.integers(0, 2, shape).astype(bool)
        elif dt == "BYTES":
            a = np.array(
                [f"row{i}-\u00e9\u2603-{j}".encode() for i in range(rows) for j in range(cols)], dtype=object
            ).reshape(shape)
        elif dt.startswith("FP"):
            a = (rng.standard_normal(shape) * 100).astype(NUMPY[dt])
        else:
            info = np.iinfo(NUMPY[dt])
            a = rng.integers(info.min, info.max, shape, dtype=NUMPY[dt], endpoint=True)
            a.flat[0] = info.max
            a.flat[1] = info.min
        out[f"IN_{dt}"] = a
    return out
