"""What a peer of the asyncio gRPC transport may make us hold or do: the limits, and the two
budgets that decide when a peer is abusing the connection. Pure logic: the caller passes
the time, so the budgets are tested with a fake clock."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TransportLimits:
    """Per-connection and per-server limits of the asyncio gRPC transport (``None`` = off)."""

    max_streams: int = 100  # concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    max_connections: int = 10_000  # accepted connections at once; beyond, new ones are closed
    handshake_timeout_s: float = 10.0  # from accept to the client's connection preface (and TLS)
    request_timeout_s: float = 60.0  # from a stream's HEADERS to the end of its request message
    idle_timeout_s: float | None = 300.0  # no stream open and no frame for this long: GOAWAY
    max_age_s: float | None = None  # a connection older than this is asked to go away...
    max_age_grace_s: float = 30.0  # ...and closed this long after, whatever is still running
    write_timeout_s: float = 30.0  # answers waiting on a peer that reads nothing for this long: close
    max_queued_bytes: int = 64 << 20  # answer bytes waiting for the peer; beyond, new streams are refused


class FloodBudget:
    """Frames that cost us work but carry no request (PING, SETTINGS, PRIORITY, WINDOW_UPDATE,
    RST_STREAM, empty DATA or CONTINUATION, unknown types) spend a per-connection budget; each
    request a peer opens, and each DATA frame that carries bytes, earns a little back, and time
    refills it slowly. A peer that empties it is flooding."""

    __slots__ = ("_last", "capacity", "earn_per_stream", "level", "refill_per_s")

    def __init__(
        self, now: float, capacity: float = 1000.0, refill_per_s: float = 100.0, earn_per_stream: float = 10.0
    ) -> None:
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.earn_per_stream = earn_per_stream
        self.level = capacity
        self._last = now

    def spend(self, now: float, cost: float = 1.0) -> bool:
        """Charge one control frame; False when the budget is exhausted."""
        elapsed = now - self._last
        if elapsed > 0:
            self._last = now
            self.level = min(self.capacity, self.level + elapsed * self.refill_per_s)
        self.level -= cost
        return self.level >= 0

    def earn(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class ResetBudget:
    """Rapid-reset defence (CVE-2023-44487), kept per peer address rather than per connection,
    so that a client cannot reset its allowance by reconnecting. Each address may reset at most
    ``limit`` unanswered streams per ``window_s``; the table remembers ``max_peers`` addresses,
    the least recently seen forgotten first."""

    def __init__(self, limit: int = 5000, window_s: float = 10.0, max_peers: int = 4096) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_peers = max_peers
        self._peers: OrderedDict[str, list[float]] = OrderedDict()  # host -> [window start, count]

    def reset(self, host: str, now: float) -> bool:
        """Count one reset by ``host``; False once it is over its allowance."""
        entry = self._peers.get(host)
        if entry is None or now - entry[0] > self.window_s:
            entry = [now, 0.0]
            self._peers[host] = entry
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(host)
        entry[1] += 1
        return entry[1] <= self.limit

    def __len__(self) -> int:
        return len(self._peers)
