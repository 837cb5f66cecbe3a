"""HPACK decoding with the repeated header blocks of a busy connection remembered.

A gRPC client sends the same request headers on every call. Once its encoder has put them in
the dynamic table, each call's header block is a handful of *indexed* fields (RFC 7541 §6.1),
one byte each: the same few bytes call after call. The ``hpack`` library decodes such a block
in pure Python, a sizeable share of the event loop's time per request under load.

An indexed field only reads the dynamic table; it never changes it. So a block made only of
one-byte indexed fields (every byte in 0x81..0xFE: index 1..126, no continuation byte) decodes
to the same headers for as long as the table stays as it is, and its result can be reused. Any
other block may change the table (a literal with incremental indexing, a size update), so it
goes to the decoder and empties the memo.

The memo holds at most ``MAX_ENTRIES`` blocks whose decoded headers are each at most
``MAX_ENTRY_BYTES`` (sized as RFC 9113 §6.5.2 counts them), so a peer cannot make one
connection keep more than a few kilobytes, whatever its dynamic table holds."""

from __future__ import annotations

import hpack

# every byte that is a whole indexed field by itself; a block with nothing left once they are
# deleted is made of such fields only
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))
MAX_ENTRIES = 32
MAX_ENTRY_BYTES = 2048


class HeaderDecoder:
    """``hpack.Decoder.decode`` for one connection, with a memo of purely indexed blocks."""

    __slots__ = ("_decoder", "_memo")

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._memo: dict[bytes, tuple[tuple[str, str], ...]] = {}

    def decode(self, block: bytes) -> tuple[tuple[str, str], ...]:
        """The (name, value) pairs of ``block``; raises what ``hpack`` raises for a bad one."""
        memo = self._memo
        headers = memo.get(block)
        if headers is not None:
            return headers
        indexed_only = bool(block) and not block.translate(None, _ONE_BYTE_INDEXED)
        if not indexed_only:
            memo.clear()  # the table may change: what the memo holds may no longer be true
        decoded = self._decoder.decode(block)
        headers = tuple((str(name), str(value)) for name, value in decoded)
        if indexed_only and sum(len(n) + len(v) + 32 for n, v in headers) <= MAX_ENTRY_BYTES:
            if len(memo) >= MAX_ENTRIES:
                memo.clear()
            memo[block] = headers
        return headers
