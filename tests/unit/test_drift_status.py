"""Drift statuses, alarm streaks and window merging as pure functions (no detector, no lock, no clock)."""

from __future__ import annotations

import numpy as np

from turnout.drift.columns import NUMERIC, ColumnSpec
from turnout.drift.evaluation import ColumnResult
from turnout.drift.histogram import HistogramSet
from turnout.drift.status import Streaks, status_of, worst
from turnout.drift.windows import Window, merge_windows


def _result(p_value: float | None, significant: bool = False, large_effect: bool = False) -> ColumnResult:
    return ColumnResult(
        "x", NUMERIC, "ks", 100, p_value=p_value, significant=significant, large_effect=large_effect
    )


UNTESTED = _result(None)
QUIET = _result(0.5)
SMALL = _result(0.001, significant=True)
ALARM = _result(0.001, significant=True, large_effect=True)


def test_status_of_one_column() -> None:
    assert status_of(UNTESTED, 0, 1) == "collecting"
    assert status_of(QUIET, 0, 1) == "ok"
    assert status_of(SMALL, 0, 1) == "warning"
    assert status_of(ALARM, 1, 1) == "drift"
    assert status_of(ALARM, 1, 2) == "warning"
    assert status_of(ALARM, 2, 2) == "drift"


def test_worst_ignores_collecting() -> None:
    assert worst([]) == "collecting"
    assert worst(["collecting", "collecting"]) == "collecting"
    assert worst(["collecting", "ok"]) == "ok"
    assert worst(["ok", "drift", "warning"]) == "drift"


def test_streaks_need_consecutive_alarms_per_column() -> None:
    streaks = Streaks()
    assert streaks.status("f", ALARM, 2) == "warning"
    assert streaks.status("o", ALARM, 2) == "warning"  # outputs count apart from features
    assert streaks.status("f", ALARM, 2) == "drift"
    assert streaks.status("f", QUIET, 2) == "ok"  # a quiet window breaks the streak
    assert streaks.status("f", ALARM, 2) == "warning"
    assert streaks.status("f", UNTESTED, 2) == "collecting"  # so does an untested one
    assert streaks.status("f", ALARM, 2) == "warning"
    streaks.clear()
    assert streaks.status("o", ALARM, 2) == "warning"


def test_merged_windows_add_counts_and_span_time() -> None:
    spec = ColumnSpec("x", NUMERIC, edges=(0.0, 1.0, 2.0))
    windows = []
    for start, values, with_outputs in ((0.0, [0.5, 1.5], True), (10.0, [1.5], False), (20.0, [3.0], True)):
        features = HistogramSet.from_specs([spec])
        features.update(np.asarray(values).reshape(-1, 1))
        outputs = features.copy() if with_outputs else None
        windows.append(Window(features, outputs, len(values), start, start + 5.0))
    merged = merge_windows(windows)
    assert (merged.rows, merged.start, merged.end) == (4, 0.0, 25.0)
    assert merged.features.column_counts(0).tolist() == [0, 1, 2, 1, 0]
    assert merged.outputs is not None and merged.outputs.rows == 3
    assert windows[0].features.rows == 2  # the merge copies, the windows are untouched
