"""HTTP/2 and gRPC wire pieces for the asyncio gRPC transport: pure functions, no I/O.

Frames are built and parsed as RFC 9113 lays them out; header blocks we send use HPACK
literals without indexing (RFC 7541 §6.2.2), so the peer's dynamic table is never touched and
a response's header bytes can be built once. Decoding a peer's header block needs the full
HPACK state machine and is left to the ``hpack`` library (see ``connection.py``).
"""

from __future__ import annotations

import base64
import zlib
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1


class Frame(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


# The frame types again as module names, for the paths that run for every frame: reading a
# member off an Enum class goes through its metaclass, several times the cost of a global.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = map(
    int, Frame
)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


class H2Error(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xB


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ConnectionError_(Exception):
    """A connection-level protocol error: answer GOAWAY with ``code`` and close."""

    def __init__(self, code: H2Error, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return length.to_bytes(3, "big") + bytes((kind, flags)) + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return n.to_bytes(3, "big") + bytes((kind, flags)) + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + payload


def settings(pairs: dict[Setting, int]) -> bytes:
    body = b"".join(int(k).to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs.items())
    return frame(SETTINGS, 0, 0, body)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise ConnectionError_(H2Error.FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
    return [
        (int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 6], "big"))
        for i in range(0, len(payload), 6)
    ]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: H2Error) -> bytes:
    return frame(RST_STREAM, 0, stream_id, int(code).to_bytes(4, "big"))


def goaway(last_stream_id: int, code: H2Error, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + int(code).to_bytes(4, "big") + debug)


def strip_padding(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(H2Error.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


# ---------------------------------------------------------------- HPACK, sending side only


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; ``first`` carries the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def _literal_indexed_name(index: int, value: bytes) -> bytes:
    return hpack_int(index, 4) + hpack_int(len(value), 7) + value


STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
CONTENT_TYPE_GRPC = _literal_indexed_name(31, b"application/grpc")  # static 31 = content-type
ACCEPT_ENCODING = literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC + ACCEPT_ENCODING
OK_TRAILERS = literal(b"grpc-status", b"0")


def http_status(status: int) -> bytes:
    return _literal_indexed_name(8, str(status).encode())  # static 8 names ":status"


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: UTF-8, then %XX for bytes outside printable ASCII and for '%'."""
    raw = message.encode("utf-8", "replace")
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def metadata_fields(metadata: tuple[tuple[str, str | bytes], ...]) -> bytes:
    out = []
    for key, value in metadata:
        k = key.lower()
        if k.endswith("-bin"):
            v = base64.b64encode(value if isinstance(value, bytes) else value.encode()).rstrip(b"=")
        else:
            v = value.encode() if isinstance(value, str) else value
        out.append(literal(k.encode(), v))
    return b"".join(out)


MAX_MESSAGE_BYTES = 2048  # escaped grpc-message; keeps trailers well within clients' 8 KiB


def trailers(code: int, message: str = "", metadata: tuple[tuple[str, str | bytes], ...] = ()) -> bytes:
    block = OK_TRAILERS if code == 0 else literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", _truncate_escaped(percent_encode(message)))
    return block + metadata_fields(metadata) if metadata else block


def _truncate_escaped(escaped: bytes) -> bytes:
    if len(escaped) <= MAX_MESSAGE_BYTES:
        return escaped
    cut = escaped[:MAX_MESSAGE_BYTES]
    pct = cut.rfind(b"%", len(cut) - 2)
    return cut[:pct] if pct >= 0 else cut  # never split a %XX escape


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS plus CONTINUATION frames when it exceeds the peer's frame size."""
    first_flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, first_flags | END_HEADERS, stream_id, block)
    parts = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(HEADERS, first_flags, stream_id, parts[0])]
    for i, part in enumerate(parts[1:], start=1):
        out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, stream_id, part))
    return b"".join(out)


# ---------------------------------------------------------------- gRPC request-side helpers

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float | None:
    """``grpc-timeout`` (1 to 8 digits and a unit) in seconds; None if malformed."""
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isascii() and digits.isdigit()) or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def decode_metadata_value(key: str, value: str) -> str | bytes:
    if key.endswith("-bin"):
        return base64.b64decode(value + "=" * (-len(value) % 4))
    return value


def message_prefix(length: int) -> bytes:
    """The 5 bytes in front of an uncompressed gRPC message."""
    return b"\x00" + length.to_bytes(4, "big")


def length_prefixed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class MessageTooLarge(Exception):
    pass


class CorruptMessage(Exception):
    """A compressed message that does not inflate: the client's fault (INVALID_ARGUMENT)."""


def decompress(encoding: str, data: bytes | memoryview, limit: int) -> bytes:
    """Inflate a compressed gRPC message, refusing to grow it past ``limit`` bytes. Data that
    is not a complete stream of ``encoding`` raises :class:`CorruptMessage`."""
    if encoding == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        d = zlib.decompressobj()
    else:
        raise ValueError(f"unsupported grpc-encoding {encoding!r} (identity, deflate and gzip are)")
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CorruptMessage(f"the message is not valid {encoding} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise MessageTooLarge(f"decompressed message larger than {limit} bytes")
    if not d.eof:
        raise CorruptMessage(f"the message is not valid {encoding} data: the stream is truncated")
    return out
