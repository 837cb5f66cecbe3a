"""Rebuild the built-in demo repository (``model_store/demo/repository``) reproducibly.

    python -m model_store.demo.build

Needs the dev extras (onnx, scikit-learn, skl2onnx); serving the result needs none of them.
Models:
  iris   logistic regression on scikit-learn's bundled iris data (skl2onnx): FP32[4] -> label INT64, probabilities FP32[3]
  mlp    dense MLP FP32[32] -> FP32[8], versions 1 and 2 (different weights, same signature)
  echo   identity for every V2 datatype (one input/output pair per type), for protocol tests
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent
REPO = HERE / "repository"
SEED = 20261127

ECHO_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def mlp(
    dims: list[int], rng: np.random.Generator, name: str, producer: str = "turnout-demo"
) -> onnx.ModelProto:
    """Gemm(+Relu) chain with He-scaled weights drawn from ``rng``; tensors ``input``/``output``,
    dynamic batch. The benchmarks build their models with it too."""
    nodes, inits = [], []
    x = "input"
    for i, (fi, fo) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((fi, fo)) * np.sqrt(2.0 / fi)).astype(np.float32)
        b = (rng.standard_normal(fo) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(dims) - 2
        y = "output" if last else f"h{i}"
        g = y if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [g], name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [g], [y], name=f"relu{i}"))
        x = y
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)


def echo() -> onnx.ModelProto:
    nodes, ins, outs = [], [], []
    for v2, t in ECHO_TYPES.items():
        i, o = f"IN_{v2}", f"OUT_{v2}"
        nodes.append(helper.make_node("Identity", [i], [o], name=f"id_{v2}"))
        ins.append(helper.make_tensor_value_info(i, t, ["batch", "n"]))
        outs.append(helper.make_tensor_value_info(o, t, ["batch", "n"]))
    graph = helper.make_graph(nodes, "echo", ins, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="turnout-demo")


def iris() -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    x = data.data.astype(np.float32)
    clf = LogisticRegression(max_iter=500, random_state=0).fit(x, data.target)
    model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    model.graph.input[0].name = "input"
    for node in model.graph.node:
        node.input[:] = ["input" if n == "X" else n for n in node.input]
    model.graph.name = "iris"
    model.producer_name = "turnout-demo"
    return model


MLP_CONFIG = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: { all {} }
input [ { name: "input" data_type: TYPE_FP32 dims: [ 32 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 8 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

IRIS_CONFIG = """\
name: "iris"
platform: "onnxruntime_onnx"
max_batch_size: 256
dynamic_batching { }
parameters { key: "task" value: { string_value: "classification" } }
"""


def main() -> None:
    if REPO.exists():
        shutil.rmtree(REPO)
    _save(mlp([32, 64, 8], np.random.default_rng(SEED), "mlp"), REPO / "mlp" / "1" / "model.onnx")
    _save(mlp([32, 64, 8], np.random.default_rng(SEED + 1), "mlp"), REPO / "mlp" / "2" / "model.onnx")
    (REPO / "mlp" / "config.pbtxt").write_text(MLP_CONFIG)
    _save(iris(), REPO / "iris" / "1" / "model.onnx")
    (REPO / "iris" / "config.pbtxt").write_text(IRIS_CONFIG)
    _save(echo(), REPO / "echo" / "1" / "model.onnx")
    for p in sorted(REPO.rglob("*")):
        if p.is_file():
            print(p.relative_to(HERE), p.stat().st_size)


if __name__ == "__main__":
    main()
