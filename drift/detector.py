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

Statuses (per column and for the model, the model taking the worst of its columns):

* ``collecting`` - no reference yet (still capturing), or no window closed yet;
* ``ok`` - the last window is not significant after correction;
* ``warning`` - significant but the effect is below the floor (``min_js`` / ``min_psi``), or
  significant and large but not yet for ``confirm_windows`` windows in a row;
* ``drift`` - significant, above the effect floor, for ``confirm_windows`` consecutive windows.

Time windows that expire with fewer than ``min_window_rows`` rows are extended until they have enough.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy.typing as npt

from drift.capture import DEFAULT_CAPTURE_ROWS, ReferenceCapture
from drift.columns import IntArray, SchemaMismatch
from drift.edges import BinningConfig
from drift.evaluation import ColumnResult, WindowEvaluation, evaluate_window, result_dict
from drift.histogram import HistogramSet
from drift.layout import CategoricalSpec, as_rows
from drift.reference import Reference
from drift.stats import Correction

log = logging.getLogger("drift")

Status = Literal["collecting", "ok", "warning", "drift"]
SEVERITY: dict[str, int] = {"collecting": 0, "ok": 1, "warning": 2, "drift": 3}
Clock = Callable[[], float]


@dataclass(frozen=True)
class DriftConfig:
    """Knobs of a :class:`DriftDetector` (see the module docstring for their statistical meaning)."""

    alpha: float = 0.01
    correction: Correction = "bh"
    min_js: float = 0.05
    min_psi: float | None = None
    window_rows: int | None = 500
    window_seconds: float | None = None
    min_window_rows: int = 30
    sliding_windows: int = 4
    confirm_windows: int = 1
    reference_rows: int = DEFAULT_CAPTURE_ROWS
    binning: BinningConfig = field(default_factory=BinningConfig)
    # Only used when the reference is captured from traffic (a shipped reference carries its own).
    feature_names: tuple[str, ...] | None = None
    categorical: CategoricalSpec = None
    output_names: tuple[str, ...] | None = None
    output_categorical: CategoricalSpec = None
    output_argmax: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if self.correction not in ("bh", "bonferroni"):
            raise ValueError("correction must be 'bh' or 'bonferroni'")
        if self.window_rows is None and self.window_seconds is None:
            raise ValueError("set window_rows and/or window_seconds")
        if self.min_window_rows < 1:
            raise ValueError("min_window_rows must be >= 1")
        if self.window_rows is not None and self.window_rows < self.min_window_rows:
            raise ValueError("window_rows must be >= min_window_rows")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        if self.confirm_windows < 1:
            raise ValueError("confirm_windows must be >= 1")
        if self.sliding_windows < 0:
            raise ValueError("sliding_windows must be >= 0")
        if self.reference_rows < 1:
            raise ValueError("reference_rows must be >= 1")
        if not 0.0 <= self.min_js <= 1.0:
            raise ValueError("min_js must be in [0, 1]")


@dataclass
class _Window:
    features: HistogramSet
    outputs: HistogramSet | None
    rows: int
    start: float
    end: float


@dataclass
class _Snapshot:
    window: _Window
    index: int
    evaluation: WindowEvaluation
    feature_status: list[str]
    output_status: list[str]
    status: str


DEFAULT_CONFIG = DriftConfig()


def _worst(statuses: list[str]) -> str:
    tested = [s for s in statuses if s != "collecting"]
    if not tested:
        return "collecting"
    return max(tested, key=SEVERITY.__getitem__)


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
        self._current: _Window | None = None
        self._ring: deque[_Window] = deque(maxlen=max(config.sliding_windows, 1))
        self._streaks: dict[tuple[str, str], int] = {}
        self._last: _Snapshot | None = None
        self._sliding_cache: tuple[int, _Snapshot] | None = None
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

    def _new_window(self) -> _Window:
        assert self._reference is not None
        outputs = self._reference.outputs.empty_like() if self._reference.outputs is not None else None
        now = self._clock()
        return _Window(self._reference.features.empty_like(), outputs, 0, now, now)

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
        cfg = self.config
        has_outputs = window.outputs is not None and window.outputs.rows > 0
        evaluation = evaluate_window(
            reference.features,
            window.features,
            reference.outputs if has_outputs else None,
            window.outputs if has_outputs else None,
            alpha=cfg.alpha,
            correction=cfg.correction,
            min_js=cfg.min_js,
            min_psi=cfg.min_psi,
        )
        self._windows_completed += 1
        feature_status = [self._column_status("f", c, cfg.confirm_windows) for c in evaluation.features]
        output_status = [self._column_status("o", c, cfg.confirm_windows) for c in evaluation.outputs]
        if reference.outputs is not None and not has_outputs:
            output_status = ["collecting"] * len(reference.outputs.names)
        self._last = _Snapshot(
            window,
            self._windows_completed,
            evaluation,
            feature_status,
            output_status,
            _worst(feature_status + output_status),
        )
        self._ring.append(window)
        self._sliding_cache = None

    def _column_status(self, group: str, column: ColumnResult, confirm: int) -> str:
        key = (group, column.name)
        if not column.tested:
            self._streaks[key] = 0
            return "collecting"
        streak = self._streaks.get(key, 0) + 1 if column.alarm else 0
        self._streaks[key] = streak
        return _status_of(column, streak, confirm)

    # -- multi-process merging ---------------------------------------------------------------------

    def current_histograms(self) -> dict[str, Any]:
        """Counts of the window being filled: ``{"rows", "features": [hist], "outputs": [hist]}``."""
        with self._lock:
            window = self._current
            if window is None:
                return {"rows": 0, "features": [], "outputs": [], "reference_ready": False}
            return {
                "rows": window.rows,
                "features": _hist_list(window.features),
                "outputs": _hist_list(window.outputs) if window.outputs is not None else [],
                "reference_ready": True,
            }

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
            out["features"] = self._columns_report(
                reference.features,
                snapshot.window.features if snapshot else None,
                snapshot.evaluation.features if snapshot else None,
                snapshot.feature_status if snapshot else None,
                histograms,
            )
            if reference.outputs is not None:
                out["outputs"] = self._columns_report(
                    reference.outputs,
                    snapshot.window.outputs if snapshot else None,
                    snapshot.evaluation.outputs if snapshot and snapshot.evaluation.outputs else None,
                    snapshot.output_status if snapshot else None,
                    histograms,
                )
            return out

    def _columns_report(
        self,
        ref: HistogramSet,
        cur: HistogramSet | None,
        results: list[ColumnResult] | None,
        statuses: list[str] | None,
        histograms: bool,
    ) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for j, name in enumerate(ref.names):
            if results is not None and statuses is not None:
                entry = result_dict(results[j])
                entry["status"] = statuses[j]
            else:
                entry = {
                    "name": name,
                    "kind": ref.binning.specs[j].kind,
                    "test": "none",
                    "rows": 0,
                    "score": None,
                    "statistic": None,
                    "p_value": None,
                    "p_adjusted": None,
                    "psi": None,
                    "js": None,
                    "status": "collecting" if statuses is None else statuses[j],
                }
            if histograms:
                entry["reference"] = ref.histogram_dict(j)
                entry["current"] = cur.histogram_dict(j) if cur is not None else None
            entries.append(entry)
        return entries

    def _sliding(self) -> _Snapshot | None:
        if not self._ring or self._reference is None or self.config.sliding_windows < 1:
            return None
        if self._sliding_cache is not None and self._sliding_cache[0] == self._windows_completed:
            return self._sliding_cache[1]
        windows = list(self._ring)
        features = windows[0].features.copy()
        with_outputs = [w.outputs for w in windows if w.outputs is not None and w.outputs.rows > 0]
        outputs = with_outputs[0].copy() if with_outputs else None
        for w in windows[1:]:
            features.merge(w.features)
        for o in with_outputs[1:]:
            assert outputs is not None
            outputs.merge(o)
        merged = _Window(features, outputs, sum(w.rows for w in windows), windows[0].start, windows[-1].end)
        cfg = self.config
        reference = self._reference
        evaluation = evaluate_window(
            reference.features,
            features,
            reference.outputs if outputs is not None else None,
            outputs,
            alpha=cfg.alpha,
            correction=cfg.correction,
            min_js=cfg.min_js,
            min_psi=cfg.min_psi,
        )
        feature_status = [_status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.features]
        output_status = [_status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.outputs]
        if reference.outputs is not None and outputs is None:
            output_status = ["collecting"] * len(reference.outputs.names)
        snapshot = _Snapshot(
            merged,
            self._windows_completed,
            evaluation,
            feature_status,
            output_status,
            _worst(feature_status + output_status),
        )
        self._sliding_cache = (self._windows_completed, snapshot)
        return snapshot


def _status_of(column: ColumnResult, streak: int, confirm: int) -> str:
    if not column.tested:
        return "collecting"
    if column.alarm:
        return "drift" if streak >= confirm else "warning"
    if column.significant:
        return "warning"
    return "ok"


def _hist_list(hist: HistogramSet) -> list[dict[str, Any]]:
    return [hist.histogram_dict(j) for j in range(hist.binning.n_columns)]


__all__ = ["SEVERITY", "Clock", "DriftConfig", "DriftDetector", "Status"]
