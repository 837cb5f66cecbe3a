"""gRPC messages cut out of a stream's DATA payloads, and the window bytes they hold back."""

from __future__ import annotations

import pytest

from turnout.server.grpc.messages import MessageReader
from turnout.server.grpc.wire import MessageTooLarge, length_prefixed


def test_messages_split_anywhere_come_out_whole() -> None:
    payloads = [b"a" * 3, b"", b"b" * 70_000, b"c"]
    stream = b"".join(length_prefixed(p) for p in payloads)
    for step in (1, 7, 4096, len(stream)):
        reader, got = MessageReader(1 << 20), []
        for i in range(0, len(stream), step):
            messages, _ = reader.feed(stream[i : i + step], 0)
            got += [m[1] for m in messages]
        assert got == payloads and not reader.incomplete


def test_every_byte_is_returned_to_the_window_exactly_once() -> None:
    stream = b"".join(length_prefixed(bytes([i]) * (1000 * i)) for i in range(1, 6))
    reader, returned = MessageReader(1 << 20), 0
    queue: list[int] = []  # the owed bytes of messages the reader has not taken
    for n, i in enumerate(range(0, len(stream), 777)):
        chunk = stream[i : i + 777]
        messages, held = reader.feed(chunk, len(queue))
        returned += len(chunk) - held  # returned at once
        queue += [m[2] for m in messages]
        if n % 3 == 0:  # now and then the reader takes everything queued
            returned += sum(queue)
            queue.clear()
            returned += reader.caught_up()
    returned += sum(queue) + reader.caught_up()
    assert returned == len(stream)


def test_a_reader_that_falls_behind_holds_the_message_arriving() -> None:
    reader = MessageReader(1 << 20)
    whole = length_prefixed(b"x" * 10)
    big = length_prefixed(b"y" * 100_000)
    messages, held = reader.feed(whole + big[:50_000], unread=0)
    assert len(messages) == 1 and held == len(whole) + 50_000  # one unread message: all held
    reader2 = MessageReader(1 << 20)
    _, held2 = reader2.feed(big[:50_000], unread=0)
    assert held2 == 0  # nothing unread: the arriving message flows


def test_an_oversized_message_is_refused_before_it_arrives() -> None:
    reader = MessageReader(1000)
    with pytest.raises(MessageTooLarge):
        reader.feed(length_prefixed(b"z" * 1001)[:5], 0)
    assert not reader.incomplete
