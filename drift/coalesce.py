"""Queued observations of one model version, and joining consecutive ones into fewer batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift.layout import as_rows


@dataclass(frozen=True)
class Item:
    """One offered batch: a model version's inputs and (optionally) outputs."""

    model: str
    version: str
    inputs: npt.NDArray[Any]
    outputs: npt.NDArray[Any] | None


def coalesce(items: list[Item]) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any] | None]]:
    """Concatenate consecutive batches with compatible shapes (all with outputs, or all without)."""
    out: list[tuple[npt.NDArray[Any], npt.NDArray[Any] | None]] = []
    run_in: list[npt.NDArray[Any]] = []
    run_out: list[npt.NDArray[Any]] = []
    run_has_out: bool | None = None

    def flush_run() -> None:
        if not run_in:
            return
        inputs = run_in[0] if len(run_in) == 1 else np.concatenate(run_in, axis=0)
        outputs: npt.NDArray[Any] | None = None
        if run_has_out:
            outputs = run_out[0] if len(run_out) == 1 else np.concatenate(run_out, axis=0)
        out.append((inputs, outputs))
        run_in.clear()
        run_out.clear()

    for item in items:
        inputs = as_rows(item.inputs)
        outputs = as_rows(item.outputs) if item.outputs is not None else None
        has_out = outputs is not None
        compatible = (
            run_in
            and run_has_out == has_out
            and run_in[0].shape[1:] == inputs.shape[1:]
            and (outputs is None or run_out[0].shape[1:] == outputs.shape[1:])
            and (run_in[0].dtype.kind == "O") == (inputs.dtype.kind == "O")
        )
        if not compatible:
            flush_run()
            run_has_out = has_out
        run_in.append(inputs)
        if outputs is not None:
            run_out.append(outputs)
    flush_run()
    return out
