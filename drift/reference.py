"""Reference distributions: the frozen bins and counts every window is compared against.

A :class:`Reference` is built once per model version, from one of:

* training rows in memory - :meth:`Reference.from_arrays`;
* a ``reference.npz`` shipped next to the model - :meth:`Reference.from_npz`. Arrays: ``X``
  ``[rows, features]`` (numeric, or strings for BYTES features), optional ``feature_names`` (strings),
  ``categorical`` (bool mask), ``outputs`` ``[rows, ...]`` and ``output_names``;
* the first rows served - :class:`~drift.capture.ReferenceCapture`, then frozen.

Once built it keeps only the bin edges / category lists and the integer reference counts - never raw
rows - and it is persisted with :meth:`Reference.save` (atomic ``.npz`` write) and restored with
:meth:`Reference.load`, so a restart does not lose a captured reference.

Model outputs are expanded into columns by :class:`~drift.layout.OutputLayout`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift._io import atomic_save_npz, load_npz
from turnout.drift.binning import Binning
from turnout.drift.columns import CATEGORICAL
from turnout.drift.edges import DEFAULT_BINNING, BinningConfig, specs_from_data
from turnout.drift.histogram import HistogramSet
from turnout.drift.layout import (
    CategoricalSpec,
    OutputLayout,
    as_rows,
    column_step,
    default_names,
    resolve_categorical,
)

FORMAT = "turnout-drift-reference/1"


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
        max_features: int | None = None,
    ) -> Reference:
        """Build from a shipped training-data file (arrays ``X`` and optional extras, see module doc).
        Tensors wider than ``max_features`` keep every k-th column, as the request path does."""
        arrays = thin(load_npz(path), max_features)
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


def thin(arrays: Mapping[str, npt.NDArray[Any]], max_features: int | None) -> dict[str, npt.NDArray[Any]]:
    """Training arrays with the columns of wide tensors thinned (:func:`drift.layout.column_step`)."""
    out = dict(arrays)
    for data, extras in (("X", ("feature_names", "categorical")), ("outputs", ("output_names",))):
        arr = out.get(data)
        if arr is None or arr.ndim != 2:
            continue
        step = column_step(arr.shape[1], max_features)
        if step == 1:
            continue
        out[data] = arr[:, ::step]
        for name in extras:
            extra = out.get(name)
            if extra is not None and extra.ndim == 1 and extra.shape[0] == arr.shape[1]:
                out[name] = extra[::step]
    return out
