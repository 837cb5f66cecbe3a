"""The memo of purely indexed header blocks decodes exactly as the ``hpack`` decoder does."""

from __future__ import annotations

from collections.abc import Iterable

import hpack
from hpack.struct import HeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.server.grpc.header_cache import MAX_ENTRIES, HeaderDecoder

GRPC_CALL = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", "127.0.0.1:8001"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("grpc-timeout", "30S"),
]


class CountingDecoder(HeaderDecoder):
    """Counts the blocks that reach the ``hpack`` decoder."""

    def __init__(self) -> None:
        super().__init__(max_header_list_size=65536)
        self.calls = 0
        inner = self._decoder.decode

        def counted(block: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
            self.calls += 1
            return inner(block, raw)

        self._decoder.decode = counted  # type: ignore[method-assign,assignment]


def test_repeated_indexed_blocks_skip_the_decoder() -> None:
    enc, dec = hpack.Encoder(), CountingDecoder()
    first = enc.encode(GRPC_CALL)
    assert dec.decode(first) == tuple(GRPC_CALL)
    again = enc.encode(GRPC_CALL)
    assert len(again) == len(GRPC_CALL)  # every field now one indexed byte
    for _ in range(5):
        assert dec.decode(again) == tuple(GRPC_CALL)
    assert dec.calls == 2  # the literal block, then the indexed one once


def test_a_table_change_invalidates_the_memo() -> None:
    dec = CountingDecoder()
    # literal with incremental indexing: ("x-key", "1") becomes dynamic entry 62
    dec.decode(b"\x40\x05x-key\x011")
    assert dec.decode(b"\xbe") == (("x-key", "1"),)  # 0xbe: indexed field 62
    # another insertion shifts ("x-key", "1") to 63 and puts ("x-key", "2") at 62
    dec.decode(b"\x40\x05x-key\x012")
    assert dec.decode(b"\xbe") == (("x-key", "2"),)
    assert dec.decode(b"\xbf") == (("x-key", "1"),)
    assert dec.calls == 5


def test_memo_is_bounded() -> None:
    dec = HeaderDecoder(max_header_list_size=65536)
    for index in range(1, 62):  # every static-table entry as its own one-byte block
        dec.decode(bytes([0x80 | index]))
    assert len(dec._memo) <= MAX_ENTRIES


NAMES = st.sampled_from(["x-a", "x-b", "grpc-timeout", "x-routing-key", ":path"])
VALUES = st.sampled_from(["1", "2", "30S", "100m", "/inference.GRPCInferenceService/ModelInfer"])
HEADER_LISTS = st.lists(st.lists(st.tuples(NAMES, VALUES), min_size=1, max_size=6), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(HEADER_LISTS, st.sampled_from([64, 128, 4096]))
def test_same_headers_as_hpack_for_any_sequence(calls: list[list[tuple[str, str]]], table: int) -> None:
    """A client whose small dynamic table keeps evicting: the memo never answers stale headers."""
    enc = hpack.Encoder()
    enc.header_table_size = table
    reference, memo = hpack.Decoder(), HeaderDecoder(max_header_list_size=65536)
    for headers in calls:
        for _ in range(2):  # each call sent twice: the second is often purely indexed
            block = enc.encode(headers)
            expected = tuple((str(n), str(v)) for n, v in reference.decode(block))
            assert memo.decode(block) == expected


def test_blocks_that_decode_to_large_headers_are_not_remembered() -> None:
    decoder = CountingDecoder()
    table_entry = b"\x40" + bytes(hpack.hpack.encode_integer(5, 7)) + b"x-big"
    table_entry += bytes(hpack.hpack.encode_integer(3000, 7)) + b"v" * 3000
    decoder.decode(table_entry)  # a 3 KB header in the dynamic table, index 62 (0xBE)
    for n in range(1, 20):
        block = b"\xbe" * n  # one byte each, up to 57 KB decoded (the decoder's limit here is 64 KiB)
        assert decoder.decode(block) == (("x-big", "v" * 3000),) * n
        assert decoder.decode(block) == (("x-big", "v" * 3000),) * n
    assert decoder.calls == 1 + 2 * 19  # none of them was remembered: each decoded again
    assert not decoder._memo
