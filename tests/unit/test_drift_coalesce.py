"""Joining queued batches of one model version (pure: no monitor thread)."""

from __future__ import annotations

import numpy as np

from turnout.drift.coalesce import Item, coalesce


def _item(rows: int, columns: int = 2, outputs: int | None = 3) -> Item:
    inputs = np.zeros((rows, columns))
    return Item("iris", "1", inputs, None if outputs is None else np.ones((rows, outputs)))


def test_compatible_batches_become_one() -> None:
    (joined,) = coalesce([_item(1), _item(2), _item(3)])
    inputs, outputs = joined
    assert inputs.shape == (6, 2)
    assert outputs is not None and outputs.shape == (6, 3)


def test_a_change_of_shape_or_of_outputs_starts_a_new_batch() -> None:
    runs = coalesce(
        [_item(1), _item(1, outputs=None), _item(2, outputs=None), _item(1, columns=4, outputs=None)]
    )
    assert [(i.shape, None if o is None else o.shape) for i, o in runs] == [
        ((1, 2), (1, 3)),
        ((3, 2), None),
        ((1, 4), None),
    ]


def test_object_arrays_are_not_joined_with_numbers() -> None:
    words = Item("iris", "1", np.asarray([["a", 1]], dtype=object), None)
    runs = coalesce([_item(1, outputs=None), words])
    assert len(runs) == 2
    assert runs[1][0].dtype.kind == "O"


def test_one_dimensional_inputs_are_rows() -> None:
    ((inputs, outputs),) = coalesce(
        [Item("iris", "1", np.arange(3.0), None), Item("iris", "1", np.arange(2.0), None)]
    )
    assert inputs.shape == (5, 1) and outputs is None
