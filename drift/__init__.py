"""Data and prediction drift detection for served models (numpy / scipy only).

* :mod:`drift.columns` - one column's bins and how its values are read;
* :mod:`drift.edges` - bins derived from reference data (quantile edges, known categories);
* :mod:`drift.binning` - the compiled bin layout of all columns: rows to bin indices;
* :mod:`drift.histogram` - fixed-edge integer histograms (mergeable, JSON / npz serialisable);
* :mod:`drift.layout` - tensors as ``[rows, columns]``, categorical masks, model output layouts;
* :mod:`drift.reference` - per model-version reference (from training rows, a shipped
  ``reference.npz``, or captured from traffic), persisted atomically;
* :mod:`drift.capture` - the first rows served, captured and frozen into a reference;
* :mod:`drift.stats` - binned KS, chi-square, Fisher, JS distance, PSI, BH / Bonferroni;
* :mod:`drift.evaluation` - one window against the reference, one multiple-testing family;
* :mod:`drift.config` - the detector's knobs (:class:`DriftConfig`);
* :mod:`drift.status` - column and model statuses from one window's results, alarm streaks;
* :mod:`drift.windows` - windows of served rows, merging them, judging one against the reference;
* :mod:`drift.report` - per-column entries of a drift report;
* :mod:`drift.detector` - tumbling / sliding windows of one model version, thread-safe;
* :mod:`drift.monitor` - bounded queue + background thread, off the request path;
* :mod:`drift.coalesce` - queued batches of a version joined into fewer ``observe`` calls;
* :mod:`drift.process` - the monitor hosted in a child process, off the server's GIL.
"""

from turnout.drift.binning import Binning
from turnout.drift.capture import ReferenceCapture
from turnout.drift.columns import ColumnSpec, SchemaMismatch, category_key
from turnout.drift.config import DriftConfig
from turnout.drift.detector import DriftDetector
from turnout.drift.edges import BinningConfig
from turnout.drift.evaluation import ColumnResult, WindowEvaluation, evaluate_window
from turnout.drift.histogram import HistogramSet
from turnout.drift.layout import OutputLayout
from turnout.drift.monitor import DriftMonitor
from turnout.drift.reference import Reference
from turnout.drift.status import Status

__all__ = [
    "Binning",
    "BinningConfig",
    "ColumnResult",
    "ColumnSpec",
    "DriftConfig",
    "DriftDetector",
    "DriftMonitor",
    "HistogramSet",
    "OutputLayout",
    "Reference",
    "ReferenceCapture",
    "SchemaMismatch",
    "Status",
    "WindowEvaluation",
    "category_key",
    "evaluate_window",
]
