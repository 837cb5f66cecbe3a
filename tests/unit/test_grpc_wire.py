"""The asyncio gRPC transport's wire helpers, checked against RFC examples and against the
independent ``hpack`` decoder."""

from __future__ import annotations

import gzip
import zlib

import hpack
import pytest

from turnout.server.grpc import wire


@pytest.mark.parametrize(
    ("value", "bits", "encoded"),
    [
        (10, 5, b"\x0a"),
        (1337, 5, b"\x1f\x9a\x0a"),
        (42, 8, b"\x2a"),
        (31, 5, b"\x1f\x00"),
        (127, 7, b"\x7f\x00"),
    ],
)
def test_hpack_integers_match_rfc7541(value: int, bits: int, encoded: bytes) -> None:
    assert wire.hpack_int(value, bits) == encoded  # RFC 7541 C.1 examples and prefix boundaries


def test_response_blocks_decode_and_never_index() -> None:
    d = hpack.Decoder()
    assert d.decode(wire.RESPONSE_HEADERS) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
    ]
    block = wire.trailers(
        3, "bad input: 100% wrong\né", (("x-model-version", "2"), ("x-blob-bin", b"\x00\x01"))
    )
    assert d.decode(block) == [
        ("grpc-status", "3"),
        ("grpc-message", "bad input: 100%25 wrong%0A%C3%A9"),
        ("x-model-version", "2"),
        ("x-blob-bin", "AAE"),
    ]
    assert d.decode(wire.OK_TRAILERS) == [("grpc-status", "0")]
    assert d.decode(wire.http_status(415)) == [(":status", "415")]
    assert len(d.header_table.dynamic_entries) == 0  # literals without indexing leave no state


def test_long_names_and_values_use_multibyte_lengths() -> None:
    name, value = b"x-" + b"n" * 200, b"v" * 5000
    assert hpack.Decoder(max_header_list_size=1 << 20).decode(wire.literal(name, value)) == [
        (name.decode(), value.decode())
    ]


def test_grpc_message_is_truncated_to_fit_a_trailer_block() -> None:
    block = wire.trailers(13, "x" * 100_000)
    assert len(block) < wire.MAX_MESSAGE_BYTES + 64
    assert len(wire.trailers(13, "é" * 5000)) < wire.MAX_MESSAGE_BYTES + 64


def test_header_frames_split_into_continuations() -> None:
    block = bytes(range(256)) * 200  # 51,200 bytes
    raw = wire.header_frames(5, block, True, 16_384)
    frames, pos = [], 0
    while pos < len(raw):
        n = int.from_bytes(raw[pos : pos + 3], "big")
        frames.append(
            (
                raw[pos + 3],
                raw[pos + 4],
                int.from_bytes(raw[pos + 5 : pos + 9], "big"),
                raw[pos + 9 : pos + 9 + n],
            )
        )
        pos += 9 + n
    kinds = [(k, f) for k, f, _, _ in frames]
    assert kinds == [
        (wire.Frame.HEADERS, wire.END_STREAM),
        (wire.Frame.CONTINUATION, 0),
        (wire.Frame.CONTINUATION, 0),
        (wire.Frame.CONTINUATION, wire.END_HEADERS),
    ]
    assert b"".join(p for *_, p in frames) == block and {sid for _, _, sid, _ in frames} == {5}
    assert wire.header_frames(5, b"ab", False, 16_384) == wire.frame(
        wire.Frame.HEADERS, wire.END_HEADERS, 5, b"ab"
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("100m", 0.1), ("1S", 1.0), ("2M", 120.0), ("1H", 3600.0), ("5000u", 0.005), ("99999999n", 0.099999999)],
)
def test_timeouts(value: str, seconds: float) -> None:
    assert wire.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "S", "123456789S", "10x", "-1S", "1.5S"])
def test_malformed_timeouts(value: str) -> None:
    assert wire.parse_timeout(value) is None


def test_percent_encoding_keeps_printable_ascii() -> None:
    assert wire.percent_encode("plain text ~!") == b"plain text ~!"
    assert wire.percent_encode("50%\t") == b"50%25%09"


def test_binary_metadata_round_trip() -> None:
    value = bytes(range(7))
    (name, encoded) = hpack.Decoder().decode(wire.metadata_fields((("k-bin", value),)))[0]
    assert name == "k-bin" and wire.decode_metadata_value(name, encoded) == value
    assert wire.decode_metadata_value("plain", "x") == "x"


def test_decompression_limits() -> None:
    data = b"a" * 10_000
    assert wire.decompress("gzip", gzip.compress(data), 10_000) == data
    assert wire.decompress("deflate", zlib.compress(data), 10_000) == data
    with pytest.raises(wire.MessageTooLarge):
        wire.decompress("gzip", gzip.compress(b"a" * 10_001), 10_000)  # a small bomb stays small
    with pytest.raises(ValueError, match="unsupported"):
        wire.decompress("br", b"", 10)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_corrupt_compressed_messages_are_the_clients_fault(encoding: str) -> None:
    whole = gzip.compress(b"a" * 1000) if encoding == "gzip" else zlib.compress(b"a" * 1000)
    for data in (b"not compressed at all", whole[: len(whole) // 2], b""):
        with pytest.raises(wire.CorruptMessage, match=f"not valid {encoding}"):
            wire.decompress(encoding, data, 10_000)


def test_settings_round_trip_and_bad_lengths() -> None:
    raw = wire.settings({wire.Setting.INITIAL_WINDOW_SIZE: 1 << 20, wire.Setting.MAX_CONCURRENT_STREAMS: 7})
    assert wire.parse_settings(raw[9:]) == [(4, 1 << 20), (3, 7)]
    with pytest.raises(wire.ConnectionError_):
        wire.parse_settings(b"\x00" * 7)


def test_padding() -> None:
    assert wire.strip_padding(wire.PADDED, b"\x02abc\x00\x00") == b"abc"
    assert wire.strip_padding(0, b"abc") == b"abc"
    with pytest.raises(wire.ConnectionError_):
        wire.strip_padding(wire.PADDED, b"\x05ab")
