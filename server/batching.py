"""Dynamic batching: merge concurrent inference requests into one model execution.

A :class:`DynamicBatcher` sits in front of one model version. Callers ``await submit(inputs)``;
the batcher queues the request, merges it with other queued requests that have the same
*shape key* (input names, dtypes and non-batch dimensions), runs the merged batch through the
``execute`` callable and hands every caller exactly its own rows of every output.

Scheduling rules
----------------
* **Batch formation and waiting** are decided by the pure :func:`server.batch_plan.plan` (its
  docstring states the rules): no added latency when idle, oldest request of the highest
  priority first, compatible requests greedily up to ``max_batch_size``, cut at a preferred size.
* **Bounded queue.** At most ``max_queue_size`` requests wait; the next one gets
  :class:`~server.errors.QueueFull` at once.
* **Timeouts and cancellation.** A request still queued past its deadline fails with
  :class:`~server.errors.RequestTimeout` and is never executed. A caller whose task is
  cancelled has its request removed from the queue before it is executed.

Implementation notes (hot path)
-------------------------------
* Idle fast path: when nothing is queued and nothing executes, ``submit`` runs ``execute`` for
  its lone request directly in the caller's task -- no queueing, no hand-off, no allocation
  besides the call itself. Being idle, there is nobody
  it could have been batched with.
* Otherwise a request costs one slotted :class:`_Request` (which owns its future) and that
  future. The queue is a list of per-priority deques of those objects -- the one bounded
  structure holding requests and futures together. ``instance_count`` long-lived worker tasks
  (started lazily on the first ``submit``) form and execute batches, so no task is created per
  request or per batch. Workers sleep on a bare future that ``submit`` resolves; the delay wait
  is a future resolved by ``loop.call_later``. An execution slot is held by either a worker's
  batch or an idle-path request; at most ``instance_count`` executions run at once.
* Timeouts use one ``call_later`` handle per request that has a deadline; cancelled callers are
  removed from the queue by ``submit`` itself. Both are off the common path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import numpy as np

from turnout.server.batch_config import BatchingConfig, BatchObserver, is_int, is_number
from turnout.server.batch_plan import FOREVER, plan
from turnout.server.errors import (
    Cancelled,
    InferenceFailed,
    InvalidInput,
    QueueFull,
    RequestTimeout,
    TurnoutError,
    Unavailable,
)
from turnout.server.validation import batch_rows

__all__ = ["BatchObserver", "BatchingConfig", "DynamicBatcher", "ExecuteFn"]

logger = logging.getLogger(__name__)

ExecuteFn = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]

# Request states.
_QUEUED: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2

_INF: Final = math.inf
_by_name = operator.itemgetter(0)


class _Request:
    """One queued request; owns the future its caller awaits."""

    __slots__ = ("deadline", "enqueued", "future", "inputs", "key", "level", "rows", "state", "timer")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        key: object,
        rows: int,
        level: int,
        enqueued: float,
        deadline: float,
        future: asyncio.Future[dict[str, np.ndarray]],
    ) -> None:
        self.inputs = inputs
        self.key = key
        self.rows = rows
        self.level = level
        self.enqueued = enqueued
        self.deadline = deadline
        self.future = future
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DynamicBatcher:
    """Queues requests for one model and executes them in merged batches.

    ``execute`` runs one merged batch and must return arrays whose first dimension equals the
    number of rows it was given. It is awaited either in a worker task or, on the idle fast
    path, in the caller's task. The batcher is bound to the event loop of its first ``submit``
    and is not thread-safe: use it from that loop only.
    """

    def __init__(
        self,
        execute: ExecuteFn,
        config: BatchingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        name: str = "",
    ) -> None:
        self._execute = execute
        self._config = config
        self._clock = clock
        self._observer = observer
        self._name = name
        self._label = f"model '{name}'" if name else "batcher"

        self._max_rows = config.max_batch_size
        self._max_queue = config.max_queue_size
        self._delay = config.max_queue_delay_s
        self._preferred = frozenset(config.preferred_batch_sizes)
        # Fewest queued rows that could make a waiting batch "ready" (used to avoid useless wake-ups).
        self._ready_rows = config.preferred_batch_sizes[0] if config.preferred_batch_sizes else self._max_rows
        self._default_timeout = config.default_timeout_s
        self._allow_override = config.allow_timeout_override
        self._n_levels = config.priority_levels
        self._default_level = config.default_priority - 1

        self._levels: list[deque[_Request]] = [deque() for _ in range(config.priority_levels)]
        self._depth = 0  # queued requests
        self._queued_rows = 0
        self._slots = config.instance_count
        self._running = 0  # executing batches (each holds one of the instance_count slots)
        self._in_flight = 0  # executing requests

        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._idle: list[asyncio.Future[None]] = []  # wake-up futures of sleeping workers
        self._delayer: asyncio.Future[None] | None = None  # the one worker waiting for a fuller batch
        self._closed = False
        self._broken: BaseException | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._observer_failed = False

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._name

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the queue (not executing)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        """Requests whose batch is executing right now."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        rows: int | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request and return its rows of every output.

        ``rows`` is the batch dimension :func:`server.validation.validate_inputs` returned for
        ``inputs``; without it the arrays are checked here (server.validation.batch_rows).
        Raises InvalidInput (bad shapes, priority or timeout), QueueFull, Unavailable (closed),
        RequestTimeout (deadline passed while queued), or the batch's execution error.
        """
        if self._closed:
            raise Unavailable(f"{self._label} is not accepting requests (shutting down)")

        if rows is None or not 1 <= rows <= self._max_rows:  # not validated by server.validation
            rows = batch_rows(self._label, inputs, self._max_rows)

        if priority is None or priority == 0:
            level = self._default_level
        elif is_int(priority) and 1 <= priority <= self._n_levels:
            level = priority - 1
        else:
            raise InvalidInput(
                f"{self._label}: priority must be in 1..{self._n_levels} (or 0 for the default),"
                f" got {priority!r}"
            )

        timeout = self._default_timeout
        if timeout_s is not None and self._allow_override:
            if not is_number(timeout_s) or math.isnan(timeout_s) or timeout_s <= 0:
                raise InvalidInput(f"{self._label}: timeout must be > 0 seconds, got {timeout_s!r}")
            timeout = timeout_s

        if self._depth >= self._max_queue:
            self._reject("queue_full")
            raise QueueFull(f"{self._label}: queue is full ({self._max_queue} requests waiting); retry later")

        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)

        if not self._depth and not self._running:
            # Idle: nothing queued ahead of us and nothing executing. Run at once, in the caller's
            # task -- no hand-off to a worker, no added latency.
            return await self._run_alone(inputs, rows)

        # The shape key: requests batch together only with the same input names, dtypes and
        # non-batch dimensions.
        if len(inputs) == 1:
            for name, arr in inputs.items():
                key: object = (name, arr.dtype, arr.shape[1:])
        else:
            parts = [(name, arr.dtype, arr.shape[1:]) for name, arr in inputs.items()]
            parts.sort(key=_by_name)
            key = tuple(parts)

        now = self._clock()
        fut: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        req = _Request(inputs, key, rows, level, now, _INF if timeout is None else now + timeout, fut)
        self._levels[level].append(req)
        self._depth += 1
        self._queued_rows += rows
        if timeout is not None and timeout != _INF:
            req.timer = loop.call_later(timeout, self._expire, req)

        delayer = self._delayer
        if delayer is not None:
            if self._queued_rows >= self._ready_rows and not delayer.done():
                delayer.set_result(None)
        elif self._idle and self._running < self._slots:
            self._wake_idle()
        if self._observer is not None:
            self._notify_depth()

        try:
            return await fut
        except asyncio.CancelledError:
            if req.state == _QUEUED:
                self._unqueue(req)
                req.state = _DONE
                self._reject("cancelled")
            raise

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting requests; with ``drain`` finish queued and running work first.

        Without ``drain`` (or for whatever is left), queued and executing requests fail with
        Unavailable. Idempotent.
        """
        self._closed = True
        loop = self._loop
        if loop is None:
            return
        if drain and (self._depth or self._running) and not self._broken:
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = loop.create_future()
            self._wake_all()  # a waiting worker dispatches at once when closed
            await waiter
        self._fail_queued(Unavailable(f"{self._label} was closed before the request was executed"))
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._wake_all()

    # ------------------------------------------------------------------ queue internals

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._broken is not None:
            raise Unavailable(f"{self._label} is unavailable: its scheduler failed") from self._broken
        if self._loop is not None:
            raise RuntimeError(f"{self._label}: DynamicBatcher is bound to another event loop")
        self._loop = loop
        for i in range(self._config.instance_count):
            task = loop.create_task(self._worker(loop), name=f"batcher[{self._name}]#{i}")
            task.add_done_callback(self._worker_done)
            self._workers.append(task)

    def _wake_idle(self) -> None:
        idle = self._idle
        while idle:
            fut = idle.pop()
            if not fut.done():
                fut.set_result(None)
                return

    def _slot_freed(self) -> None:
        """An execution finished: make sure queued work gets a worker."""
        if self._depth:
            if self._delayer is not None:
                if not self._running:
                    _wake(self._delayer)  # nothing executes any more: stop waiting
            elif self._idle:
                self._wake_idle()

    def _wake_all(self) -> None:
        if self._delayer is not None:
            _wake(self._delayer)
        idle, self._idle = self._idle, []
        for fut in idle:
            _wake(fut)

    def _unqueue(self, req: _Request) -> None:
        """Remove a queued request (cancel/timeout path; O(queue) but off the hot path)."""
        self._levels[req.level].remove(req)
        self._depth -= 1
        self._queued_rows -= req.rows
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        if self._observer is not None:
            self._notify_depth()
        if self._closed:
            self._check_drained()

    def _expire(self, req: _Request) -> None:
        if req.state != _QUEUED:
            return
        remaining = req.deadline - self._clock()
        if remaining > 0 and self._loop is not None:  # timer fired early, or the clock is injected
            req.timer = self._loop.call_later(remaining, self._expire, req)
            return
        req.timer = None
        self._unqueue(req)
        req.state = _DONE
        self._timed_out(req)

    def _timed_out(self, req: _Request) -> None:
        if not req.future.done():
            req.future.set_exception(
                RequestTimeout(
                    f"{self._label}: request waited longer than its timeout"
                    f" ({req.deadline - req.enqueued:g}s) in the queue"
                )
            )
        self._reject("timeout")

    def _commit(self, batch: list[_Request], dead: list[_Request] | None) -> None:
        """Take ``batch`` out of the queue and resolve the ``dead`` requests."""
        removed = len(batch)
        rows = 0
        for req in batch:
            req.state = _RUNNING
            rows += req.rows
            if req.timer is not None:
                req.timer.cancel()
                req.timer = None
        if dead:
            removed += len(dead)
            for req in dead:
                req.state = _DONE
                rows += req.rows
                if req.timer is not None:
                    req.timer.cancel()
                    req.timer = None
        if not removed:
            return
        # Usually everything taken sits at the heads of the deques.
        popped = 0
        for queue in self._levels:
            while queue and queue[0].state != _QUEUED:
                queue.popleft()
                popped += 1
            if popped == removed:
                break
        if popped != removed:
            for queue in self._levels:
                if queue:
                    kept = [req for req in queue if req.state == _QUEUED]
                    if len(kept) != len(queue):
                        queue.clear()
                        queue.extend(kept)
        self._depth -= removed
        self._queued_rows -= rows
        if dead:
            for req in dead:
                if req.future.cancelled():
                    self._reject("cancelled")
                else:
                    self._timed_out(req)
        if self._observer is not None:
            self._notify_depth()
        if self._closed:
            self._check_drained()

    def _fail_queued(self, exc: TurnoutError) -> None:
        for queue in self._levels:
            while queue:
                req = queue.popleft()
                req.state = _DONE
                if req.timer is not None:
                    req.timer.cancel()
                    req.timer = None
                if not req.future.done():
                    req.future.set_exception(exc)
        if self._depth:
            self._depth = 0
            self._queued_rows = 0
            if self._observer is not None:
                self._notify_depth()

    def _check_drained(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done() and not self._depth and not self._running:
            waiter.set_result(None)

    # ------------------------------------------------------------------ workers

    async def _worker(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            batch = await self._next_batch(loop)
            await self._run(batch)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        # A scheduler bug must not leave callers hanging: fail everything and stop accepting work.
        logger.error("%s: batch scheduler failed", self._label, exc_info=exc)
        self._broken = exc
        self._closed = True
        self._fail_queued(Unavailable(f"{self._label} is unavailable: its scheduler failed"))
        self._check_drained()
        if self._drain_waiter is not None:
            _wake(self._drain_waiter)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Request]:
        while True:
            if self._depth and self._running < self._slots:
                batch, dead, wait = plan(
                    self._levels,
                    self._clock(),
                    self._max_rows,
                    self._preferred,
                    self._delay,
                    self._running,
                    self._closed,
                    self._delayer is not None,
                )
                if not wait:
                    self._commit(batch, dead)
                    if (
                        self._depth
                        and self._delayer is None
                        and self._idle
                        and self._running + 1 < self._slots
                    ):
                        self._wake_idle()  # more work (e.g. another shape key) for another slot
                    return batch
                if dead:
                    self._commit([], dead)
                if wait != FOREVER:
                    await self._wait_for_more(loop, wait)
                    continue
            fut: asyncio.Future[None] = loop.create_future()
            self._idle.append(fut)
            await fut

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop, remaining: float) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        self._delayer = fut
        handle = loop.call_later(remaining, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            if self._delayer is fut:
                self._delayer = None

    async def _run(self, batch: list[_Request]) -> None:
        n = len(batch)
        self._running += 1
        self._in_flight += n
        start = self._clock()
        try:
            failure: TurnoutError | None = None
            try:
                if n == 1:
                    head = batch[0]
                    rows = head.rows
                    inputs = head.inputs if type(head.inputs) is dict else dict(head.inputs)
                else:
                    rows = 0
                    for req in batch:
                        rows += req.rows
                    inputs = {
                        name: np.concatenate([req.inputs[name] for req in batch]) for name in batch[0].inputs
                    }
                outputs = await self._execute(inputs)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self._fail(
                        batch, Unavailable(f"{self._label} was closed while the request was executing")
                    )
                    raise
                # The execution itself was cancelled (e.g. its executor shut down); keep serving.
                failure = Cancelled(f"{self._label}: execution was cancelled")
            except TurnoutError as exc:
                failure = exc
            except Exception as exc:
                failure = InferenceFailed(f"{self._label}: inference failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
            except BaseException:
                self._fail(batch, InferenceFailed(f"{self._label}: inference was interrupted"))
                raise
            else:
                failure = self._deliver(batch, outputs, rows)
            if failure is not None:
                self._fail(batch, failure)
        finally:
            self._running -= 1
            self._in_flight -= n
            if not self._running and self._delayer is not None:
                _wake(self._delayer)
            if self._observer is not None:
                self._notify_batch(batch, start, self._clock())
            if self._closed:
                self._check_drained()

    async def _run_alone(self, inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Execute one request in the caller's task (the idle fast path)."""
        self._running += 1
        self._in_flight += 1
        start = self._clock() if self._observer is not None else 0.0
        try:
            try:
                outputs = await self._execute(inputs if type(inputs) is dict else dict(inputs))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller went away
                raise Cancelled(f"{self._label}: execution was cancelled") from None
            except TurnoutError:
                raise
            except Exception as exc:
                raise InferenceFailed(
                    f"{self._label}: inference failed: {type(exc).__name__}: {exc}"
                ) from exc
        finally:
            self._running -= 1
            self._in_flight -= 1
            if self._depth:
                self._slot_freed()
            if self._observer is not None:
                self._notify_alone(rows, start)
            if self._closed:
                self._check_drained()
        if type(outputs) is not dict or not self._rows_ok(outputs, rows):
            failure = self._check_outputs(outputs, rows)
            if failure is not None:
                raise failure
            return dict(outputs)
        return outputs

    @staticmethod
    def _rows_ok(outputs: dict[str, np.ndarray], rows: int) -> bool:
        for arr in outputs.values():
            if type(arr) is not np.ndarray or not arr.ndim or arr.shape[0] != rows:
                return False
        return True

    def _check_outputs(self, outputs: object, rows: int) -> TurnoutError | None:
        if not isinstance(outputs, Mapping):
            return InferenceFailed(
                f"{self._label}: execution returned {type(outputs).__name__}, expected a mapping of arrays"
            )
        for name, arr in outputs.items():
            if not isinstance(arr, np.ndarray) or not arr.ndim or arr.shape[0] != rows:
                got = arr.shape[0] if isinstance(arr, np.ndarray) and arr.ndim else "no"
                return InferenceFailed(f"{self._label}: output '{name}' has {got} rows for a batch of {rows}")
        return None

    def _deliver(
        self, batch: list[_Request], outputs: Mapping[str, np.ndarray], rows: int
    ) -> TurnoutError | None:
        """Hand every request its rows of every output (or report malformed outputs)."""
        if type(outputs) is dict and self._rows_ok(outputs, rows):
            result: dict[str, np.ndarray] = outputs
        else:
            failure = self._check_outputs(outputs, rows)
            if failure is not None:
                return failure
            result = dict(outputs)
        if len(batch) == 1:
            req = batch[0]
            req.state = _DONE
            if not req.future.done():
                req.future.set_result(result)
            return None
        items = tuple(result.items())
        start = 0
        for req in batch:
            stop = start + req.rows
            req.state = _DONE
            if not req.future.done():
                req.future.set_result({name: arr[start:stop] for name, arr in items})
            start = stop
        return None

    def _fail(self, batch: list[_Request], exc: BaseException) -> None:
        for req in batch:
            req.state = _DONE
            if not req.future.done():
                req.future.set_exception(exc)

    # ------------------------------------------------------------------ observer (guarded)

    def _observer_error(self) -> None:
        if not self._observer_failed:
            self._observer_failed = True
            logger.exception("%s: batch observer raised; further observer errors are not logged", self._label)

    def _reject(self, reason: str) -> None:
        observer = self._observer
        if observer is not None:
            try:
                observer.on_reject(reason)
            except Exception:
                self._observer_error()

    def _notify_depth(self) -> None:
        observer = self._observer
        if observer is not None:
            try:
                observer.on_queue_depth(self._depth)
            except Exception:
                self._observer_error()

    def _notify_alone(self, rows: int, start: float) -> None:
        observer = self._observer
        if observer is not None:
            try:
                observer.on_batch(rows, 1, (0.0,), self._clock() - start)
            except Exception:
                self._observer_error()

    def _notify_batch(self, batch: list[_Request], start: float, end: float) -> None:
        observer = self._observer
        if observer is None:
            return
        rows = 0
        for req in batch:
            rows += req.rows
        try:
            observer.on_batch(rows, len(batch), [start - req.enqueued for req in batch], end - start)
        except Exception:
            self._observer_error()
