"""Tensors as drift rows: ``[rows, columns]`` views, categorical masks, and model output layouts.

Model outputs are handled like features after :class:`OutputLayout` has expanded them: a float output
with several columns (class probabilities, logits, scores) becomes one numeric column per score plus a
categorical ``<name>.argmax`` column (the predicted class); integer, boolean and string outputs are
categorical; a single float column (regression, binary score) is numeric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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


def column_step(width: int, max_features: int | None) -> int:
    """Every how many columns a ``width``-column tensor is monitored (1: all of them)."""
    if max_features is None or width <= max_features:
        return 1
    return -(-width // max_features)
