"""Raw tensor bytes <-> numpy, the layout both the gRPC raw contents and the HTTP binary
extension use: row-major, little-endian; BYTES elements each prefixed by a uint32 length.

Decoding is zero-copy for fixed-size types (``np.frombuffer`` over the received buffer).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from model_store.datatypes import BY_V2, WIRE_DTYPE
from server.errors import InvalidInput

_LEN = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidInput(f"shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape as a tuple of non-negative ints (protobuf and JSON give ints already)."""
    out = tuple(shape)
    if out and min(out) < 0:
        raise InvalidInput(f"input '{name}': shape {list(out)} has a negative dimension")
    return out


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], buf: bytes | memoryview) -> np.ndarray:
    """Interpret ``buf`` as a tensor of ``datatype`` and ``shape``; checks the byte count."""
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(name, shape, count, buf)
    dtype = WIRE_DTYPE.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(BY_V2)}"
        )
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInput(
            f"input '{name}': got {len(buf)} bytes of raw data, expected {expected} "
            f"({count} x {datatype} for shape {list(shape)})"
        )
    arr = np.frombuffer(buf, dtype=dtype)
    if datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidInput(f"input '{name}': BOOL elements must be 0 or 1")
    return arr.reshape(shape)


def decode_bytes_elements(
    name: str, shape: tuple[int, ...], count: int, buf: bytes | memoryview
) -> np.ndarray:
    mv = memoryview(buf)
    out = np.empty(count, dtype=object)
    pos, end = 0, len(mv)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (n,) = _LEN.unpack_from(mv, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"input '{name}': BYTES element {i} claims {n} bytes, only {end - pos} left")
        out[i] = bytes(mv[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidInput(f"input '{name}': {end - pos} bytes left over after {count} BYTES elements")
    return out.reshape(shape)


def encode_raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_elements(arr.reshape(-1))
    dtype = WIRE_DTYPE[datatype]
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return np.ascontiguousarray(arr).tobytes()


def encode_bytes_elements(items: Iterable[object]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        b = as_bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    return str(item).encode("utf-8")
