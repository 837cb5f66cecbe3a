"""A model version's signature: its inputs and outputs, as the server validates them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output. ``-1`` in ``shape`` is a variable dimension.

    For batching models (max_batch_size > 0) ``shape`` excludes the batch dimension, as
    Triton's ``dims`` do.
    """

    name: str
    datatype: str  # V2 datatype name
    shape: tuple[int, ...]
    optional: bool = False

    def metadata_shape(self, batching: bool) -> list[int]:
        return ([-1] if batching else []) + list(self.shape)

    def to_json(self, batching: bool) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.metadata_shape(batching)}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model does not batch

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None

    def compatible_with(self, other: Signature) -> str | None:
        """None when requests valid for ``other`` are valid here too; else the reason."""
        mine = {s.name: s for s in self.inputs}
        for spec in other.inputs:
            m = mine.get(spec.name)
            if m is None:
                return f"input '{spec.name}' missing"
            if m.datatype != spec.datatype or m.shape != spec.shape:
                return f"input '{spec.name}' is {m.datatype}{list(m.shape)}, was {spec.datatype}{list(spec.shape)}"
        outs = {s.name: s for s in self.outputs}
        for spec in other.outputs:
            o = outs.get(spec.name)
            if o is None:
                return f"output '{spec.name}' missing"
            if o.datatype != spec.datatype:
                return f"output '{spec.name}' is {o.datatype}, was {spec.datatype}"
        if self.batching != other.batching:
            return "batching differs"
        return None

    def to_json(self) -> dict[str, Any]:
        b = self.batching
        return {
            "inputs": [s.to_json(b) for s in self.inputs],
            "outputs": [s.to_json(b) for s in self.outputs],
            "max_batch_size": self.max_batch_size,
        }
