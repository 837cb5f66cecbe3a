"""Dynamic batching settings of one model version, and what the batcher reports to."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BatchObserver", "BatchingConfig", "is_int", "is_number"]


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    """Dynamic batching settings of one model version.

    ``priority_levels``: requests carry a priority in ``1..priority_levels`` (1 is highest);
    ``None`` or ``0`` means ``default_priority``. ``instance_count`` is how many batches may
    execute at the same time. ``preferred_batch_sizes`` is normalised to ascending order.
    """

    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    default_timeout_s: float | None = None
    allow_timeout_override: bool = True
    priority_levels: int = 1
    default_priority: int = 1
    instance_count: int = 1

    def __post_init__(self) -> None:
        if not is_int(self.max_batch_size) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        if (
            not is_number(self.max_queue_delay_s)
            or not math.isfinite(self.max_queue_delay_s)
            or self.max_queue_delay_s < 0
        ):
            raise ValueError(
                f"max_queue_delay_s must be a finite number >= 0, got {self.max_queue_delay_s!r}"
            )
        try:
            preferred = tuple(self.preferred_batch_sizes)
        except TypeError:
            raise ValueError(
                f"preferred_batch_sizes must be a sequence of integers, got {self.preferred_batch_sizes!r}"
            ) from None
        for size in preferred:
            if not is_int(size) or not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes must be integers in 1..max_batch_size ({self.max_batch_size}),"
                    f" got {size!r}"
                )
        if len(set(preferred)) != len(preferred):
            raise ValueError(f"preferred_batch_sizes has duplicates: {preferred!r}")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(preferred)))
        if not is_int(self.max_queue_size) or self.max_queue_size < 1:
            raise ValueError(
                f"max_queue_size must be an integer >= 1 (the queue is always bounded),"
                f" got {self.max_queue_size!r}"
            )
        if self.default_timeout_s is not None and (
            not is_number(self.default_timeout_s)
            or math.isnan(self.default_timeout_s)
            or self.default_timeout_s <= 0
        ):
            raise ValueError(
                f"default_timeout_s must be None or a number > 0, got {self.default_timeout_s!r}"
            )
        if not isinstance(self.allow_timeout_override, bool):
            raise ValueError(f"allow_timeout_override must be a bool, got {self.allow_timeout_override!r}")
        if not is_int(self.priority_levels) or self.priority_levels < 1:
            raise ValueError(f"priority_levels must be an integer >= 1, got {self.priority_levels!r}")
        if not is_int(self.default_priority) or not 1 <= self.default_priority <= self.priority_levels:
            raise ValueError(
                f"default_priority must be an integer in 1..priority_levels ({self.priority_levels}),"
                f" got {self.default_priority!r}"
            )
        if not is_int(self.instance_count) or self.instance_count < 1:
            raise ValueError(f"instance_count must be an integer >= 1, got {self.instance_count!r}")


class BatchObserver(Protocol):
    """Receives batching metrics. Calls happen on the event loop: keep them cheap.

    Exceptions raised by an observer are swallowed (and logged once per batcher).
    """

    def on_batch(
        self, size_rows: int, n_requests: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        """One batch was executed (successfully or not)."""

    def on_reject(self, reason: str) -> None:
        """A request was rejected: ``"queue_full"``, ``"timeout"`` or ``"cancelled"``."""

    def on_queue_depth(self, depth: int) -> None:
        """The number of queued (not yet executing) requests changed."""
