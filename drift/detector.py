"""Per model-version drift detection over tumbling windows of served rows.

How repeated looks are handled
------------------------------
Rows are grouped into *tumbling*, non-overlapping windows, closed by row count
(``window_rows``, default 500) and/or by time (``window_seconds``, read from the injected clock). Every
closed window is tested once against the reference, with one multiple-testing family made of all the
model's features *and* outputs, at level ``alpha``. What is controlled is therefore the **per-window
false-alarm rate of the whole model**: with no drift, each window raises "drift" with probability
``<= alpha`` (default 1 %: about one false alarm per 100 windows). It is not a sequential test: over
many windows false alarms do accumulate, at the rate of ``alpha`` per window. ``confirm_windows = k``
demands ``k`` consecutive alarming windows for the same column before it turns "drift" (the first
``k - 1`` give "warning"), which cuts the false-alarm rate to about ``alpha ** k`` per window under
independence, at the cost of ``k - 1`` windows of delay.

The *sliding view* (``report(view="sliding")``) merges the last ``sliding_windows`` closed windows and
tests them together: more rows, so more power against slow, small drifts. Consecutive sliding views
overlap, so they are not independent looks; the view is informational and does not drive callbacks.

Statuses per column and for the model (``collecting``, ``ok``, ``warning``, ``drift``) are defined in
:mod:`drift.status`; the knobs are :class:`~drift.config.DriftConfig`.

Time windows that expire with fewer than ``min_window_rows`` rows are extended until they have enough.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy.typing as npt

from turnout.drift.capture import ReferenceCapture
from turnout.drift.columns import IntArray, SchemaMismatch
from turnout.drift.config import DEFAULT_CONFIG, DriftConfig
from turnout.drift.fleet import window_counts
from turnout.drift.histogram import HistogramSet
from turnout.drift.layout import as_rows
from turnout.drift.reference import Reference
from turnout.drift.report import columns_report, histogram_list
from turnout.drift.status import Streaks, status_of
from turnout.drift.windows import Snapshot, Window, evaluate, merge_windows, snapshot

log = logging.getLogger("drift")

Clock = Callable[[], float]


class DriftDetector:
    """Drift detection for one model version (thread-safe: every public method takes a lock).

    ``reference=None`` captures the first ``config.reference_rows`` rows served, freezes them and
    calls ``on_reference_frozen(reference)`` (e.g. to persist it with :meth:`Reference.save`).

    ``clock`` stamps windows (``start`` / ``end`` in reports) and drives ``window_seconds``; the default
    is ``time.monotonic``; pass ``time.time`` to get wall-clock timestamps in reports.
    """

    def __init__(
        self,
        reference: Reference | None = None,
        config: DriftConfig = DEFAULT_CONFIG,
        *,
        clock: Clock = time.monotonic,
        on_reference_frozen: Callable[[Reference], None] | None = None,
        name: str = "",
    ) -> None:
        self.config = config
        self.name = name
        self._clock = clock
        self._on_frozen = on_reference_frozen
        self._lock = threading.RLock()
        self._reference: Reference | None = None
        self._capture: ReferenceCapture | None = None
        self._current: Window | None = None
        self._ring: deque[Window] = deque(maxlen=max(config.sliding_windows, 1))
        self._streaks = Streaks()
        self._last: Snapshot | None = None
        self._sliding_cache: tuple[int, Snapshot] | None = None
        self._windows_completed = 0
        self._rows_seen = 0
        if reference is None:
            self._capture = ReferenceCapture(
                config.reference_rows,
                feature_names=config.feature_names,
                categorical=config.categorical,
                output_names=config.output_names,
                output_categorical=config.output_categorical,
                output_argmax=config.output_argmax,
                binning=config.binning,
            )
        else:
            self._install(reference)

    # -- reference ---------------------------------------------------------------------------------

    @property
    def reference(self) -> Reference | None:
        return self._reference

    @property
    def ready(self) -> bool:
        return self._reference is not None

    @property
    def capture_rows(self) -> int:
        return self._capture.rows if self._capture is not None else 0

    def set_reference(self, reference: Reference) -> None:
        """Replace the reference (e.g. one persisted by another process); windows start afresh."""
        with self._lock:
            self._capture = None
            self._install(reference)

    def _install(self, reference: Reference) -> None:
        self._reference = reference
        self._ring.clear()
        self._streaks.clear()
        self._last = None
        self._sliding_cache = None
        self._current = self._new_window()

    def _new_window(self) -> Window:
        assert self._reference is not None
        outputs = self._reference.outputs.empty_like() if self._reference.outputs is not None else None
        now = self._clock()
        return Window(self._reference.features.empty_like(), outputs, 0, now, now)

    def _freeze(self) -> None:
        assert self._capture is not None
        reference = self._capture.freeze({"detector": self.name})
        self._capture = None
        self._install(reference)
        if self._on_frozen is not None:
            try:
                self._on_frozen(reference)
            except Exception:
                log.exception("drift[%s]: on_reference_frozen callback failed", self.name)

    # -- observing ---------------------------------------------------------------------------------

    def observe(self, inputs: npt.ArrayLike, outputs: npt.ArrayLike | None = None) -> None:
        """Account a batch: ``inputs`` ``[rows, features]``, ``outputs`` ``[rows, ...]`` or ``None``."""
        X = as_rows(inputs)
        Y = as_rows(outputs) if outputs is not None else None
        if Y is not None and Y.shape[0] != X.shape[0]:
            raise ValueError(f"{X.shape[0]} input rows but {Y.shape[0]} output rows")
        with self._lock:
            self._rows_seen += X.shape[0]
            self._close_if_expired()
            if self._capture is not None:
                taken = self._capture.add(X, Y)
                if self._capture.full:
                    self._freeze()
                X = X[taken:]
                Y = Y[taken:] if Y is not None else None
                if self._reference is None or X.shape[0] == 0:
                    return
            self._add_rows(X, Y)
            self._close_if_expired()

    def _add_rows(self, X: npt.NDArray[Any], Y: npt.NDArray[Any] | None) -> None:
        reference = self._reference
        assert reference is not None
        f_index = reference.features.binning.bin_index(X)
        o_index: IntArray | None = None
        if Y is not None and reference.outputs is not None and reference.output_layout is not None:
            o_index = reference.outputs.binning.bin_index(reference.output_layout.expand(Y))
        n, start = X.shape[0], 0
        limit = self.config.window_rows
        while start < n:
            window = self._current
            assert window is not None
            take = n - start if limit is None else min(n - start, limit - window.rows)
            window.features.add_index(f_index[start : start + take])
            if o_index is not None and window.outputs is not None:
                window.outputs.add_index(o_index[start : start + take])
            window.rows += take
            window.end = self._clock()
            start += take
            if limit is not None and window.rows >= limit:
                self._close_window()

    def tick(self) -> bool:
        """Close the current window if its time is up; returns whether a window closed."""
        with self._lock:
            before = self._windows_completed
            self._close_if_expired()
            return self._windows_completed != before

    def _close_if_expired(self) -> None:
        seconds = self.config.window_seconds
        window = self._current
        if seconds is None or window is None:
            return
        if self._clock() - window.start >= seconds and window.rows >= self.config.min_window_rows:
            self._close_window()

    def _close_window(self) -> None:
        window, reference = self._current, self._reference
        assert window is not None and reference is not None
        if window.rows < self.config.min_window_rows:  # too small to test: keep filling it
            return
        window.end = self._clock()
        self._current = self._new_window()
        confirm = self.config.confirm_windows
        evaluation = evaluate(reference, window, self.config)
        self._windows_completed += 1
        feature_status = [self._streaks.status("f", c, confirm) for c in evaluation.features]
        output_status = [self._streaks.status("o", c, confirm) for c in evaluation.outputs]
        self._last = snapshot(
            reference, window, self._windows_completed, evaluation, feature_status, output_status
        )
        self._ring.append(window)
        self._sliding_cache = None

    # -- multi-process merging ---------------------------------------------------------------------

    def current_histograms(self) -> dict[str, Any]:
        """Counts of the window being filled: ``{"rows", "features": [hist], "outputs": [hist]}``."""
        with self._lock:
            window = self._current
            if window is None:
                return {"rows": 0, "features": [], "outputs": [], "reference_ready": False}
            return {
                "rows": window.rows,
                "features": histogram_list(window.features),
                "outputs": histogram_list(window.outputs) if window.outputs is not None else [],
                "reference_ready": True,
            }

    def mergeable_counts(self) -> dict[str, Any]:
        """The reference and the counts of the window being filled, for a fleet-wide merge
        (:func:`drift.fleet.window_counts`)."""
        with self._lock:
            return window_counts(self._reference, self._current, self.config)

    def take_current_histograms(self) -> dict[str, Any]:
        """Like :meth:`current_histograms`, then restart the current window empty (for shipping counts
        to an aggregating process that calls :meth:`merge_from`)."""
        with self._lock:
            out = self.current_histograms()
            if self._current is not None:
                self._current = self._new_window()
            return out

    def merge_from(self, other_counts: Mapping[str, Any]) -> None:
        """Add another detector's window counts (from :meth:`current_histograms`) to the current window.

        Bins must match exactly (same reference). Counts are added as a block: a merge that crosses
        ``window_rows`` closes the window with all of them in it.
        """
        with self._lock:
            reference, window = self._reference, self._current
            if reference is None or window is None:
                raise RuntimeError("reference not ready: nothing to merge into")
            features = HistogramSet.from_dict(
                {"columns": other_counts["features"]}, reference.features.binning
            )
            outputs: HistogramSet | None = None
            if other_counts.get("outputs"):
                if reference.outputs is None:
                    raise SchemaMismatch("this detector has no outputs to merge into")
                outputs = HistogramSet.from_dict(
                    {"columns": other_counts["outputs"]}, reference.outputs.binning
                )
            window.features.merge(features)
            if outputs is not None and window.outputs is not None:
                window.outputs.merge(outputs)
            window.rows += int(other_counts["rows"])
            window.end = self._clock()
            limit = self.config.window_rows
            if limit is not None and window.rows >= limit:
                self._close_window()
            else:
                self._close_if_expired()

    # -- reporting ---------------------------------------------------------------------------------

    @property
    def windows_completed(self) -> int:
        return self._windows_completed

    @property
    def status(self) -> str:
        with self._lock:
            return self._last.status if self._last is not None else "collecting"

    @property
    def nbytes(self) -> int:
        """Bytes of histogram state: bins, reference counts, the window being filled and kept windows."""
        with self._lock:
            if self._reference is None:
                return 0
            size = self._reference.nbytes
            kept = {id(w): w for w in [*self._ring, self._current] if w is not None}
            if self._last is not None:
                kept[id(self._last.window)] = self._last.window
            for window in kept.values():
                size += window.features.nbytes + (window.outputs.nbytes if window.outputs is not None else 0)
            return size

    def report(
        self, view: Literal["window", "sliding"] = "window", *, histograms: bool = True
    ) -> dict[str, Any]:
        """JSON-able status of the last closed window (or of the sliding view over the last K windows)."""
        with self._lock:
            self._close_if_expired()
            reference = self._reference
            cfg = self.config
            snapshot = self._last if view == "window" else self._sliding()
            window_info: dict[str, Any] = {
                "view": view,
                "index": snapshot.index if snapshot is not None else None,
                "rows": snapshot.window.rows if snapshot is not None else 0,
                "start": snapshot.window.start if snapshot is not None else None,
                "end": snapshot.window.end if snapshot is not None else None,
                "windows_completed": self._windows_completed,
                "current_rows": self._current.rows if self._current is not None else 0,
                "window_rows": cfg.window_rows,
                "window_seconds": cfg.window_seconds,
                "sliding_windows": cfg.sliding_windows,
                "reference_ready": reference is not None,
                "reference_rows": reference.n_rows if reference is not None else None,
                "capture_rows": self.capture_rows,
                "capture_target": cfg.reference_rows,
                "alpha": cfg.alpha,
                "correction": cfg.correction,
                "tests": snapshot.evaluation.n_tests if snapshot is not None else 0,
                "min_js": cfg.min_js,
                "confirm_windows": cfg.confirm_windows,
            }
            out: dict[str, Any] = {
                "status": snapshot.status if snapshot is not None else "collecting",
                "window": window_info,
                "features": [],
                "outputs": [],
            }
            if reference is None:
                return out
            out["features"] = columns_report(
                reference.features,
                snapshot.window.features if snapshot else None,
                snapshot.evaluation.features if snapshot else None,
                snapshot.feature_status if snapshot else None,
                histograms,
            )
            if reference.outputs is not None:
                out["outputs"] = columns_report(
                    reference.outputs,
                    snapshot.window.outputs if snapshot else None,
                    snapshot.evaluation.outputs if snapshot and snapshot.evaluation.outputs else None,
                    snapshot.output_status if snapshot else None,
                    histograms,
                )
            return out

    def _sliding(self) -> Snapshot | None:
        if not self._ring or self._reference is None or self.config.sliding_windows < 1:
            return None
        if self._sliding_cache is not None and self._sliding_cache[0] == self._windows_completed:
            return self._sliding_cache[1]
        merged = merge_windows(list(self._ring))
        evaluation = evaluate(self._reference, merged, self.config)
        feature_status = [status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.features]
        output_status = [status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.outputs]
        sliding = snapshot(
            self._reference, merged, self._windows_completed, evaluation, feature_status, output_status
        )
        self._sliding_cache = (self._windows_completed, sliding)
        return sliding
