"""Bins derived from reference data: numeric edges, known categories, one spec per column.

See :class:`BinningConfig` for the rules. The result is a list of :class:`~drift.columns.ColumnSpec`
that a :class:`~drift.binning.Binning` compiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift.columns import CATEGORICAL, NUMERIC, ColumnSpec, category_key, to_float


@dataclass(frozen=True)
class BinningConfig:
    """How reference data is turned into bins.

    * numeric columns with at most ``max_bins`` distinct finite values get one bin per value (edges at
      the midpoints), so small integer codes, booleans and pixels are binned exactly;
    * other numeric columns get ``B = clip(n_finite // min_rows_per_bin, 2, max_bins)`` quantile bins
      (duplicate quantiles collapse, so point masses never create empty bins); the outer edges are the
      reference minimum and maximum;
    * categorical columns keep their ``max_categories`` most frequent values; the rest is ``other``.
    """

    max_bins: int = 20
    min_rows_per_bin: int = 10
    max_categories: int = 64

    def __post_init__(self) -> None:
        if self.max_bins < 2:
            raise ValueError("max_bins must be >= 2")
        if self.min_rows_per_bin < 1:
            raise ValueError("min_rows_per_bin must be >= 1")
        if self.max_categories < 1:
            raise ValueError("max_categories must be >= 1")


DEFAULT_BINNING = BinningConfig()


def numeric_edges(values: npt.ArrayLike, config: BinningConfig = DEFAULT_BINNING) -> tuple[float, ...]:
    """Edges of a numeric column from its reference values (NaN and +-inf are ignored)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (0.0, 0.0)
    distinct = np.unique(x)
    if distinct.size == 1:
        v = float(distinct[0])
        return (v, v)
    if distinct.size <= config.max_bins:
        mids = (distinct[:-1] + distinct[1:]) / 2.0
        edges = np.concatenate(([distinct[0]], mids, [distinct[-1]]))
    else:
        n_bins = int(min(max(x.size // config.min_rows_per_bin, 2), config.max_bins))
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)))
        # Quantiles are computed in floating point; pin the outer edges to the observed extremes.
        edges[0] = distinct[0]
        edges[-1] = distinct[-1]
        edges = np.unique(edges)
    return tuple(float(e) for e in edges)


def category_counts(column: npt.NDArray[Any]) -> dict[str, int]:
    """Count of every canonical category key in a column (missing values are not counted)."""
    counts: dict[str, int] = {}
    kind = column.dtype.kind
    if kind in "fiubUS":
        present = column[~np.isnan(column)] if kind == "f" else column
        uniq, freq = np.unique(present, return_counts=True)
        pairs: Iterable[tuple[object, int]] = zip(uniq.tolist(), freq.tolist(), strict=True)
    else:
        pairs = ((value, 1) for value in column.tolist())
    for value, n in pairs:
        key = category_key(value)
        if key is not None:
            counts[key] = counts.get(key, 0) + int(n)
    return counts


def category_list(column: npt.NDArray[Any], config: BinningConfig = DEFAULT_BINNING) -> tuple[str, ...]:
    """Known categories of a categorical column: the ``max_categories`` most frequent keys.

    Ties are broken by key so the result does not depend on row order.
    """
    ranked = sorted(category_counts(np.asarray(column)).items(), key=lambda item: (-item[1], item[0]))
    return tuple(key for key, _ in ranked[: config.max_categories])


def specs_from_data(
    X: npt.NDArray[Any],
    names: Sequence[str],
    categorical: Sequence[bool],
    config: BinningConfig = DEFAULT_BINNING,
) -> list[ColumnSpec]:
    """One :class:`ColumnSpec` per column of ``X`` (``[rows, columns]``)."""
    if X.ndim != 2 or X.shape[1] != len(names) or len(names) != len(categorical):
        raise ValueError("X must be [rows, columns] with one name and one categorical flag per column")
    specs: list[ColumnSpec] = []
    for j, (name, is_cat) in enumerate(zip(names, categorical, strict=True)):
        column = X[:, j]
        if is_cat:
            specs.append(ColumnSpec(name, CATEGORICAL, categories=category_list(column, config)))
        else:
            specs.append(ColumnSpec(name, NUMERIC, edges=numeric_edges(to_float(column), config)))
    return specs
