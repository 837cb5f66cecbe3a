"""Windows of served rows and their judged snapshots.

A :class:`Window` holds the histograms of the rows of one tumbling window (or of several merged
ones, for the sliding view); a :class:`Snapshot` is a closed window with its test results and the
statuses they gave. The functions here are pure: no lock, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from turnout.drift.config import DriftConfig
from turnout.drift.evaluation import WindowEvaluation, evaluate_window
from turnout.drift.histogram import HistogramSet
from turnout.drift.reference import Reference
from turnout.drift.status import worst


@dataclass
class Window:
    features: HistogramSet
    outputs: HistogramSet | None
    rows: int
    start: float
    end: float

    @property
    def has_outputs(self) -> bool:
        return self.outputs is not None and self.outputs.rows > 0


@dataclass
class Snapshot:
    window: Window
    index: int
    evaluation: WindowEvaluation
    feature_status: list[str]
    output_status: list[str]
    status: str


def merge_windows(windows: Sequence[Window]) -> Window:
    """One window holding the rows of all ``windows`` (in time order; at least one)."""
    features = windows[0].features.copy()
    with_outputs = [w.outputs for w in windows if w.outputs is not None and w.outputs.rows > 0]
    outputs = with_outputs[0].copy() if with_outputs else None
    for w in windows[1:]:
        features.merge(w.features)
    for o in with_outputs[1:]:
        assert outputs is not None
        outputs.merge(o)
    return Window(features, outputs, sum(w.rows for w in windows), windows[0].start, windows[-1].end)


def evaluate(reference: Reference, window: Window, config: DriftConfig) -> WindowEvaluation:
    """Test ``window`` against ``reference`` (its outputs only when it has output rows)."""
    outputs = window.outputs if window.has_outputs else None
    return evaluate_window(
        reference.features,
        window.features,
        reference.outputs if outputs is not None else None,
        outputs,
        alpha=config.alpha,
        correction=config.correction,
        min_js=config.min_js,
        min_psi=config.min_psi,
    )


def snapshot(
    reference: Reference,
    window: Window,
    index: int,
    evaluation: WindowEvaluation,
    feature_status: list[str],
    output_status: list[str],
) -> Snapshot:
    """The judged window; outputs that saw no rows are ``collecting``."""
    if reference.outputs is not None and not window.has_outputs:
        output_status = ["collecting"] * len(reference.outputs.names)
    return Snapshot(
        window, index, evaluation, feature_status, output_status, worst(feature_status + output_status)
    )
