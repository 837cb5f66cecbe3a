"""gRPC's length-prefixed messages (a compressed-flag byte, a 4-byte length, the message) cut out
of a stream's DATA payloads, with the flow-control bookkeeping that goes with them. Pure: the
caller passes the bytes and how many messages its reader has not taken yet."""

from __future__ import annotations

from turnout.server.grpc.wire import MessageTooLarge

# (compressed flag, message bytes, stream-window bytes to return when the reader takes it)
Message = tuple[int, bytes, int]


class MessageReader:
    """A streamed request's messages. A message's bytes return to the peer's stream window when
    the reader takes the message. The bytes of a message still arriving return at once while the
    reader has taken everything (so a message larger than the window cannot stall), and are held
    with it otherwise (so a reader that falls behind stops the peer within about one window).
    A message arriving in many frames is appended in place: linear time in its size."""

    __slots__ = ("held", "max_message", "pending")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.pending = bytearray()  # the bytes of an incomplete message
        self.held = 0  # ... of which not yet returned to the peer's window

    def feed(self, data: bytes, unread: int) -> tuple[list[Message], int]:
        """The messages ``data`` completes, and how many of its bytes stay unreturned to the
        peer's window; ``unread``: messages the reader has not taken yet. Raises MessageTooLarge."""
        pending = self.pending
        old = len(pending)
        buf: bytes | bytearray = data
        if old:
            pending += data
            buf = pending
        n = len(buf)
        pos = held = 0
        messages: list[Message] = []
        while n - pos >= 5:
            size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if size > self.max_message:
                self.pending = bytearray()
                raise MessageTooLarge(f"received message larger than max ({size} vs. {self.max_message})")
            end = pos + 5 + size
            if end > n:
                break
            new = end - max(pos, old) if end > old else 0  # bytes of this message that came now
            owed = new
            if pos < old:  # the message that was arriving: what it held back is owed with it
                owed += self.held
                self.held = 0
            messages.append((buf[pos], bytes(pending[pos + 5 : end]) if old else data[pos + 5 : end], owed))
            held += new
            pos = end
        if old:
            del pending[:pos]
        elif pos < n:
            pending += data[pos:]
        if pending and (unread or messages):
            arrived = n - max(pos, old)
            self.held += arrived
            held += arrived
        return messages, held

    def caught_up(self) -> int:
        """The reader has taken every message: the bytes held for the one arriving may flow."""
        held, self.held = self.held, 0
        return held

    @property
    def incomplete(self) -> bool:
        """Part of a message has arrived (a request that ends here ends inside a message)."""
        return bool(self.pending)
