"""Drift monitoring off the request path.

Design
------
Request handlers call :meth:`DriftMonitor.offer` - O(1), never blocks, never raises for a full queue:
it samples the batch (``sample_fraction``, decided per batch before anything is copied), then
``put_nowait`` into a bounded queue; when the queue is full the batch is dropped and counted
(``stats()["dropped"]``). Arrays are *not* copied: pass arrays that will not be mutated afterwards (a
decoded request tensor or a model output is fine).

One **background thread** consumes the queue. A thread rather than an asyncio task because the work is
CPU-bound numpy code: as a task it would stall the event loop for the whole batch, while a thread
only competes for the GIL, which numpy releases in part (sorting, comparisons, ``bincount``) and which
Python switches every few milliseconds anyway. The per-batch work is vectorised (one broadcast
comparison and one ``bincount`` per batch, no Python loop over rows), and the worker coalesces the
queued batches of the same model version (up to ``max_coalesce`` items) into one ``observe`` call
(:func:`drift.coalesce.coalesce`), so single-row requests do not pay the per-call overhead one by one.

Detectors are created lazily, in the worker thread, by ``factory(model, version)`` - typically: load
the persisted reference, else the ``reference.npz`` shipped with the model, else start capturing - so
file I/O stays off the request path too. A factory returning ``None`` disables drift for that version.

Callbacks, called from the worker thread (keep them short; exceptions are logged and swallowed):

* ``on_window(model, version, report)`` after each processed batch that closed at least one window
  (coalesced batches can close several: ``report["window"]["windows_completed"]`` counts them), e.g.
  to export gauges;
* ``on_status_change(model, version, old, new, report)`` when the model status changes (log event,
  webhook, ``drift_status`` gauge).
* ``on_bad_batch(model, version, message)`` when a batch does not fit its detector (other
  columns than the reference, mismatched rows): the batch is skipped and counted under
  ``errors``. Without this callback one line per version is logged, never a traceback.

The ``report`` passed to callbacks has no histograms (``histograms=False``) to stay cheap; call
:meth:`DriftMonitor.report` for the full one.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from turnout.drift.coalesce import Item, coalesce
from turnout.drift.detector import DriftDetector

log = logging.getLogger("drift.monitor")

Key = tuple[str, str]
DetectorFactory = Callable[[str, str], DriftDetector | None]
StatusCallback = Callable[[str, str, str, str, dict[str, Any]], None]
WindowCallback = Callable[[str, str, dict[str, Any]], None]
BadBatchCallback = Callable[[str, str, str], None]


_STOP = object()


class DriftMonitor:
    """Routes sampled observations of every model version to its :class:`DriftDetector`."""

    def __init__(
        self,
        factory: DetectorFactory,
        *,
        queue_size: int = 1024,
        sample_fraction: float = 1.0,
        seed: int | None = None,
        max_coalesce: int = 64,
        tick_interval: float = 1.0,
        on_status_change: StatusCallback | None = None,
        on_window: WindowCallback | None = None,
        on_bad_batch: BadBatchCallback | None = None,
        autostart: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if not 0.0 <= sample_fraction <= 1.0:
            raise ValueError("sample_fraction must be in [0, 1]")
        if max_coalesce < 1:
            raise ValueError("max_coalesce must be >= 1")
        self._factory = factory
        self._queue: queue.Queue[Item | object] = queue.Queue(maxsize=queue_size)
        self._queue_size = queue_size
        self.sample_fraction = sample_fraction
        self._rng = random.Random(seed)
        self._max_coalesce = max_coalesce
        self._tick_interval = tick_interval
        self._on_status_change = on_status_change
        self._on_window = on_window
        self._on_bad_batch = on_bad_batch
        self._bad_logged: set[Key] = set()  # versions whose bad batches were logged (no callback)
        self._clock = clock
        self._detectors: dict[Key, DriftDetector | None] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._counters = dict.fromkeys(
            ("offered", "enqueued", "dropped", "sampled_out", "processed", "rows", "errors", "ignored"), 0
        )
        self._stopping = False
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0, *, drain: bool = True) -> None:
        """Stop the worker. ``drain=True`` processes what is queued first; otherwise it is dropped."""
        with self._lock:
            if self._stopping:
                thread = self._thread
            else:
                self._stopping = True
                thread = self._thread
        if not drain:
            self._discard_queued()
        if thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                self._discard_queued()
                self._queue.put_nowait(_STOP)
            thread.join(timeout)
        else:
            self._discard_queued()

    def __enter__(self) -> DriftMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _discard_queued(self) -> None:
        discarded = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Item):
                discarded += 1
        if discarded:
            with self._lock:
                self._counters["dropped"] += discarded
                self._pending -= discarded
                self._idle.notify_all()

    # -- request path ------------------------------------------------------------------------------

    def offer(
        self,
        model: str,
        version: str,
        inputs: npt.ArrayLike,
        outputs: npt.ArrayLike | None = None,
    ) -> bool:
        """Queue a batch for drift accounting. Never blocks; ``False`` if sampled out or dropped."""
        with self._lock:
            self._counters["offered"] += 1
            if self._stopping:
                self._counters["dropped"] += 1
                return False
            if self.sample_fraction < 1.0 and self._rng.random() >= self.sample_fraction:
                self._counters["sampled_out"] += 1
                return False
            item = Item(model, version, np.asarray(inputs), None if outputs is None else np.asarray(outputs))
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._counters["dropped"] += 1
                return False
            self._counters["enqueued"] += 1
            self._pending += 1
            return True

    # -- queries -----------------------------------------------------------------------------------

    def detector(self, model: str, version: str) -> DriftDetector | None:
        with self._lock:
            return self._detectors.get((model, version))

    def set_detector(self, model: str, version: str, detector: DriftDetector | None) -> None:
        """Install (or disable with ``None``) the detector of a version instead of using the factory."""
        with self._lock:
            self._detectors[(model, version)] = detector

    def remove(self, model: str, version: str) -> None:
        """Forget a version (e.g. when it is unloaded)."""
        with self._lock:
            self._detectors.pop((model, version), None)

    def report(
        self,
        model: str,
        version: str,
        view: Literal["window", "sliding"] = "window",
        *,
        histograms: bool = True,
    ) -> dict[str, Any] | None:
        """The detector's report, or ``None`` if this version has no detector (yet)."""
        detector = self.detector(model, version)
        return detector.report(view, histograms=histograms) if detector is not None else None

    def statuses(self) -> dict[Key, str]:
        with self._lock:
            detectors = [(k, d) for k, d in self._detectors.items() if d is not None]
        return {key: det.status for key, det in detectors}

    def stats(self) -> dict[str, int]:
        """Counters: offered, enqueued, dropped, sampled_out, processed (batches), rows, errors, ignored."""
        with self._lock:
            out = dict(self._counters)
            out["queue_depth"] = self._queue.qsize()
            out["queue_size"] = self._queue_size
            out["pending"] = self._pending
            return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything enqueued so far has been processed; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    # -- worker ------------------------------------------------------------------------------------

    def _run(self) -> None:
        last_tick = self._clock()
        while True:
            try:
                first = self._queue.get(timeout=self._tick_interval)
            except queue.Empty:
                self._tick_all()
                last_tick = self._clock()
                continue
            if first is _STOP:
                return
            batch: list[Item] = [first] if isinstance(first, Item) else []
            stop_after = False
            while len(batch) < self._max_coalesce:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                if isinstance(more, Item):
                    batch.append(more)
            try:
                self._process(batch)
            finally:
                with self._lock:
                    self._pending -= len(batch)
                    self._idle.notify_all()
            if stop_after:
                return
            if self._clock() - last_tick >= self._tick_interval:
                self._tick_all()
                last_tick = self._clock()

    def _resolve(self, key: Key) -> DriftDetector | None:
        with self._lock:
            if key in self._detectors:
                return self._detectors[key]
        try:
            detector = self._factory(*key)
        except Exception:
            log.exception("drift: detector factory failed for %s/%s", *key)
            detector = None
            with self._lock:
                self._counters["errors"] += 1
        with self._lock:
            return self._detectors.setdefault(key, detector)

    def _process(self, batch: list[Item]) -> None:
        groups: dict[Key, list[Item]] = {}
        for item in batch:
            groups.setdefault((item.model, item.version), []).append(item)
        for key, items in groups.items():
            detector = self._resolve(key)
            if detector is None:
                with self._lock:
                    self._counters["ignored"] += len(items)
                continue
            before_status, before_windows = detector.status, detector.windows_completed
            rows = 0
            for inputs, outputs in coalesce(items):
                try:
                    detector.observe(inputs, outputs)
                    rows += inputs.shape[0]
                except ValueError as exc:  # the rows do not fit this detector: the data's fault
                    with self._lock:
                        self._counters["errors"] += 1
                    self._bad_batch(key, str(exc))
                except Exception:
                    log.exception("drift: observe failed for %s/%s", *key)
                    with self._lock:
                        self._counters["errors"] += 1
            with self._lock:
                self._counters["processed"] += len(items)
                self._counters["rows"] += rows
            self._notify(key, detector, before_status, before_windows)

    def _bad_batch(self, key: Key, message: str) -> None:
        if self._on_bad_batch is not None:
            try:
                self._on_bad_batch(key[0], key[1], message)
            except Exception:
                log.exception("drift: on_bad_batch callback failed for %s/%s", *key)
        elif key not in self._bad_logged:
            self._bad_logged.add(key)
            log.warning(
                "drift: a batch for %s/%s was skipped (%s); further ones are only counted", *key, message
            )

    def _tick_all(self) -> None:
        with self._lock:
            detectors = [(k, d) for k, d in self._detectors.items() if d is not None]
        for key, detector in detectors:
            before_status, before_windows = detector.status, detector.windows_completed
            try:
                detector.tick()
            except Exception:
                log.exception("drift: tick failed for %s/%s", *key)
                continue
            self._notify(key, detector, before_status, before_windows)

    def _notify(self, key: Key, detector: DriftDetector, old_status: str, old_windows: int) -> None:
        new_status, windows = detector.status, detector.windows_completed
        if windows == old_windows and new_status == old_status:
            return
        if self._on_window is None and self._on_status_change is None:
            return
        report = detector.report(histograms=False)
        if windows != old_windows and self._on_window is not None:
            try:
                self._on_window(key[0], key[1], report)
            except Exception:
                log.exception("drift: on_window callback failed for %s/%s", *key)
        if new_status != old_status and self._on_status_change is not None:
            try:
                self._on_status_change(key[0], key[1], old_status, new_status, report)
            except Exception:
                log.exception("drift: on_status_change callback failed for %s/%s", *key)
