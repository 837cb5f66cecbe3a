"""Columns of drift histograms: how one column is binned, and how its cell values are read.

A :class:`ColumnSpec` describes the bins of one column (feature or model output); it is derived once
from reference data (:mod:`drift.edges`) and never changes.

Bin layout of one column (the ``counts`` list of a histogram dict follows it):

* numeric, with ``edges = [e0, e1, ..., eR]`` (``R >= 1`` regular bins)::

      [underflow (x < e0), [e0, e1), ..., [e(R-2), e(R-1)), [e(R-1), eR], overflow (x > eR), NaN]

  i.e. ``R + 3`` bins. ``-inf`` falls in underflow, ``+inf`` in overflow. The last regular bin is closed
  so that the reference maximum belongs to it.
* categorical, with ``categories = [c0, ..., c(K-1)]``::

      [c0, ..., c(K-1), other, missing]

  ``other`` holds every value that is not one of the known categories: categories never seen in the
  reference *and* the rare tail cut off by ``max_categories``. ``missing`` holds ``None`` and NaN.

Category values are compared through a canonical string key (:func:`category_key`): bytes are decoded
as UTF-8, integral numbers become ``"3"`` whatever their dtype (``3``, ``3.0``, ``np.int8(3)``), booleans
become ``"0"``/``"1"``.

Numeric values go through :func:`to_float` (unparseable values become NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

ColumnKind = Literal["numeric", "categorical"]
NUMERIC: ColumnKind = "numeric"
CATEGORICAL: ColumnKind = "categorical"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class SchemaMismatch(ValueError):
    """Two histograms (or a histogram and a batch) do not share the same columns and bins."""


def category_key(value: object) -> str | None:
    """Canonical string key of one categorical value; ``None`` means *missing*."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
        if number.is_integer():
            return str(int(number))
        return repr(number)
    return str(value)


@dataclass(frozen=True, eq=False)
class ColumnSpec:
    """How one column is binned. ``edges`` is used for numeric columns, ``categories`` for categorical."""

    name: str
    kind: ColumnKind
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == NUMERIC:
            if len(self.edges) < 2:
                raise ValueError(f"numeric column {self.name!r} needs at least 2 edges")
            if self.categories:
                raise ValueError(f"numeric column {self.name!r} cannot have categories")
            values = np.asarray(self.edges, dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"numeric column {self.name!r} has non-finite edges")
            if np.any(np.diff(values) < 0):
                raise ValueError(f"numeric column {self.name!r} has decreasing edges")
        elif self.kind == CATEGORICAL:
            if self.edges:
                raise ValueError(f"categorical column {self.name!r} cannot have edges")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"categorical column {self.name!r} has duplicate categories")
        else:
            raise ValueError(f"unknown column kind {self.kind!r}")

    @property
    def n_bins(self) -> int:
        """Total number of bins, special bins included."""
        if self.kind == NUMERIC:
            return len(self.edges) + 2
        return len(self.categories) + 2

    @property
    def missing_bin(self) -> int:
        """Local index of the NaN / missing bin (always the last one)."""
        return self.n_bins - 1

    def bin_labels(self) -> list[str]:
        """Human-readable label of every bin, in counts order."""
        if self.kind == CATEGORICAL:
            return [*self.categories, "<other>", "<missing>"]
        edges = self.edges
        labels = [f"<{edges[0]:.6g}"]
        for i in range(len(edges) - 1):
            closing = "]" if i == len(edges) - 2 else ")"
            labels.append(f"[{edges[i]:.6g}, {edges[i + 1]:.6g}{closing}")
        labels += [f">{edges[-1]:.6g}", "NaN"]
        return labels

    def same_bins(self, other: ColumnSpec) -> bool:
        return (
            self.name == other.name
            and self.kind == other.kind
            and self.edges == other.edges
            and self.categories == other.categories
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == NUMERIC:
            out["edges"] = [float(e) for e in self.edges]
        else:
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnSpec:
        kind = data["kind"]
        if kind == NUMERIC:
            return cls(str(data["name"]), NUMERIC, edges=tuple(float(e) for e in data["edges"]))
        if kind == CATEGORICAL:
            return cls(str(data["name"]), CATEGORICAL, categories=tuple(str(c) for c in data["categories"]))
        raise ValueError(f"unknown column kind {kind!r}")


def to_float(values: npt.NDArray[Any]) -> FloatArray:
    """Convert a column block to float64; values that cannot be parsed become NaN."""
    if values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        flat = [_parse_float(v) for v in values.ravel().tolist()]
        return np.asarray(flat, dtype=np.float64).reshape(values.shape)


def _parse_float(value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
