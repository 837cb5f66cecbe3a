"""Capturing a reference from traffic: the first rows served, then frozen into a :class:`Reference`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift.edges import DEFAULT_BINNING, BinningConfig
from turnout.drift.layout import CategoricalSpec, as_rows
from turnout.drift.reference import Reference

DEFAULT_CAPTURE_ROWS = 10_000


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
