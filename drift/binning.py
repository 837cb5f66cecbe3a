"""The compiled bin layout of a list of columns: rows in, global bin indices and counts out.

A :class:`Binning` is the frozen description of how rows map to bins, one
:class:`~drift.columns.ColumnSpec` per column. Histograms built with the same binning - in one process
or in many - can be added exactly. Memory is constant per column: the edges (or the category
dictionary).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift.columns import (
    CATEGORICAL,
    NUMERIC,
    ColumnSpec,
    FloatArray,
    IntArray,
    SchemaMismatch,
    category_key,
    to_float,
)


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
