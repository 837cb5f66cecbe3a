"""Batch formation as a pure function: plain request records, ``now`` as a number, no event loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from turnout.server.batch_plan import FOREVER, plan


@dataclass
class Fut:
    is_done: bool = False

    def done(self) -> bool:
        return self.is_done


@dataclass(eq=False)
class Q:
    rows: int
    key: object = "k"
    enqueued: float = 0.0
    deadline: float = math.inf
    future: Fut = field(default_factory=Fut)


NONE: frozenset[int] = frozenset()


def form(
    levels: list[list[Q]], now: float, max_rows: int, preferred: frozenset[int]
) -> tuple[list[Q], list[Q] | None, bool]:
    """Batch formation alone: (batch, dead, ready). While a batch executes and a delay is set,
    a slot takes the batch at once only when it is ready (full or at a preferred size)."""
    batch, dead, wait = plan(levels, now, max_rows, preferred, 1e9, 1, False, False)
    return batch, dead, wait == 0.0


def test_empty_queue_forms_nothing_and_sleeps() -> None:
    assert form([[], []], 0.0, 4, NONE) == ([], None, False)
    assert plan([[]], 0.0, 4, NONE, 0.5, 1, False, False) == ([], None, FOREVER)


def test_greedy_fifo_within_priority_skips_what_does_not_fit() -> None:
    a, b, c, d = Q(2), Q(3), Q(1), Q(2)
    batch, dead, ready = form([[a, b, c, d]], 0.0, 4, NONE)
    assert batch == [a, c] and dead is None and not ready  # b would overflow; d too after c
    batch, _, ready = form([[a, c, Q(1)]], 0.0, 4, NONE)
    assert len(batch) == 3 and ready


def test_higher_priority_leads_and_sets_the_key() -> None:
    low = Q(1, key="x", enqueued=0.0)
    high = Q(1, key="y", enqueued=5.0)
    high2 = Q(1, key="y", enqueued=6.0)
    batch, _, _ = form([[high], [low, high2]], 10.0, 8, NONE)
    assert batch == [high, high2]  # the low-priority request has another shape key


def test_equal_keys_batch_together_even_when_not_identical() -> None:
    a, b = Q(1, key=("x", (2,))), Q(1, key=("x", (2,)))
    assert form([[a, b]], 0.0, 4, NONE)[0] == [a, b]


def test_preferred_sizes_cut_the_batch() -> None:
    reqs = [Q(1), Q(1), Q(1)]
    batch, _, ready = form([reqs], 0.0, 8, frozenset({2}))
    assert batch == reqs[:2] and ready
    batch, _, ready = form([reqs], 0.0, 8, frozenset({3}))
    assert batch == reqs and ready
    batch, _, ready = form([reqs], 0.0, 8, frozenset({4}))
    assert batch == reqs and not ready


def test_expired_and_cancelled_requests_are_dead_not_batched() -> None:
    expired = Q(1, deadline=5.0)
    cancelled = Q(1, future=Fut(True))
    live = Q(1)
    batch, dead, _ = form([[expired, cancelled, live]], 5.0, 4, NONE)
    assert batch == [live] and dead == [expired, cancelled]
    batch, dead, _ = form([[expired]], 4.9, 4, NONE)  # the fake clock has not reached the deadline
    assert batch == [expired] and dead is None


def test_no_added_latency_when_idle_closed_or_without_delay() -> None:
    q = [[Q(1, enqueued=0.0)]]
    assert plan(q, 0.0, 4, NONE, 0.5, 0, False, False)[2] == 0.0  # nothing executes
    assert plan(q, 0.0, 4, NONE, 0.5, 1, True, False)[2] == 0.0  # closing
    assert plan(q, 0.0, 4, NONE, 0.0, 1, False, False)[2] == 0.0  # no delay configured


def test_while_busy_a_slot_waits_from_the_oldest_enqueue() -> None:
    q = [[Q(1, enqueued=1.0), Q(1, enqueued=1.2)]]
    batch, dead, wait = plan(q, 1.3, 4, NONE, 0.5, 1, False, False)
    assert len(batch) == 2 and dead is None and math.isclose(wait, 0.2)
    assert plan(q, 1.5, 4, NONE, 0.5, 1, False, False)[2] == 0.0  # the delay has passed
    assert plan(q, 1.3, 4, NONE, 0.5, 1, False, True)[2] == FOREVER  # another slot already waits
    assert plan(q, 1.3, 2, NONE, 0.5, 1, False, False)[2] == 0.0  # full: ready at once
    assert plan(q, 1.3, 4, frozenset({2}), 0.5, 1, False, False)[2] == 0.0  # preferred size


def test_the_wait_ignores_dead_requests() -> None:
    dead_old = Q(1, enqueued=0.0, future=Fut(True))
    live = Q(1, enqueued=1.0)
    batch, dead, wait = plan([[dead_old, live]], 1.1, 4, NONE, 0.5, 1, False, False)
    assert batch == [live] and dead == [dead_old] and math.isclose(wait, 0.4)


def test_the_wait_counts_live_requests_of_other_keys() -> None:
    other = Q(1, key="other", enqueued=0.5)
    mine = Q(1, key="mine", enqueued=0.8)
    batch, _, wait = plan([[mine], [other]], 0.9, 4, NONE, 0.5, 1, False, False)
    assert batch == [mine] and math.isclose(wait, 0.1)
