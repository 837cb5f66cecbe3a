"""A :class:`DriftMonitor` in a child process, so its numpy work never takes the server's GIL.

In a thread, the monitor's binning and window tests competed with the event loop for the GIL,
taking throughput and latency from the loop under load. In a child process the server only pickles
each flush's rows into a pipe.

Messages, parent -> child (one pipe): ``("spec", key, DetectorSpec)`` before the first rows of a
version, ``("rows", key, inputs, outputs)``, ``("remove", key)``, ``("call", id, method, args)``
for queries, ``("stop",)``. Child -> parent (another pipe): ``("reply", id, ok, value)``,
``("window", key, report)``, ``("status", key, old, new, report)``, ``("log", level, message)``,
``("bad_batch", key, message)`` for rows that did not fit their detector (skipped).
The child exits when the parent's end of the pipe closes (the parent died) or on ``stop``.

A reader thread in the parent answers queries and calls the callbacks; both are rare (a report
request, a window a second), so that thread seldom takes the GIL.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from turnout.drift.config import DriftConfig
from turnout.drift.detector import DriftDetector
from turnout.drift.monitor import DriftMonitor
from turnout.drift.reference import Reference

log = logging.getLogger("drift.process")

Key = tuple[str, str]


@dataclass(frozen=True)
class DetectorSpec:
    """Everything the child needs to build a version's detector: where its reference may be
    (persisted, else shipped, else captured from traffic and then persisted) and the config."""

    config: DriftConfig
    name: str
    persisted: Path | None = None
    shipped: Path | None = None


def build_detector(spec: DetectorSpec, emit_log: Callable[[int, str], None]) -> DriftDetector:
    reference: Reference | None = None
    if spec.persisted is not None and spec.persisted.is_file():
        reference = Reference.load(spec.persisted)
        emit_log(logging.INFO, f"{spec.name}: drift reference restored from {spec.persisted}")
    elif spec.shipped is not None and spec.shipped.is_file():
        reference = Reference.from_npz(
            spec.shipped, binning=spec.config.binning, max_features=spec.config.max_features
        )
        emit_log(logging.INFO, f"{spec.name}: drift reference from the shipped {spec.shipped.name}")

    def frozen(ref: Reference) -> None:
        emit_log(logging.INFO, f"{spec.name}: drift reference captured from {ref.n_rows} rows")
        if spec.persisted is not None:
            ref.save(spec.persisted)

    return DriftDetector(reference, spec.config, clock=time.time, on_reference_frozen=frozen, name=spec.name)


def _child(inbox: Connection, outbox: Connection) -> None:
    """The child's main loop: feed the monitor, answer queries, forward its events."""
    # A Ctrl-C or a SIGTERM to the process group is the parent's to handle: the child ends when
    # the parent sends "stop" or its end of the pipe closes (also when the parent is killed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = threading.Lock()  # the monitor's worker thread and this loop both send

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            try:
                outbox.send(msg)
            except (BrokenPipeError, OSError):
                pass  # the parent is gone; the next recv ends this process

    specs: dict[Key, DetectorSpec] = {}

    def emit_log(level: int, message: str) -> None:
        send(("log", level, message))

    def factory(model: str, version: str) -> DriftDetector | None:
        spec = specs.get((model, version))
        return build_detector(spec, emit_log) if spec is not None else None

    monitor = DriftMonitor(
        factory,
        queue_size=1024,
        max_coalesce=256,
        on_status_change=lambda m, v, old, new, rep: send(("status", (m, v), old, new, rep)),
        on_window=lambda m, v, rep: send(("window", (m, v), rep)),
        on_bad_batch=lambda m, v, message: send(("bad_batch", (m, v), message)),
    )
    try:
        while True:
            try:
                msg = inbox.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "rows":
                _, (model, version), inputs, outputs = msg
                monitor.offer(model, version, inputs, outputs)
            elif kind == "spec":
                specs[msg[1]] = msg[2]
            elif kind == "remove":
                specs.pop(msg[1], None)
                monitor.remove(*msg[1])
            elif kind == "call":
                _, call_id, method, args = msg
                try:
                    send(("reply", call_id, True, _query(monitor, method, args)))
                except Exception as exc:  # a query must not end the child
                    send(("reply", call_id, False, f"{type(exc).__name__}: {exc}"))
            elif kind == "stop":
                return
    finally:
        monitor.stop(timeout=5.0, drain=False)


def _query(monitor: DriftMonitor, method: str, args: tuple[Any, ...]) -> Any:
    if method == "report":
        model, version, view, histograms = args
        monitor.flush(timeout=5.0)
        return monitor.report(model, version, view, histograms=histograms), monitor.stats()
    if method == "live":
        model, version = args
        monitor.flush(timeout=5.0)
        detector = monitor.detector(model, version)
        return detector.current_histograms() if detector is not None else None
    if method == "counts":
        model, version = args
        monitor.flush(timeout=5.0)
        detector = monitor.detector(model, version)
        return detector.mergeable_counts() if detector is not None else None
    raise ValueError(f"unknown query {method!r}")


def _kill(proc: Any) -> None:
    if proc.pid is not None and proc.exitcode is None:
        proc.kill()
        proc.join(5)


class _Child:
    """One child process and the two threads that talk to it."""

    def __init__(
        self, max_queued: int, handle: Callable[[tuple[Any, ...]], None], gone: Callable[[], None]
    ) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs grpc and threads
        child_in, self.inbox = ctx.Pipe(duplex=False)
        self.outbox, child_out = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child, args=(child_in, child_out), name="turnout-drift", daemon=True)
        self.proc.start()
        # At interpreter exit, before multiprocessing waits for its daemon children (it sends
        # SIGTERM, which the child ignores, then joins forever): kill a child never stopped.
        weakref.finalize(self, _kill, self.proc)
        child_in.close()
        child_out.close()
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=max_queued)
        self.alive = True
        self._handle = handle
        self._gone = gone
        self.sender = threading.Thread(target=self._write, name="drift-sender", daemon=True)
        self.reader = threading.Thread(target=self._read, name="drift-reader", daemon=True)
        self.sender.start()
        self.reader.start()

    def send(self, msg: tuple[Any, ...]) -> bool:
        if not self.alive:
            return False
        try:
            self.queue.put_nowait(msg)
            return True
        except queue.Full:
            return False

    def _write(self) -> None:
        while True:
            msg = self.queue.get()
            if msg is None:
                return
            try:
                self.inbox.send(msg)
            except (BrokenPipeError, OSError):
                self._ended()
                return

    def _read(self) -> None:
        while True:
            try:
                msg = self.outbox.recv()
            except (EOFError, OSError):
                break
            try:
                self._handle(msg)
            except Exception:  # a callback's failure must not stop the reader
                log.exception("drift: handling %s from the monitor process failed", msg[0])
        self._ended()

    def _ended(self) -> None:
        if self.alive:
            self.alive = False
            self._gone()

    def stop(self, timeout: float) -> None:
        if self.alive:
            try:
                self.queue.put(("stop",), timeout=timeout)
                self.queue.put(None, timeout=timeout)
            except queue.Full:
                pass
        else:
            try:
                self.queue.put_nowait(None)  # let the sender end if it still waits
            except queue.Full:
                pass
        self.sender.join(timeout)
        self.alive = False
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()  # it ignores SIGTERM (a signal to the process group is the parent's)
            self.proc.join(timeout)
        self.reader.join(timeout)
        self.inbox.close()


class MonitorProcess:
    """The parent's handle on the child: send rows, ask for reports, receive events.

    Nothing here blocks the caller: messages go through a bounded queue to a sender thread,
    which pickles them and writes the pipe (a write of a large batch waits for the child to
    read it, with the GIL released). ``on_window(model, version, report)``,
    ``on_status_change(model, version, old, new, report)`` and
    ``on_bad_batch(model, version, message)`` (rows the child skipped) run on the reader thread;
    :meth:`statuses` is answered locally from those events.

    A child that dies (killed, out of memory) is replaced on the next offer or query, at most
    once every ``restart_after`` seconds. Its window counts are lost; the references it
    persisted are not, so the new child restores them. Rows offered meanwhile are dropped.
    """

    def __init__(
        self,
        *,
        on_status_change: Callable[[str, str, str, str, dict[str, Any]], None] | None = None,
        on_window: Callable[[str, str, dict[str, Any]], None] | None = None,
        timeout: float = 10.0,
        max_queued: int = 64,
        restart_after: float = 5.0,
        on_restart: Callable[[], None] | None = None,
        on_bad_batch: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_status_change = on_status_change
        self._on_window = on_window
        self._on_restart = on_restart
        self._on_bad_batch = on_bad_batch
        self.timeout = timeout
        self.restart_after = restart_after
        self.restarts = 0
        self._max_queued = max_queued
        self._clock = clock
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._statuses: dict[Key, str] = {}
        self._specs_sent: set[Key] = set()
        self._stopping = False
        self._restart_lock = threading.Lock()
        self._child = self._spawn()

    def _spawn(self) -> _Child:
        self._started_at = self._clock()
        self._specs_sent = set()  # a new child knows no version yet
        return _Child(self._max_queued, self._handle, self._gone)

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid

    # ---- to the child ----------------------------------------------------------------

    def _current(self) -> _Child | None:
        """The running child, replacing a dead one when ``restart_after`` has passed."""
        child = self._child
        if child.alive or self._stopping:
            return child if child.alive else None
        if self._clock() - self._started_at < self.restart_after:
            return None
        with self._restart_lock:
            if self._child is child and not self._stopping:
                child.stop(timeout=1.0)
                self._child = self._spawn()
                self.restarts += 1
                log.warning("drift monitor process restarted (%d so far)", self.restarts)
                if self._on_restart is not None:
                    self._on_restart()
            return self._child

    def offer(
        self,
        key: Key,
        inputs: np.ndarray,
        outputs: np.ndarray | None,
        spec: Callable[[], DetectorSpec | None],
    ) -> bool:
        """Queue one batch of rows; ``spec`` is called once per version, before its first rows.
        False when the batch was dropped (queue full, or no child running)."""
        child = self._current()
        if child is None:
            return False
        if key not in self._specs_sent:
            s = spec()
            if s is None or not child.send(("spec", key, s)):
                return False
            self._specs_sent.add(key)
        return child.send(("rows", key, inputs, outputs))

    def remove(self, key: Key) -> None:
        self._specs_sent.discard(key)
        self._statuses.pop(key, None)
        self._child.send(("remove", key))

    def call(self, method: str, *args: Any) -> Any:
        """A query answered by the child; blocks (use from a thread, not the event loop)."""
        fut: Future[Any] = Future()
        call_id = next(self._ids)
        self._pending[call_id] = fut
        try:
            child = self._current()
            if child is None or not child.send(("call", call_id, method, args)):
                raise RuntimeError("drift monitor process is not running or is overloaded")
            try:
                return fut.result(self.timeout)
            except TimeoutError:
                raise RuntimeError(
                    f"drift monitor process did not answer within {self.timeout:g} s"
                ) from None
        finally:
            self._pending.pop(call_id, None)

    def statuses(self) -> dict[Key, str]:
        return dict(self._statuses)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._child.stop(timeout)

    # ---- from the child --------------------------------------------------------------

    def _gone(self) -> None:
        """The child ended (or its pipe broke): waiting queries fail, statuses are forgotten."""
        if not self._stopping:
            log.error("drift monitor process is gone; it is restarted on the next use")
        self._statuses.clear()
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(RuntimeError("drift monitor process ended"))

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "reply":
            _, call_id, ok, value = msg
            fut = self._pending.get(call_id)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(RuntimeError(value))
        elif kind == "window":
            _, key, report = msg
            if key in self._specs_sent:
                self._statuses[key] = report.get("status", "collecting")
            if self._on_window is not None:
                self._on_window(key[0], key[1], report)
        elif kind == "status":
            _, key, old, new, report = msg
            if key in self._specs_sent:
                self._statuses[key] = new
            if self._on_status_change is not None:
                self._on_status_change(key[0], key[1], old, new, report)
        elif kind == "log":
            _, level, message = msg
            log.log(level, "%s", message)
        elif kind == "bad_batch":
            _, key, message = msg
            if self._on_bad_batch is not None:
                self._on_bad_batch(key[0], key[1], message)
            else:
                log.warning("drift: a batch for %s/%s was skipped: %s", key[0], key[1], message)
