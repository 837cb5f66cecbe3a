"""Drift statuses of columns and models, decided from one window's test results.

* ``collecting`` - no reference yet (still capturing), or no window closed yet;
* ``ok`` - the last window is not significant after correction;
* ``warning`` - significant but the effect is below the floor (``min_js`` / ``min_psi``), or
  significant and large but not yet for ``confirm_windows`` windows in a row;
* ``drift`` - significant, above the effect floor, for ``confirm_windows`` consecutive windows.

A model takes the worst status of its columns.
"""

from __future__ import annotations

from typing import Literal

from turnout.drift.evaluation import ColumnResult

Status = Literal["collecting", "ok", "warning", "drift"]
SEVERITY: dict[str, int] = {"collecting": 0, "ok": 1, "warning": 2, "drift": 3}


def worst(statuses: list[str]) -> str:
    """The worst tested status (``collecting`` when none was tested)."""
    tested = [s for s in statuses if s != "collecting"]
    if not tested:
        return "collecting"
    return max(tested, key=SEVERITY.__getitem__)


def status_of(column: ColumnResult, streak: int, confirm: int) -> str:
    """A column's status after ``streak`` consecutive alarming windows (``confirm`` make a drift)."""
    if not column.tested:
        return "collecting"
    if column.alarm:
        return "drift" if streak >= confirm else "warning"
    if column.significant:
        return "warning"
    return "ok"


class Streaks:
    """Consecutive alarming windows of every column, by group (``"f"`` features, ``"o"`` outputs)."""

    def __init__(self) -> None:
        self._streaks: dict[tuple[str, str], int] = {}

    def clear(self) -> None:
        self._streaks.clear()

    def status(self, group: str, column: ColumnResult, confirm: int) -> str:
        """Count ``column``'s latest window into its streak and return its status."""
        key = (group, column.name)
        if not column.tested:
            self._streaks[key] = 0
            return "collecting"
        streak = self._streaks.get(key, 0) + 1 if column.alarm else 0
        self._streaks[key] = streak
        return status_of(column, streak, confirm)
