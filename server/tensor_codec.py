"""Raw tensor bytes <-> numpy, the layout both the gRPC raw contents and the HTTP binary
extension use: row-major, little-endian; BYTES elements each prefixed by a uint32 length.

Decoding is zero-copy for fixed-size types (``np.frombuffer`` over the received buffer).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from turnout.model_store.datatypes import BY_V2, WIRE_DTYPE
from turnout.server.errors import InvalidInput

_LEN = struct.Struct("<I")

# Limits every decoded shape obeys, checked before anything is allocated for the tensor.
# numpy refuses more than 64 dimensions and onnxruntime models use far fewer than 32.
MAX_DIMS = 32
# No request body can carry more elements than this (a fixed-size element takes at least one
# byte, a BYTES element at least four); the bound also keeps count x itemsize inside numpy's
# maximum array size, for shapes with a zero dimension too.
MAX_ELEMENTS = 1 << 40


def element_count(shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidInput(f"shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape as a tuple of non-negative ints (protobuf and JSON give ints already), with at
    most :data:`MAX_DIMS` dimensions and :data:`MAX_ELEMENTS` elements (a zero dimension
    counting as one, so that numpy can still build the empty array)."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, the limit is {MAX_DIMS}")
    out = tuple(shape)
    if out:
        if min(out) < 0:
            raise InvalidInput(f"input '{name}': shape {list(out)} has a negative dimension")
        count = math.prod(out)
        if count > MAX_ELEMENTS or (count == 0 and math.prod(d or 1 for d in out) > MAX_ELEMENTS):
            raise InvalidInput(
                f"input '{name}': shape {list(out)} has more than {MAX_ELEMENTS} elements, the limit"
            )
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
    pos, end = 0, len(mv)
    if count * _LEN.size > end:  # refused before the object array is allocated
        raise InvalidInput(
            f"input '{name}': {end} bytes of BYTES data cannot hold {count} elements "
            f"(each takes at least {_LEN.size} bytes) for shape {list(shape)}"
        )
    out = np.empty(count, dtype=object)
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
