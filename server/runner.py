"""How a loaded version executes: through the dynamic batcher, or directly.

Both run onnxruntime in the shared inference thread pool (onnxruntime releases the GIL),
so the event loop never blocks on a model."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from turnout.model_store.config import instance_count
from turnout.model_store.session import Session
from turnout.protos.model_config_pb2 import ModelConfig
from turnout.server.batching import BatchingConfig, DynamicBatcher
from turnout.server.busy_poll import BusyPoll
from turnout.server.errors import InferenceFailed, TurnoutError
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.stats import VersionStats
from turnout.server.settings import Settings


class Runner(Protocol):
    stats: VersionStats

    async def run(
        self,
        feeds: dict[str, np.ndarray],
        *,
        rows: int | None = None,
        priority: int | None,
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        """``rows``: the batch dimension server.validation found (None: not validated there)."""
        ...

    def run_inline(
        self, feeds: dict[str, np.ndarray], rows: int, requests: int, budget_ns: float
    ) -> dict[str, np.ndarray] | None:
        """Run an already-formed batch on the event loop, bypassing any queue, if its expected
        cost is below ``budget_ns``; recorded like any other execution. None when it is not."""
        ...

    async def close(self) -> None: ...


def _execute_sync(
    session: Session, feeds: dict[str, np.ndarray], cpu: bool
) -> tuple[dict[str, np.ndarray], int, int]:
    """Run the session; return its outputs, the wall time and, when ``cpu``, the calling
    thread's CPU time (ns; else -1).

    The CPU time excludes waiting for the GIL or for a core, so it measures the model, not the
    contention: onnxruntime's calling thread works (or spins) for as long as the run lasts.
    Reading it is a system call (twice), so callers sample it."""
    c0 = time.thread_time_ns() if cpu else 0
    t0 = time.perf_counter_ns()
    try:
        out = session.run(feeds)
    except TurnoutError:
        raise
    except Exception as exc:  # onnxruntime's own errors: report, never crash
        raise InferenceFailed(f"model '{session.name}' version {session.version} failed: {exc}") from exc
    ns = time.perf_counter_ns() - t0
    return out, ns, (time.thread_time_ns() - c0 if cpu else -1)


class Compute:
    """Runs one version's session: on the event loop thread when the expected run time is
    below ``inline_ns`` (a tiny model costs less to run than a hand-off to a thread), in the
    inference thread pool otherwise. The expectation is a moving average of the CPU cost per
    row: wall time would count waits for the GIL, inflate the estimate under contention and
    push a tiny model onto the pool, where the hand-offs cost more than the model."""

    __slots__ = (
        "_busy_poll",
        "_every",
        "_idle",
        "_pool",
        "_runs",
        "idle_ns",
        "inline_ns",
        "row_ns",
        "session",
    )

    SAMPLE_EVERY = 8  # one execution in this many measures its CPU time
    # A run in the pool measures more CPU than the same run on the loop (the hand-off leaves the
    # model's weights out of cache), so a tiny model measured there could stay in the pool for
    # good: one execution in PROBE_EVERY of a version expected to cost under PROBE_BELOW inline
    # budgets runs on the loop, and measures its cost there.
    PROBE_EVERY = 32
    PROBE_BELOW = 4

    def __init__(
        self,
        session: Session,
        pool: Executor,
        inline_ns: float,
        busy_poll: BusyPoll | None = None,
        *,
        idle: Callable[[], bool] | None = None,
        idle_ns: float = 0.0,
    ) -> None:
        self.session = session
        # when ``idle()`` (no other request in flight: nobody waits behind this one) a run expected
        # to cost under ``idle_ns`` also stays on the loop, saving the two thread hand-offs
        self._idle = idle
        self.idle_ns = idle_ns
        self._busy_poll = busy_poll or BusyPoll(0.0)
        self._pool = session.executor or pool  # a process-served version brings its own threads
        self._runs = 0
        self.inline_ns = inline_ns
        self.row_ns = session.row_ns or inline_ns  # unmeasured: assume it is not tiny
        self._every = self.SAMPLE_EVERY
        if session.remote:
            # run() waits on another process: never on the loop (an infinite expected cost), and
            # never sampled (the calling thread's CPU time says nothing of the run)
            self.row_ns = math.inf
            self._every = sys.maxsize

    async def __call__(self, feeds: dict[str, np.ndarray], rows: int) -> tuple[dict[str, np.ndarray], int]:
        budget = self.inline_ns
        if self._idle is not None and self.row_ns * max(rows, 1) < self.idle_ns and self._idle():
            # Alone so far, but other requests may still sit unread in the sockets (a run on the
            # loop would keep them there, and each would then find itself alone too): two turns of
            # the loop read them and start their calls, and only a request still alone stays here.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if self._idle():
                budget = self.idle_ns
        done = self.inline(feeds, rows, budget)
        if done is not None:
            return done
        if (
            self._runs % self.PROBE_EVERY == 0
            and self.row_ns * max(rows, 1) < self.PROBE_BELOW * self.inline_ns
        ):
            return self._measure_inline(feeds, rows)
        loop = asyncio.get_running_loop()
        self._busy_poll.pause()  # the thread must get the GIL back to hand over the result
        try:
            out, ns, cpu_ns = await loop.run_in_executor(
                self._pool, _execute_sync, self.session, feeds, self._sample()
            )
        finally:
            self._busy_poll.resume()
        if cpu_ns >= 0:
            self.row_ns += 0.3 * (cpu_ns / max(rows, 1) - self.row_ns)
        return out, ns

    def inline(
        self, feeds: dict[str, np.ndarray], rows: int, budget_ns: float
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """Run on the calling thread if the expected cost is below ``budget_ns``, else None."""
        rows = max(rows, 1)
        if self.row_ns * rows >= budget_ns:
            return None
        out, ns, cpu_ns = _execute_sync(self.session, feeds, self._sample())
        if cpu_ns >= 0:
            self.row_ns += 0.3 * (cpu_ns / rows - self.row_ns)
        return out, ns

    def _measure_inline(self, feeds: dict[str, np.ndarray], rows: int) -> tuple[dict[str, np.ndarray], int]:
        self._runs += 1
        out, ns, cpu_ns = _execute_sync(self.session, feeds, True)
        self.row_ns = cpu_ns / max(rows, 1)  # the cost where the choice is made, not a blend with the pool's
        return out, ns

    def _sample(self) -> bool:
        self._runs += 1
        return self._runs % self._every == 0


def _rows(session: Session, feeds: dict[str, np.ndarray]) -> int:
    if session.signature.batching and feeds:
        return int(next(iter(feeds.values())).shape[0])
    return 1


class DirectRunner:
    """One request, one onnxruntime call; at most ``instance_count`` at a time."""

    def __init__(self, session: Session, compute: Compute, instance_count: int, stats: VersionStats) -> None:
        self.session = session
        self.stats = stats
        self._compute = compute
        self._sem = asyncio.Semaphore(max(instance_count, 1))

    async def run(
        self,
        feeds: dict[str, np.ndarray],
        *,
        rows: int | None = None,
        priority: int | None,
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        rows = _rows(self.session, feeds)
        t_queue = time.perf_counter_ns()
        async with self._sem:
            queued = time.perf_counter_ns() - t_queue
            out, ns = await self._compute(feeds, rows)
        self.stats.record_batch(rows, 1, queued, ns)
        return out

    def run_inline(
        self, feeds: dict[str, np.ndarray], rows: int, requests: int, budget_ns: float
    ) -> dict[str, np.ndarray] | None:
        done = self._compute.inline(feeds, rows, budget_ns)
        if done is None:
            return None
        self.stats.record_batch(rows, requests, 0, done[1])
        return done[0]

    async def close(self) -> None:
        return None


class _BatchObserver:
    """Feeds batcher events into statistics and Prometheus metrics."""

    def __init__(self, stats: VersionStats, metrics: Metrics, model: str, version: str) -> None:
        self.stats = stats
        self._batch = metrics.histogram_tally(metrics.batch_size, model, version)
        self._queue = metrics.histogram_tally(metrics.queue_time, model, version)
        self._compute = metrics.histogram_tally(metrics.compute_time, model, version)
        self._depth = metrics.queue_depth.labels(model, version)
        self._rejected = metrics.rejected
        self._labels = (model, version)

    def on_batch(
        self, size_rows: int, n_requests: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        self.stats.record_batch(
            size_rows, n_requests, int(sum(queue_seconds) * 1e9), int(compute_seconds * 1e9)
        )
        self._batch.observe(size_rows)
        self._compute.observe(compute_seconds)
        for q in queue_seconds:
            self._queue.observe(q)

    def on_reject(self, reason: str) -> None:
        self._rejected.labels(*self._labels, reason).inc()

    def on_queue_depth(self, depth: int) -> None:
        self._depth.set(depth)


class BatchingRunner:
    def __init__(
        self,
        session: Session,
        compute: Compute,
        config: BatchingConfig,
        stats: VersionStats,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.stats = stats
        self._compute = compute
        self._observer = _BatchObserver(stats, metrics, session.name, session.version)
        self.batcher = DynamicBatcher(
            self._execute,
            config,
            observer=self._observer,
            name=f"{session.name}/{session.version}",
        )

    async def _execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, _ = await self._compute(feeds, _rows(self.session, feeds))
        return out

    async def run(
        self,
        feeds: dict[str, np.ndarray],
        *,
        rows: int | None = None,
        priority: int | None,
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        return await self.batcher.submit(feeds, rows=rows, priority=priority, timeout_s=timeout_s)

    def run_inline(
        self, feeds: dict[str, np.ndarray], rows: int, requests: int, budget_ns: float
    ) -> dict[str, np.ndarray] | None:
        done = self._compute.inline(feeds, rows, budget_ns)
        if done is None:
            return None
        self._observer.on_batch(rows, requests, (0.0,) * requests, done[1] / 1e9)
        return done[0]

    async def close(self) -> None:
        await self.batcher.close(drain=True)


def batching_config(config: ModelConfig, settings: Settings) -> BatchingConfig | None:
    """The batcher configuration of a model, or None when it should not batch."""
    if not settings.batching or config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
        return None
    db = config.dynamic_batching
    qp = db.default_queue_policy
    delay_us = (
        settings.max_queue_delay_us
        if settings.max_queue_delay_us is not None
        else db.max_queue_delay_microseconds
    )
    levels = max(int(db.priority_levels), 1)
    return BatchingConfig(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=delay_us / 1e6,
        preferred_batch_sizes=tuple(
            int(s) for s in db.preferred_batch_size if 0 < s <= config.max_batch_size
        ),
        max_queue_size=int(qp.max_queue_size) or settings.max_queue_size,
        default_timeout_s=(qp.default_timeout_microseconds / 1e6)
        if qp.default_timeout_microseconds
        else None,
        # with no default timeout there is nothing to override: a request's own timeout applies
        allow_timeout_override=qp.allow_timeout_override or not qp.default_timeout_microseconds,
        priority_levels=levels,
        default_priority=min(max(int(db.default_priority_level) or levels, 1), levels),
        instance_count=instance_count(config),
    )
