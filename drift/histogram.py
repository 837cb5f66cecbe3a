"""Fixed-edge histograms: the only state the drift detector keeps about data.

A :class:`HistogramSet` holds one ``int64`` count per bin of every column of a
:class:`~drift.binning.Binning` (bin layout: :mod:`drift.columns`), so histograms of the same binning
add up exactly, whichever process or time span they counted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift._io import atomic_save_npz, load_npz
from turnout.drift.binning import Binning
from turnout.drift.columns import ColumnSpec, IntArray, SchemaMismatch


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
        """JSON-able histogram of column ``j``: its bins plus integer counts (bin layout: :mod:`drift.columns`)."""
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
