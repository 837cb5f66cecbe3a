"""Live model performance from ground-truth feedback, and a label-free estimate of it.

Pure functions and a small accumulator, no I/O: :mod:`server.observe.feedback` feeds them.
Classification is judged per row (the predicted class equals the label); regression by the
absolute error of each row. The label-free estimate of a classifier's accuracy is the mean of
its top-class probability over the rows it predicted (a calibrated classifier is right that
often), optionally corrected by histogram binning on the rows that did receive labels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def top_probability(scores: npt.ArrayLike) -> FloatArray:
    """Each row's largest class probability. Rows that are not already probabilities
    (a negative entry, or a sum off 1 by more than 1e-3) are taken as logits and softmaxed."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    x = x.reshape(x.shape[0], -1)
    if x.size == 0:
        return np.zeros(x.shape[0])
    sums = x.sum(axis=1)
    is_prob = (x.min(axis=1) >= 0) & (np.abs(sums - 1.0) <= 1e-3)
    if bool(is_prob.all()):
        return np.asarray(x.max(axis=1), dtype=np.float64)
    z = x - x.max(axis=1, keepdims=True)
    soft = np.exp(z)
    soft /= soft.sum(axis=1, keepdims=True)
    out = np.where(is_prob, x.max(axis=1), soft.max(axis=1))
    return np.asarray(out, dtype=np.float64)


def same_label(predicted: Any, label: Any) -> bool:
    """Whether a predicted class equals a label: as numbers when both are numbers, else as text
    (bytes decoded), so a label output of INT64 matches ``2`` and ``"2"``."""
    if isinstance(predicted, np.generic):
        predicted = predicted.item()
    if isinstance(predicted, bytes):
        predicted = predicted.decode("utf-8", "replace")
    num_types = (int, float)
    if isinstance(predicted, num_types) and not isinstance(predicted, bool):
        if isinstance(label, num_types) and not isinstance(label, bool):
            return float(predicted) == float(label)
    return str(predicted) == str(label)


def expected_accuracy(confidences: Sequence[float] | FloatArray) -> float | None:
    """The label-free estimate: mean top-class probability (None without rows)."""
    c = np.asarray(confidences, dtype=np.float64)
    return float(c.mean()) if c.size else None


def binned_estimate(
    labelled_confidence: Sequence[float] | FloatArray,
    labelled_correct: Sequence[bool] | npt.NDArray[np.bool_],
    confidences: Sequence[float] | FloatArray,
    bins: int = 10,
    min_per_bin: int = 20,
) -> float | None:
    """The estimate calibrated by histogram binning: each row of ``confidences`` counts the
    accuracy observed on labelled rows of the same confidence bin (equal-width bins on [0, 1]),
    or its own confidence where that bin holds fewer than ``min_per_bin`` labelled rows."""
    c = np.asarray(confidences, dtype=np.float64)
    if c.size == 0:
        return None
    lc = np.asarray(labelled_confidence, dtype=np.float64)
    ok = np.asarray(labelled_correct, dtype=np.float64)
    if lc.shape != ok.shape:
        raise ValueError("labelled_confidence and labelled_correct differ in length")

    def bin_of(v: FloatArray) -> npt.NDArray[np.intp]:
        return np.clip((v * bins).astype(np.intp), 0, bins - 1)

    counts = np.bincount(bin_of(lc), minlength=bins) if lc.size else np.zeros(bins)
    hits = np.bincount(bin_of(lc), weights=ok, minlength=bins) if lc.size else np.zeros(bins)
    rate = np.divide(hits, counts, out=np.zeros(bins), where=counts > 0)
    b = bin_of(c)
    trusted = counts[b] >= min_per_bin
    return float(np.where(trusted, rate[b], c).mean())


def regression_summary(abs_errors: FloatArray, sq_errors: FloatArray) -> dict[str, float | None]:
    n = abs_errors.size
    if n == 0:
        return {"mae": None, "rmse": None}
    return {"mae": float(abs_errors.mean()), "rmse": math.sqrt(float(sq_errors.mean()))}


class PerformanceTally:
    """One version's judged rows: cumulative sums and the last ``window`` rows.

    For a classifier each row is (correct, confidence or NaN); for a regressor (abs error).
    ``add_*`` is O(rows); reading the window is O(window)."""

    def __init__(self, window: int, task: str) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task {task!r}")
        self.task = task
        self.window = window
        self.labelled = 0
        self.correct = 0
        self.abs_error = 0.0
        self.sq_error = 0.0
        self.confidence_sum = 0.0
        self.confidence_rows = 0
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # (correct | |error|, confidence)

    def add_classified(self, correct: Sequence[bool], confidence: Sequence[float] | None = None) -> None:
        conf = list(confidence) if confidence is not None else [math.nan] * len(correct)
        for ok, c in zip(correct, conf, strict=True):
            self.labelled += 1
            self.correct += int(ok)
            if not math.isnan(c):
                self.confidence_sum += c
                self.confidence_rows += 1
            self._recent.append((1.0 if ok else 0.0, c))

    def add_regressed(self, errors: Sequence[float]) -> None:
        for e in errors:
            a = abs(float(e))
            self.labelled += 1
            self.abs_error += a
            self.sq_error += a * a
            self._recent.append((a, math.nan))

    @property
    def accuracy(self) -> float | None:
        if self.task != "classification" or not self.labelled:
            return None
        return self.correct / self.labelled

    def recent(self) -> tuple[FloatArray, FloatArray]:
        """The window's (outcome, confidence) columns."""
        if not self._recent:
            return np.zeros(0), np.zeros(0)
        arr = np.asarray(self._recent, dtype=np.float64)
        return arr[:, 0], arr[:, 1]

    def to_json(self) -> dict[str, Any]:
        values, _ = self.recent()
        out: dict[str, Any] = {"task": self.task, "labelled": self.labelled}
        window: dict[str, Any] = {"rows": int(values.size), "size": self.window}
        if self.task == "classification":
            out["accuracy"] = self.accuracy
            out["correct"] = self.correct
            window["accuracy"] = float(values.mean()) if values.size else None
            out["labelled_mean_confidence"] = (
                self.confidence_sum / self.confidence_rows if self.confidence_rows else None
            )
        else:
            n = self.labelled
            out["mae"] = self.abs_error / n if n else None
            out["rmse"] = math.sqrt(self.sq_error / n) if n else None
            window.update(regression_summary(values, values * values))
        out["window"] = window
        return out
