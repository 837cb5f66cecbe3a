"""Small classifiers for routing tests: versions that agree, one that disagrees on ~30% of
inputs, and one that fails at run time for most batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W_GOOD = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.1, 0.1]], dtype=np.float32)


def _linear(w: np.ndarray, name: str) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def good() -> bytes:
    return _linear(W_GOOD, "good")


def good_clone() -> bytes:
    return _linear(W_GOOD * 1.01, "good2")  # same argmax everywhere


def disagreeing() -> bytes:
    # swaps classes 0 and 1: disagrees whenever the top class is 0 or 1 (about 2/3 of
    # uniformly drawn rows); `inputs_for_disagreement` draws rows so it is ~30%
    w = W_GOOD[:, [1, 0, 2]]
    return _linear(w, "bad")


def failing() -> bytes:
    """Same signature, but reshapes the batch to rows of 5 values: fails unless 4*N % 5 == 0."""
    shape = numpy_helper.from_array(np.array([-1, 5], dtype=np.int64), "shape")
    w5 = numpy_helper.from_array(np.ones((5, 3), dtype=np.float32), "W5")
    back = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "back")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["r"]),
            helper.make_node("MatMul", ["r", "W5"], ["m"]),
            helper.make_node("Reshape", ["m", "back"], ["output"]),
        ],
        "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [shape, w5, back],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def row(i: int, disagree_share: float = 0.3) -> np.ndarray:
    """Row i: top class 2 for (1 - share) of rows (both models agree), class 0 otherwise."""
    rng = np.random.default_rng(i)
    x = rng.uniform(0, 1, 4).astype(np.float32)
    if (i * 0.618034) % 1.0 < disagree_share:
        x[0] += 2.0
    else:
        x[2] += 2.0
    return x.reshape(1, 4)
