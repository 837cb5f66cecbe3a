"""Reference distributions: the frozen bins and counts every window is compared against.

A :class:`Reference` is built once per model version, from one of:

* training rows in memory - :meth:`Reference.from_arrays`;
* a ``reference.npz`` shipped next to the model - :meth:`Reference.from_npz`. Arrays: ``X``
  ``[rows, features]`` (numeric, or strings for BYTES features), optional ``feature_names`` (strings),
  ``categorical`` (bool mask), ``outputs`` ``[rows, ...]`` and ``output_names``;
* the first rows served - :class:`ReferenceCapture` (default 10,000 rows), then frozen.

Once built it keeps only the bin edges / category lists and the integer reference counts - never raw
rows - and it is persisted with :meth:`Reference.save` (atomic ``.npz`` write) and restored with
:meth:`Reference.load`, so a restart does not lose a captured reference.

Model outputs are handled like features after :class:`OutputLayout` has expanded them: a float output
with several columns (class probabilities, logits, scores) becomes one numeric column per score plus a
categorical ``<name>.argmax`` column (the predicted class); integer, boolean and string outputs are
categorical; a single float column (regression, binary score) is numeric.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drift._io import atomic_save_npz, load_npz
from drift.binning import Binning
from drift.columns import CATEGORICAL
from drift.edges import DEFAULT_BINNING, BinningConfig, specs_from_data
from drift.histogram import HistogramSet

FORMAT = "turnout-drift-reference/1"
DEFAULT_CAPTURE_ROWS = 10_000

CategoricalSpec = Sequence[bool] | Sequence[str] | None


def as_rows(array: npt.ArrayLike) -> npt.NDArray[Any]:
    """View any tensor as ``[rows, columns]`` (1-D -> one column, N-D -> flattened per row)."""
    a = np.asarray(array)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(-1, 1)
    if a.ndim > 2:
        return a.reshape(a.shape[0], -1)
    return a


def _is_categorical_dtype(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "OUSb"


def resolve_categorical(
    n_columns: int, names: Sequence[str], categorical: CategoricalSpec, dtype: np.dtype[Any]
) -> list[bool]:
    """Categorical mask from a bool mask, a list of categorical column names, or the dtype."""
    if categorical is None:
        return [_is_categorical_dtype(dtype)] * n_columns
    items = list(categorical)
    if items and all(isinstance(c, str) for c in items):
        wanted = {str(c) for c in items}
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"unknown categorical columns: {sorted(unknown)}")
        return [name in wanted for name in names]
    if len(items) != n_columns:
        raise ValueError(f"categorical mask has {len(items)} entries for {n_columns} columns")
    return [bool(c) for c in items]


def default_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}[{i}]" for i in range(n)]


@dataclass(frozen=True)
class OutputLayout:
    """How raw model outputs become drift columns (see module docstring)."""

    n_raw: int
    argmax: bool
    names: tuple[str, ...]
    categorical: tuple[bool, ...]

    @classmethod
    def infer(
        cls,
        outputs: npt.ArrayLike,
        *,
        names: Sequence[str] | None = None,
        categorical: CategoricalSpec = None,
        argmax: bool = True,
        prefix: str = "output",
    ) -> OutputLayout:
        raw = as_rows(outputs)
        k = raw.shape[1]
        raw_names = list(names) if names is not None else default_names(prefix, k)
        if len(raw_names) != k:
            raise ValueError(f"{len(raw_names)} output names for {k} output columns")
        if categorical is None:
            raw_cat = [raw.dtype.kind in "OUSbiu"] * k
        else:
            raw_cat = resolve_categorical(k, raw_names, categorical, raw.dtype)
        use_argmax = bool(argmax and k >= 2 and raw.dtype.kind == "f" and not any(raw_cat))
        if use_argmax:
            return cls(k, True, (*raw_names, f"{prefix}.argmax"), (*(False,) * k, True))
        return cls(k, False, tuple(raw_names), tuple(raw_cat))

    def expand(self, outputs: npt.ArrayLike) -> npt.NDArray[Any]:
        raw = as_rows(outputs)
        if raw.shape[1] != self.n_raw:
            raise ValueError(f"expected {self.n_raw} output columns, got {raw.shape[1]}")
        if not self.argmax:
            return raw
        values = raw.astype(np.float64, copy=False)
        winner = np.argmax(values, axis=1).astype(np.float64) if values.shape[0] else np.zeros(0)
        winner[np.isnan(values).any(axis=1)] = np.nan
        return np.column_stack((values, winner))

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"o_layout": np.asarray([self.n_raw, int(self.argmax)], dtype=np.int64)}


class Reference:
    """Frozen reference histograms of a model version's features and (optionally) outputs."""

    def __init__(
        self,
        features: HistogramSet,
        outputs: HistogramSet | None = None,
        output_layout: OutputLayout | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if (outputs is None) != (output_layout is None):
            raise ValueError("outputs and output_layout go together")
        if outputs is not None and output_layout is not None and outputs.names != list(output_layout.names):
            raise ValueError("output histogram columns do not match the output layout")
        self.features = features
        self.outputs = outputs
        self.output_layout = output_layout
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        X: npt.ArrayLike,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: CategoricalSpec = None,
        outputs: npt.ArrayLike | None = None,
        output_names: Sequence[str] | None = None,
        output_categorical: CategoricalSpec = None,
        output_argmax: bool = True,
        output_prefix: str = "output",
        binning: BinningConfig = DEFAULT_BINNING,
        metadata: Mapping[str, Any] | None = None,
    ) -> Reference:
        """Bin training rows ``X`` (``[rows, features]``) and their model outputs; rows are not kept."""
        data = as_rows(X)
        if data.shape[0] == 0:
            raise ValueError("a reference needs at least one row")
        names = list(feature_names) if feature_names is not None else default_names("x", data.shape[1])
        if len(names) != data.shape[1]:
            raise ValueError(f"{len(names)} feature names for {data.shape[1]} columns")
        mask = resolve_categorical(data.shape[1], names, categorical, data.dtype)
        features = HistogramSet.from_specs(specs_from_data(data, names, mask, binning))
        features.update(data)
        out_hist: HistogramSet | None = None
        layout: OutputLayout | None = None
        if outputs is not None:
            raw = as_rows(outputs)
            if raw.shape[0] != data.shape[0]:
                raise ValueError("outputs and X must have the same number of rows")
            layout = OutputLayout.infer(
                raw,
                names=output_names,
                categorical=output_categorical,
                argmax=output_argmax,
                prefix=output_prefix,
            )
            expanded = layout.expand(raw)
            out_hist = HistogramSet.from_specs(
                specs_from_data(expanded, list(layout.names), list(layout.categorical), binning)
            )
            out_hist.update(expanded)
        meta = {"source": "arrays", "created_at": time.time()}
        meta.update(metadata or {})
        return cls(features, out_hist, layout, meta)

    @classmethod
    def from_npz(
        cls,
        path: str | os.PathLike[str],
        *,
        binning: BinningConfig = DEFAULT_BINNING,
        output_argmax: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> Reference:
        """Build from a shipped training-data file (arrays ``X`` and optional extras, see module doc)."""
        arrays = load_npz(path)
        return cls._from_training_arrays(
            arrays, binning, output_argmax, {"source": str(path), **(metadata or {})}
        )

    @classmethod
    def _from_training_arrays(
        cls,
        arrays: Mapping[str, npt.NDArray[Any]],
        binning: BinningConfig,
        output_argmax: bool,
        metadata: Mapping[str, Any],
    ) -> Reference:
        if "X" not in arrays:
            raise ValueError("reference file has no array 'X'")
        names = [str(n) for n in arrays["feature_names"].tolist()] if "feature_names" in arrays else None
        categorical = (
            [bool(c) for c in arrays["categorical"].ravel().tolist()] if "categorical" in arrays else None
        )
        out_names = [str(n) for n in arrays["output_names"].tolist()] if "output_names" in arrays else None
        return cls.from_arrays(
            arrays["X"],
            feature_names=names,
            categorical=categorical,
            outputs=arrays.get("outputs"),
            output_names=out_names,
            output_argmax=output_argmax,
            binning=binning,
            metadata=metadata,
        )

    # -- persistence -------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        arrays: dict[str, npt.NDArray[np.generic]] = {"format": np.asarray(FORMAT)}
        arrays.update(self.features.to_arrays("f_"))
        if self.outputs is not None and self.output_layout is not None:
            arrays.update(self.outputs.to_arrays("o_"))
            arrays.update(self.output_layout.to_arrays())
        arrays["metadata_json"] = np.asarray(json.dumps(self.metadata, sort_keys=True, default=str))
        return arrays

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Persist the frozen reference (edges + counts, no rows) with an atomic write."""
        return atomic_save_npz(path, self.to_arrays())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        binning: BinningConfig = DEFAULT_BINNING,
        output_argmax: bool = True,
    ) -> Reference:
        """Restore a reference written by :meth:`save`; a training-data file (``X``...) is accepted too."""
        arrays = load_npz(path)
        if "format" not in arrays:
            return cls._from_training_arrays(arrays, binning, output_argmax, {"source": str(path)})
        fmt = str(arrays["format"])
        if fmt != FORMAT:
            raise ValueError(f"unsupported reference format {fmt!r}")
        features = HistogramSet.from_arrays(arrays, "f_")
        outputs: HistogramSet | None = None
        layout: OutputLayout | None = None
        if "o_counts" in arrays:
            outputs = HistogramSet.from_arrays(arrays, "o_")
            n_raw, argmax = (int(v) for v in arrays["o_layout"].tolist())
            layout = OutputLayout(
                n_raw,
                bool(argmax),
                tuple(outputs.names),
                tuple(s.kind == CATEGORICAL for s in outputs.binning.specs),
            )
        metadata = json.loads(str(arrays["metadata_json"])) if "metadata_json" in arrays else {}
        return cls(features, outputs, layout, metadata)

    # -- views -------------------------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return self.features.rows

    @property
    def feature_names(self) -> list[str]:
        return self.features.names

    @property
    def output_names(self) -> list[str]:
        return self.outputs.names if self.outputs is not None else []

    @property
    def feature_binning(self) -> Binning:
        return self.features.binning

    @property
    def nbytes(self) -> int:
        """Bytes of state: bins (edges / categories) plus reference counts."""
        size = self.features.binning.nbytes + self.features.nbytes
        if self.outputs is not None:
            size += self.outputs.binning.nbytes + self.outputs.nbytes
        return size

    def __repr__(self) -> str:
        return (
            f"Reference(rows={self.n_rows}, features={len(self.feature_names)}, "
            f"outputs={len(self.output_names)})"
        )


class ReferenceCapture:
    """Collects the first ``max_rows`` rows served, then freezes them into a :class:`Reference`.

    Raw rows are held only while capturing (at most ``max_rows``); :meth:`freeze` bins them and the
    rows are dropped. Outputs are kept only if every captured batch carried them.
    """

    def __init__(
        self,
        max_rows: int = DEFAULT_CAPTURE_ROWS,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: CategoricalSpec = None,
        output_names: Sequence[str] | None = None,
        output_categorical: CategoricalSpec = None,
        output_argmax: bool = True,
        binning: BinningConfig = DEFAULT_BINNING,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.max_rows = max_rows
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.categorical = categorical
        self.output_names = list(output_names) if output_names is not None else None
        self.output_categorical = output_categorical
        self.output_argmax = output_argmax
        self.binning = binning
        self._inputs: list[npt.NDArray[Any]] = []
        self._outputs: list[npt.NDArray[Any]] | None = []
        self._rows = 0
        self._n_columns: int | None = None

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def full(self) -> bool:
        return self._rows >= self.max_rows

    def add(self, inputs: npt.ArrayLike, outputs: npt.ArrayLike | None = None) -> int:
        """Take rows from the front of a batch until ``max_rows``; returns how many were taken."""
        data = as_rows(inputs)
        if self._n_columns is None:
            self._n_columns = data.shape[1]
        elif data.shape[1] != self._n_columns:
            raise ValueError(f"expected {self._n_columns} input columns, got {data.shape[1]}")
        raw_out = as_rows(outputs) if outputs is not None else None
        if raw_out is not None and raw_out.shape[0] != data.shape[0]:
            raise ValueError("inputs and outputs must have the same number of rows")
        take = min(self.max_rows - self._rows, data.shape[0])
        if take <= 0:
            return 0
        self._inputs.append(np.array(data[:take], copy=True))
        if self._outputs is not None:
            if raw_out is None:
                self._outputs = None
            else:
                self._outputs.append(np.array(raw_out[:take], copy=True))
        self._rows += take
        return take

    def freeze(self, metadata: Mapping[str, Any] | None = None) -> Reference:
        """Bin the captured rows into a :class:`Reference` and drop them."""
        if self._rows == 0:
            raise ValueError("nothing captured yet")
        X = np.concatenate(self._inputs, axis=0)
        outputs = np.concatenate(self._outputs, axis=0) if self._outputs else None
        meta: dict[str, Any] = {"source": "capture", "captured_rows": self._rows}
        meta.update(metadata or {})
        reference = Reference.from_arrays(
            X,
            feature_names=self.feature_names,
            categorical=self.categorical,
            outputs=outputs,
            output_names=self.output_names,
            output_categorical=self.output_categorical,
            output_argmax=self.output_argmax,
            binning=self.binning,
            metadata=meta,
        )
        self._inputs, self._outputs, self._rows = [], [], 0
        return reference
