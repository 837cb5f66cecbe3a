"""server.validation is the one place a request is checked: scheduling parameters, and the
arrays of a batch handed to the batcher without validate_inputs (shadows, direct callers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from turnout.server.errors import InvalidInput
from turnout.server.types import InferRequest
from turnout.server.validation import batch_rows, schedule_params


def request(**parameters: Any) -> InferRequest:
    return InferRequest("m", "", "", [], None, parameters, None, "http")


def test_schedule_params() -> None:
    assert schedule_params(request()) == (None, None)
    assert schedule_params(request(priority=0, timeout=0)) == (None, None)  # 0: the model's default
    assert schedule_params(request(priority=2, timeout=1500)) == (2, 0.0015)
    for bad in ({"priority": -1}, {"priority": True}, {"priority": 1.5}):
        with pytest.raises(InvalidInput, match="parameter 'priority' must be a non-negative integer"):
            schedule_params(request(**bad))
    for bad in ({"timeout": -1}, {"timeout": False}, {"timeout": "5"}):
        with pytest.raises(InvalidInput, match="parameter 'timeout' must be a non-negative number"):
            schedule_params(request(**bad))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "request has no inputs"),
        ({"x": [[1.0]]}, "input 'x' is not an array"),
        ({"x": np.zeros(())}, "input 'x' has no batch dimension"),
        (
            {"x": np.zeros((2, 1)), "y": np.zeros((3, 1))},
            r"inputs disagree on the batch dimension \(2 vs 3 for 'y'\)",
        ),
        ({"x": np.zeros((0, 2))}, r"batch dimension must be in 1..4, got 0"),
        ({"x": np.zeros((5, 2))}, r"batch dimension must be in 1..4, got 5"),
    ],
)
def test_batch_rows_refuses(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match="^model 'm/1': " + message):
        batch_rows("model 'm/1'", inputs, 4)


def test_batch_rows() -> None:
    assert batch_rows("b", {"x": np.zeros((3, 2)), "y": np.zeros((3,))}, 4) == 3
