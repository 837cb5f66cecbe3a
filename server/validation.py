"""The one place a request is validated: its inputs against the model signature (returning
the arrays to feed and the rows the batcher needs), its requested outputs, its scheduling
parameters, and the arrays of a batch handed to the batcher by anyone who did not validate them
here first (shadows, direct callers). The codecs only decode; the batcher only schedules."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from turnout.model_store.signature import Signature
from turnout.server.errors import InvalidInput
from turnout.server.types import InferRequest, RequestedOutput, Tensor


def validate_inputs(model: str, sig: Signature, inputs: list[Tensor]) -> tuple[dict[str, np.ndarray], int]:
    """The feeds for the runtime and the batch size (rows; 0 for non-batching models)."""
    feeds: dict[str, np.ndarray] = {}
    rows = -1
    batching = sig.max_batch_size > 0
    for t in inputs:
        spec = sig.input(t.name)
        if spec is None:
            expected = ", ".join(s.name for s in sig.inputs)
            raise InvalidInput(f"model '{model}' has no input '{t.name}' (inputs: {expected})")
        if t.name in feeds:
            raise InvalidInput(f"input '{t.name}' appears more than once")
        if t.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{t.name}' has datatype {t.datatype}, model '{model}' expects {spec.datatype}"
            )
        shape = t.shape
        dims = shape[1:] if batching else shape
        if len(dims) != len(spec.shape) or any(
            e != -1 and e != d for e, d in zip(spec.shape, dims, strict=True)
        ):
            want = spec.metadata_shape(batching)
            raise InvalidInput(f"input '{t.name}' has shape {list(shape)}, model '{model}' expects {want}")
        if batching:
            n = shape[0]
            if n < 1 or n > sig.max_batch_size:
                raise InvalidInput(
                    f"input '{t.name}': batch size {n} is outside 1..{sig.max_batch_size} (max_batch_size of '{model}')"
                )
            if rows == -1:
                rows = n
            elif n != rows:
                raise InvalidInput(f"input '{t.name}' has batch size {n}, other inputs have {rows}")
        feeds[t.name] = t.data
    if len(feeds) != len(sig.inputs):
        missing = [s.name for s in sig.inputs if s.name not in feeds and not s.optional]
        if missing:
            raise InvalidInput(
                f"model '{model}' needs input(s) {', '.join(missing)}, which the request lacks"
            )
    return feeds, max(rows, 0)


def validate_outputs(model: str, sig: Signature, requested: list[RequestedOutput] | None) -> None:
    """Each requested output is named once and exists: a response never holds more tensors
    than the model has outputs."""
    if not requested:
        return
    seen: set[str] = set()
    for r in requested:
        if r.name in seen:
            raise InvalidInput(f"output '{r.name}' is requested more than once")
        seen.add(r.name)
    if len(requested) > len(sig.outputs):
        raise InvalidInput(
            f"the request names {len(requested)} outputs, model '{model}' has {len(sig.outputs)} "
            "(each output may be requested once)"
        )
    for r in requested:
        if sig.output(r.name) is None:
            expected = ", ".join(s.name for s in sig.outputs)
            raise InvalidInput(f"model '{model}' has no output '{r.name}' (outputs: {expected})")


def schedule_params(req: InferRequest) -> tuple[int | None, float | None]:
    """The request's ``priority`` (None: the model's default) and ``timeout`` in seconds (None:
    the model's default) parameters; the batcher checks them against its own levels."""
    p = req.parameters
    if not p:
        return None, None
    priority = p.get("priority")
    timeout = p.get("timeout")
    pr: int | None = None
    to: float | None = None
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
        pr = priority or None
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidInput(
                f"parameter 'timeout' must be a non-negative number of microseconds, got {timeout!r}"
            )
        to = timeout / 1e6 if timeout else None
    return pr, to


def batch_rows(label: str, inputs: Mapping[str, np.ndarray], max_rows: int) -> int:
    """The rows of a batch given to the batcher without :func:`validate_inputs` (shadows,
    direct callers): every input an array with a batch dimension, all agreeing, within
    ``1..max_rows``."""
    rows = -1
    for name, arr in inputs.items():
        if not isinstance(arr, np.ndarray):
            raise InvalidInput(f"{label}: input '{name}' is not an array")
        shape = arr.shape
        if not shape:
            raise InvalidInput(f"{label}: input '{name}' has no batch dimension")
        if shape[0] != rows:
            if rows != -1:
                raise InvalidInput(
                    f"{label}: inputs disagree on the batch dimension ({rows} vs {shape[0]} for '{name}')"
                )
            rows = shape[0]
    if rows == -1:
        raise InvalidInput(f"{label}: request has no inputs")
    if not 1 <= rows <= max_rows:
        raise InvalidInput(f"{label}: batch dimension must be in 1..{max_rows}, got {rows}")
    return rows
