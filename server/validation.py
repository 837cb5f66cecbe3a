"""Check a request's inputs against the model signature; return the arrays to feed."""

from __future__ import annotations

import numpy as np

from model_store.signature import Signature
from server.errors import InvalidInput
from server.types import RequestedOutput, Tensor


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
    """Each requested output exists and is named once: a response never holds more tensors
    than the model has outputs."""
    if not requested:
        return
    if len(requested) > len(sig.outputs):
        raise InvalidInput(
            f"the request names {len(requested)} outputs, model '{model}' has {len(sig.outputs)} "
            "(each output may be requested once)"
        )
    seen: set[str] = set()
    for r in requested:
        if sig.output(r.name) is None:
            expected = ", ".join(s.name for s in sig.outputs)
            raise InvalidInput(f"model '{model}' has no output '{r.name}' (outputs: {expected})")
        if r.name in seen:
            raise InvalidInput(f"output '{r.name}' is requested more than once")
        seen.add(r.name)
