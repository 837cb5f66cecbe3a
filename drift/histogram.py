"""Fixed-edge histograms: the only state the drift detector keeps about data.

A :class:`Binning` is the frozen description of how rows map to bins, one :class:`ColumnSpec` per
column (feature or model output). It is derived once from reference data and never changes, so
histograms built with the same binning - in one process or in many - can be added exactly: counts are
``int64``.

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

Memory is constant per column: the edges (or the category dictionary) and one ``int64`` per bin.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from drift._io import atomic_save_npz, load_npz

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


# --------------------------------------------------------------------------------------------------
# Building specs from reference data
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Binning: compiled, immutable, shared by every histogram of the same schema
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _CategoricalLookup:
    position: int  # column index in the binning
    offset: int  # global index of the column's first bin
    table: dict[str, int] = field(repr=False)
    n_known: int


class Binning:
    """The compiled bin layout of a list of columns.

    Counts of all columns live in one flat ``int64`` vector; column ``j`` owns
    ``counts[offsets[j]:offsets[j + 1]]``. Numeric columns are binned for the whole batch at once
    (one broadcast comparison against a padded edge matrix, no Python loop over columns); categorical
    columns go through ``np.unique`` so that Python only touches distinct values.
    """

    def __init__(self, specs: Sequence[ColumnSpec]) -> None:
        if not specs:
            raise ValueError("a binning needs at least one column")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("column names must be unique")
        self.specs: tuple[ColumnSpec, ...] = tuple(specs)
        sizes = np.asarray([s.n_bins for s in self.specs], dtype=np.int64)
        self.offsets: IntArray = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.total_bins = int(self.offsets[-1])
        numeric = [j for j, s in enumerate(self.specs) if s.kind == NUMERIC]
        self.numeric_columns: IntArray = np.asarray(numeric, dtype=np.int64)
        n_edges = np.asarray([len(self.specs[j].edges) for j in numeric], dtype=np.int64)
        width = int(n_edges.max()) if numeric else 0
        padded = np.full((len(numeric), width), np.inf, dtype=np.float64)
        for row, j in enumerate(numeric):
            padded[row, : n_edges[row]] = self.specs[j].edges
        self._edges: FloatArray = padded
        self._n_edges: IntArray = n_edges
        self._edge_rows: tuple[FloatArray, ...] = tuple(
            padded[row, : n_edges[row]] for row in range(len(numeric))
        )
        self._last_edge: FloatArray = (
            padded[np.arange(len(numeric)), n_edges - 1] if numeric else np.empty(0, dtype=np.float64)
        )
        self._categorical: tuple[_CategoricalLookup, ...] = tuple(
            _CategoricalLookup(
                position=j,
                offset=int(self.offsets[j]),
                table={c: i for i, c in enumerate(s.categories)},
                n_known=len(s.categories),
            )
            for j, s in enumerate(self.specs)
            if s.kind == CATEGORICAL
        )
        self._fingerprint = tuple((s.name, s.kind, s.edges, s.categories) for s in self.specs)

    # -- schema ------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def n_columns(self) -> int:
        return len(self.specs)

    def same_as(self, other: Binning) -> bool:
        return self is other or self._fingerprint == other._fingerprint

    def column_slice(self, j: int) -> slice:
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def numeric_gather(self) -> tuple[IntArray, IntArray]:
        """Index arrays to pull numeric columns out of a flat counts vector as one padded matrix.

        Returns ``(ordered, missing)``: ``counts_ext[ordered]`` is ``[n_numeric, width]`` with each row
        holding ``[underflow, regular..., overflow]`` in value order then zero padding, where
        ``counts_ext`` is the counts vector with one trailing 0 appended (the padding index is
        ``total_bins``); ``counts[missing]`` is each column's NaN count.
        """
        n_num = self.numeric_columns.size
        width = int(self._n_edges.max()) + 1 if n_num else 0
        numeric_offsets = self.offsets[self.numeric_columns]
        steps = np.arange(width, dtype=np.int64)[None, :]
        inside = steps < (self._n_edges + 1)[:, None]
        ordered = np.where(inside, numeric_offsets[:, None] + steps, self.total_bins).astype(np.int64)
        missing = numeric_offsets + self._n_edges + 1
        return ordered, missing.astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the binning state (edges, offsets and category dictionaries)."""
        size = self._edges.nbytes + self._n_edges.nbytes + self.offsets.nbytes + self.numeric_columns.nbytes
        for lookup in self._categorical:
            size += sys.getsizeof(lookup.table) + sum(sys.getsizeof(k) for k in lookup.table)
        return int(size)

    # -- binning -----------------------------------------------------------------------------------

    def check_batch(self, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Validate and normalise a batch to ``[rows, n_columns]``."""
        batch = np.asarray(X)
        if batch.ndim == 1 and self.n_columns == 1:
            batch = batch.reshape(-1, 1)
        if batch.ndim != 2:
            raise SchemaMismatch(f"expected a [rows, {self.n_columns}] array, got shape {batch.shape}")
        if batch.shape[1] != self.n_columns:
            raise SchemaMismatch(f"expected {self.n_columns} columns, got {batch.shape[1]}")
        return batch

    def bin_index(self, X: npt.NDArray[Any]) -> IntArray:
        """Global bin index (into the flat counts vector) of every cell: ``[rows, n_columns]`` int64."""
        batch = self.check_batch(X)
        rows = batch.shape[0]
        out = np.empty((rows, self.n_columns), dtype=np.int64)
        if self.numeric_columns.size:
            values = to_float(batch[:, self.numeric_columns])
            out[:, self.numeric_columns] = self._numeric_local(values) + self.offsets[self.numeric_columns]
        for lookup in self._categorical:
            out[:, lookup.position] = _categorical_local(batch[:, lookup.position], lookup) + lookup.offset
        return out

    def _numeric_local(self, values: FloatArray) -> IntArray:
        """Local bin of every numeric cell: one binary search per column (``searchsorted``)."""
        rows, n_num = values.shape
        local = np.empty((n_num, rows), dtype=np.int64)
        columns = np.ascontiguousarray(values.T)
        for k, edges in enumerate(self._edge_rows):
            # edges <= x: 0 = underflow, n_edges = overflow (and +inf); NaN sorts past every edge
            local[k] = np.searchsorted(edges, columns[k], side="right")
        local = local.T
        local[values == self._last_edge] -= 1  # the last regular bin is closed on the right
        missing = np.isnan(values)
        if missing.any():
            local[missing] = np.broadcast_to(self._n_edges + 1, values.shape)[missing]
        return local

    def counts(self, X: npt.NDArray[Any]) -> IntArray:
        """Histogram counts of a batch (flat int64 vector of length ``total_bins``)."""
        return self.counts_from_index(self.bin_index(X))

    def counts_from_index(self, index: IntArray) -> IntArray:
        return np.bincount(index.ravel(), minlength=self.total_bins).astype(np.int64, copy=False)

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.specs]

    @classmethod
    def from_dict(cls, data: Sequence[Mapping[str, Any]]) -> Binning:
        return cls([ColumnSpec.from_dict(d) for d in data])

    def to_arrays(self, prefix: str = "") -> dict[str, npt.NDArray[np.generic]]:
        """Numeric arrays (no pickles) describing the binning, for ``.npz`` files."""
        numeric = [s for s in self.specs if s.kind == NUMERIC]
        categorical = [s for s in self.specs if s.kind == CATEGORICAL]
        return {
            f"{prefix}names": np.asarray([s.name for s in self.specs], dtype=np.str_),
            f"{prefix}is_categorical": np.asarray([s.kind == CATEGORICAL for s in self.specs], dtype=bool),
            f"{prefix}n_edges": np.asarray([len(s.edges) for s in numeric], dtype=np.int64),
            f"{prefix}edges": np.asarray([e for s in numeric for e in s.edges], dtype=np.float64),
            f"{prefix}n_categories": np.asarray([len(s.categories) for s in categorical], dtype=np.int64),
            f"{prefix}categories": np.asarray([c for s in categorical for c in s.categories], dtype=np.str_),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str = "") -> Binning:
        names = [str(n) for n in arrays[f"{prefix}names"].tolist()]
        is_cat = [bool(c) for c in arrays[f"{prefix}is_categorical"].tolist()]
        n_edges = iter(int(n) for n in arrays[f"{prefix}n_edges"].tolist())
        n_cats = iter(int(n) for n in arrays[f"{prefix}n_categories"].tolist())
        edges = [float(e) for e in arrays[f"{prefix}edges"].tolist()]
        cats = [str(c) for c in arrays[f"{prefix}categories"].tolist()]
        specs: list[ColumnSpec] = []
        e_pos = c_pos = 0
        for name, cat in zip(names, is_cat, strict=True):
            if cat:
                k = next(n_cats)
                specs.append(ColumnSpec(name, CATEGORICAL, categories=tuple(cats[c_pos : c_pos + k])))
                c_pos += k
            else:
                k = next(n_edges)
                specs.append(ColumnSpec(name, NUMERIC, edges=tuple(edges[e_pos : e_pos + k])))
                e_pos += k
        return cls(specs)


def _categorical_local(column: npt.NDArray[Any], lookup: _CategoricalLookup) -> IntArray:
    other, missing = lookup.n_known, lookup.n_known + 1
    out = np.full(column.shape[0], missing, dtype=np.int64)
    kind = column.dtype.kind
    if kind in "fiubUS":
        present = ~np.isnan(column) if kind == "f" else np.ones(column.shape[0], dtype=bool)
        uniq, inverse = np.unique(column[present], return_inverse=True)
        codes = np.asarray(
            [
                lookup.table.get(key, other) if (key := category_key(u)) is not None else missing
                for u in uniq.tolist()
            ],
            dtype=np.int64,
        )
        out[present] = codes[inverse.ravel()] if codes.size else missing
        return out
    # Object arrays (BYTES tensors, mixed types, None): memoised per distinct value.
    memo: dict[object, int] = {}
    values = column.tolist()
    for i, value in enumerate(values):
        try:
            code = memo[value]
        except (KeyError, TypeError):
            key = category_key(value)
            code = missing if key is None else lookup.table.get(key, other)
            try:
                memo[value] = code
            except TypeError:  # unhashable value: no memo
                pass
        out[i] = code
    return out


# --------------------------------------------------------------------------------------------------
# HistogramSet: counts of every column of one binning
# --------------------------------------------------------------------------------------------------


class HistogramSet:
    """Integer histograms of all columns of a :class:`Binning`, updated batch by batch.

    ``merge`` adds counts exactly, so the histograms of a stream split across processes (or across
    time) add up to the histograms of the whole stream.
    """

    __slots__ = ("binning", "counts")

    def __init__(self, binning: Binning, counts: npt.ArrayLike | None = None) -> None:
        self.binning = binning
        if counts is None:
            self.counts: IntArray = np.zeros(binning.total_bins, dtype=np.int64)
        else:
            array = np.asarray(counts)
            if array.shape != (binning.total_bins,):
                raise SchemaMismatch(f"expected {binning.total_bins} counts, got shape {array.shape}")
            if array.dtype.kind not in "iu" or (array.size and int(array.min()) < 0):
                raise ValueError("counts must be non-negative integers")
            self.counts = array.astype(np.int64, copy=True)

    @classmethod
    def from_specs(cls, specs: Sequence[ColumnSpec]) -> HistogramSet:
        return cls(Binning(specs))

    # -- updates -----------------------------------------------------------------------------------

    def update(self, X: npt.NDArray[Any]) -> None:
        """Add a batch ``[rows, columns]`` (vectorised)."""
        self.counts += self.binning.counts(X)

    def add_index(self, index: IntArray) -> None:
        """Add pre-computed global bin indices (see :meth:`Binning.bin_index`)."""
        if index.size:
            self.counts += self.binning.counts_from_index(index)

    def merge(self, other: HistogramSet) -> None:
        """Add ``other``'s counts into this histogram, in place. Both must share the same bins."""
        if not self.binning.same_as(other.binning):
            raise SchemaMismatch("cannot merge histograms with different bins")
        self.counts += other.counts

    def __add__(self, other: HistogramSet) -> HistogramSet:
        out = self.copy()
        out.merge(other)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistogramSet):
            return NotImplemented
        return self.binning.same_as(other.binning) and bool(np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> HistogramSet:
        return HistogramSet(self.binning, self.counts)

    def empty_like(self) -> HistogramSet:
        return HistogramSet(self.binning)

    def reset(self) -> None:
        self.counts[:] = 0

    # -- views -------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return self.binning.names

    def column_counts(self, j: int) -> IntArray:
        return self.counts[self.binning.column_slice(j)]

    def column_totals(self) -> IntArray:
        """Rows seen by each column (every row lands in exactly one bin of every column)."""
        return np.add.reduceat(self.counts, self.binning.offsets[:-1]).astype(np.int64, copy=False)

    @property
    def rows(self) -> int:
        """Rows seen (taken from the first column; all columns see the same rows)."""
        return int(self.counts[self.binning.column_slice(0)].sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the counts only (the binning is shared and accounted separately)."""
        return int(self.counts.nbytes)

    def histogram_dict(self, j: int) -> dict[str, Any]:
        """JSON-able histogram of column ``j``: its bins plus integer counts (see module docstring)."""
        spec = self.binning.specs[j]
        out = spec.to_dict()
        counts = self.column_counts(j)
        out["counts"] = [int(c) for c in counts.tolist()]
        out["total"] = int(counts.sum())
        return out

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"columns": [{"name", "kind", "edges"|"categories", "counts", "total"}]}``."""
        return {"columns": [self.histogram_dict(j) for j in range(self.binning.n_columns)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], binning: Binning | None = None) -> HistogramSet:
        columns = list(data["columns"])
        parsed = Binning.from_dict(columns)
        if binning is not None:
            if not binning.same_as(parsed):
                raise SchemaMismatch("histogram dict does not match the expected bins")
            parsed = binning
        counts = np.asarray([int(c) for col in columns for c in col["counts"]], dtype=np.int64)
        for j, col in enumerate(columns):
            if len(col["counts"]) != parsed.specs[j].n_bins:
                raise SchemaMismatch(f"column {col['name']!r}: wrong number of counts")
        return cls(parsed, counts)

    def to_arrays(self, prefix: str = "") -> dict[str, npt.NDArray[np.generic]]:
        arrays = self.binning.to_arrays(prefix)
        arrays[f"{prefix}counts"] = self.counts.copy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str = "") -> HistogramSet:
        return cls(Binning.from_arrays(arrays, prefix), arrays[f"{prefix}counts"])

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Atomic write to an ``.npz`` file (no pickles)."""
        atomic_save_npz(path, self.to_arrays())

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> HistogramSet:
        return cls.from_arrays(load_npz(path))
