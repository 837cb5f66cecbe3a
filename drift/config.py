"""The knobs of a drift detector (their statistical meaning: :mod:`drift.detector`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from turnout.drift.capture import DEFAULT_CAPTURE_ROWS
from turnout.drift.edges import BinningConfig
from turnout.drift.layout import CategoricalSpec
from turnout.drift.stats import Correction


@dataclass(frozen=True)
class DriftConfig:
    """Knobs of a :class:`DriftDetector` (see :mod:`drift.detector` for their statistical meaning)."""

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
    # A tensor wider than this is monitored on every k-th column (drift.layout.column_step),
    # on the request path and in a shipped reference alike: an image's 262,144 pixels would
    # otherwise cost more than serving it (benchmarks/results/CURVES.md).
    max_features: int | None = 256

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


DEFAULT_CONFIG = DriftConfig()
