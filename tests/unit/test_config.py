"""Model configuration: config.pbtxt parsing, derivation from the graph, version policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.model_store.config import complete_config, read_config_file, signature_of
from turnout.model_store.errors import LoadError
from turnout.model_store.versions import select_versions
from turnout.protos.model_config_pb2 import ModelConfig, ModelVersionPolicy

GRAPH_IN = [("input", "tensor(float)", ["batch", 4])]
GRAPH_OUT = [("label", "tensor(int64)", [None]), ("probabilities", "tensor(float)", [None, 3])]


def test_derived_from_the_graph() -> None:
    cfg = complete_config(ModelConfig(name="m"), GRAPH_IN, GRAPH_OUT, default_max_batch_size=32, strict=False)
    assert cfg.max_batch_size == 32 and cfg.HasField("dynamic_batching")
    sig = signature_of(cfg)
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("input", "FP32", (4,))]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("label", "INT64", ()),
        ("probabilities", "FP32", (3,)),
    ]


def test_triton_config_text_parses(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 }\n"
        'optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }\n'
        "sequence_batching { }\n"
    )
    cfg = read_config_file(tmp_path, "m")
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [4]
    full = complete_config(cfg, GRAPH_IN, GRAPH_OUT, default_max_batch_size=32, strict=False)
    assert [o.name for o in full.output] == ["label", "probabilities"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "must match the directory"),
        ('platform: "tensorflow_savedmodel"', "ONNX only"),
        ("max_batch_size: [", "cannot parse"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(LoadError, match=message):
        read_config_file(tmp_path, "m")


def test_config_checked_against_the_graph() -> None:
    bad_type = ModelConfig(name="m", max_batch_size=4)
    bad_type.input.add(name="input", data_type=9, dims=[4])  # INT64
    with pytest.raises(LoadError, match=r"TYPE_INT64 in config\.pbtxt but tensor\(float\)"):
        complete_config(bad_type, GRAPH_IN, GRAPH_OUT, default_max_batch_size=32, strict=False)
    missing = ModelConfig(name="m")
    missing.input.add(name="nope", data_type=11, dims=[4])
    with pytest.raises(LoadError, match="not in the ONNX graph"):
        complete_config(missing, GRAPH_IN, GRAPH_OUT, default_max_batch_size=32, strict=False)
    with pytest.raises(LoadError, match="strict"):
        complete_config(ModelConfig(name="m"), GRAPH_IN, GRAPH_OUT, default_max_batch_size=32, strict=True)
    static = [("input", "tensor(float)", [1, 4])]
    with pytest.raises(LoadError, match="no dynamic leading"):
        complete_config(
            ModelConfig(name="m", max_batch_size=4),
            static,
            [("y", "tensor(float)", [1, 2])],
            default_max_batch_size=32,
            strict=False,
        )


def test_version_policies() -> None:
    p = ModelVersionPolicy()
    assert select_versions(p, [3, 1, 2]) == [3]
    p.latest.num_versions = 2
    assert select_versions(p, [3, 1, 2]) == [2, 3]
    p = ModelVersionPolicy()
    p.all.SetInParent()
    assert select_versions(p, [3, 1]) == [1, 3]
    p = ModelVersionPolicy()
    p.specific.versions.extend([1, 7])
    assert select_versions(p, [1, 2, 3]) == [1]
