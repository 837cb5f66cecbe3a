"""Batch formation, pure: which queued requests form the next batch, whether to wait for more,
which have expired. No asyncio, no clock: the batcher passes its queue and ``now``.

The rules (docs/batching.md):

* The head request is the oldest request of the highest priority (level 0 is highest).
  Compatible requests (same shape key) are then added in priority order and FIFO within a
  priority, skipping any that would push the batch past ``max_rows``; a request is never split.
  If preferred sizes are configured, the batch is cut at the largest preferred size reachable by
  that greedy sequence.
* A request past its deadline, or whose future is already done (its caller was cancelled), is
  *dead*: it is reported, never batched.
* **No added latency when idle.** The batch is taken at once when it is *ready* (it reached
  ``max_rows`` or a preferred size), when nothing executes, when the batcher is closing or when
  there is no queue delay. Otherwise a free slot waits for company until the oldest queued
  request has waited ``delay`` seconds -- unless another slot is already waiting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

__all__ = ["FOREVER", "Queued", "plan"]

FOREVER: Final = math.inf  # "wait until woken": nothing to take now, and no timer to set


class _Done(Protocol):
    def done(self) -> bool: ...


class Queued(Protocol):
    """What planning reads of a queued request."""

    @property
    def rows(self) -> int: ...
    @property
    def key(self) -> object: ...
    @property
    def enqueued(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def future(self) -> _Done: ...


R = TypeVar("R", bound=Queued)


def plan(
    levels: Sequence[Sequence[R]],
    now: float,
    max_rows: int,
    preferred: frozenset[int],
    delay: float,
    running: int,
    closed: bool,
    waiting: bool,
) -> tuple[list[R], list[R] | None, float]:
    """The next step of a free execution slot: (batch, dead, wait). The queue is not changed.

    ``levels`` are the queues of each priority, highest first, FIFO within each. ``batch`` is
    the next batch by the rules above; ``dead`` the cancelled or expired requests met on the way
    (``None`` when there are none). ``running`` is how many batches execute, ``closed`` whether the batcher is closing,
    ``waiting`` whether another slot already waits for a fuller batch. ``wait == 0``: take
    ``batch`` now. Otherwise ``batch`` stays queued and the slot waits ``wait`` seconds (then
    plans again), or until woken when ``wait`` is :data:`FOREVER`. ``dead`` requests leave the
    queue whatever the answer.
    """
    batch: list[R] = []
    dead: list[R] | None = None
    key: object = None
    total = 0
    for queue in levels:
        if not queue:
            continue
        for req in queue:
            if req.deadline <= now or req.future.done():
                if dead is None:
                    dead = []
                dead.append(req)
                continue
            if key is None:
                key = req.key
            elif req.key is not key and req.key != key:
                continue
            if total + req.rows <= max_rows:
                batch.append(req)
                total += req.rows
                if total == max_rows:
                    break
        if total == max_rows:
            break
    ready = total == max_rows
    if preferred and batch:
        if total in preferred:
            ready = True
        else:
            acc = cut = 0
            for i, req in enumerate(batch):
                acc += req.rows
                if acc in preferred:
                    cut = i + 1
            if cut:
                del batch[cut:]
                ready = True
    if batch and (ready or not running or closed or not delay):
        return batch, dead, 0.0
    if not batch or waiting:
        return batch, dead, FOREVER
    # the oldest request still queued once the dead are gone (FIFO: the first live one of a level)
    oldest = FOREVER
    for queue in levels:
        for req in queue:
            if dead is None or req not in dead:
                if req.enqueued < oldest:
                    oldest = req.enqueued
                break
    remaining = oldest + delay - now
    if remaining <= 0:
        return batch, dead, 0.0
    return batch, dead, remaining
