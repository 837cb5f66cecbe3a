"""Model configuration: Triton's ``config.pbtxt`` (parsed into our ModelConfig message), or
one derived from the ONNX graph, completed and checked against the graph."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from turnout.model_store.datatypes import BY_CONFIG, BY_ONNX
from turnout.model_store.errors import LoadError
from turnout.model_store.signature import Signature, TensorSpec
from turnout.protos.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput

log = logging.getLogger("turnout.model_store")

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


def read_config_file(model_dir: Path, name: str) -> ModelConfig:
    """Parse ``config.pbtxt`` if present; an empty config (to be derived) otherwise."""
    config = ModelConfig()
    path = model_dir / CONFIG_FILE
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            text_format.Parse(text, config, allow_unknown_field=True)
        except text_format.ParseError as exc:
            raise LoadError(f"model '{name}': cannot parse {CONFIG_FILE}: {exc}") from exc
        ignored = _unknown_top_level_fields(text)
        if ignored:
            log.warning("model %s: config fields not used by Turnout ignored: %s", name, ", ".join(ignored))
    if config.name and config.name != name:
        raise LoadError(
            f"model '{name}': {CONFIG_FILE} names the model '{config.name}'; it must match the directory"
        )
    config.name = name
    if config.platform and config.platform not in (PLATFORM, "onnxruntime"):
        raise LoadError(f"model '{name}': platform '{config.platform}' is not served by Turnout (ONNX only)")
    if config.backend and config.backend != BACKEND:
        raise LoadError(
            f"model '{name}': backend '{config.backend}' is not served by Turnout (onnxruntime only)"
        )
    return config


def _unknown_top_level_fields(text: str) -> list[str]:
    known = {f.name for f in ModelConfig.DESCRIPTOR.fields}
    out: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if depth == 0 and line:
            key = line.split(":", 1)[0].split("{", 1)[0].split("[", 1)[0].strip()
            if key and key not in known and key not in out:
                out.append(key)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return out


def _dim(d: Any) -> int:
    return d if isinstance(d, int) and d >= 0 else -1


def complete_config(
    config: ModelConfig,
    onnx_inputs: list[tuple[str, str, list[Any]]],
    onnx_outputs: list[tuple[str, str, list[Any]]],
    *,
    default_max_batch_size: int,
    strict: bool,
) -> ModelConfig:
    """Fill what the config leaves out from the ONNX graph and check what it states.

    ``onnx_inputs``/``onnx_outputs`` are ``(name, onnx type, shape)`` with ``None`` or a
    string for symbolic dimensions.
    """
    name = config.name
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform = PLATFORM
    out.backend = BACKEND
    if not out.default_model_filename:
        out.default_model_filename = DEFAULT_MODEL_FILE
    leading_dynamic = all(len(s) >= 1 and _dim(s[0]) == -1 for _, _, s in onnx_inputs + onnx_outputs)
    if strict and not (config.input and config.output):
        raise LoadError(f"model '{name}': --strict-model-config needs inputs and outputs in {CONFIG_FILE}")
    if (
        not config.input
        and not config.output
        and not config.HasField("dynamic_batching")
        and config.max_batch_size == 0
    ):
        # nothing said about batching: a leading dynamic dimension means the model batches
        if leading_dynamic and default_max_batch_size > 0:
            out.max_batch_size = default_max_batch_size
            out.dynamic_batching.SetInParent()
    if out.max_batch_size > 0 and not leading_dynamic:
        raise LoadError(
            f"model '{name}': max_batch_size {out.max_batch_size} but the ONNX graph has no dynamic leading (batch) dimension"
        )
    skip = 1 if out.max_batch_size > 0 else 0
    _merge_tensors(name, "input", out.input, onnx_inputs, skip, ModelInput)
    _merge_tensors(name, "output", out.output, onnx_outputs, skip, ModelOutput)
    if not out.instance_group:
        out.instance_group.add(count=1, kind=2)  # one CPU instance
    return out


def _merge_tensors(
    name: str, what: str, declared: Any, graph: list[tuple[str, str, list[Any]]], skip: int, cls: Any
) -> None:
    by_name = {n: (t, s) for n, t, s in graph}
    if len(declared) == 0:
        for n, t, s in graph:
            dt = BY_ONNX.get(t)
            if dt is None:
                raise LoadError(f"model '{name}': {what} '{n}' has type {t}, which Turnout cannot serve")
            declared.append(
                cls(name=n, data_type=DataType.Value(dt.config), dims=[_dim(d) for d in s[skip:]])
            )
        return
    for spec in declared:
        if spec.name not in by_name:
            raise LoadError(
                f"model '{name}': {what} '{spec.name}' in {CONFIG_FILE} is not in the ONNX graph ({', '.join(by_name)})"
            )
        t, s = by_name[spec.name]
        dt = BY_ONNX.get(t)
        cfg_type = DataType.Name(spec.data_type)
        if dt is None or dt.config != cfg_type:
            raise LoadError(
                f"model '{name}': {what} '{spec.name}' is {cfg_type} in {CONFIG_FILE} but {t} in the graph"
            )
        graph_dims = [_dim(d) for d in s[skip:]]
        dims = list(spec.dims)
        if len(dims) != len(graph_dims) or any(
            g != -1 and c != -1 and g != c for c, g in zip(dims, graph_dims, strict=True)
        ):
            raise LoadError(
                f"model '{name}': {what} '{spec.name}' has dims {dims} in {CONFIG_FILE} but {graph_dims} in the graph"
            )


def instance_count(config: ModelConfig) -> int:
    """How many executions of one version may run at once: the instance groups' counts."""
    return max(sum(max(g.count, 1) for g in config.instance_group), 1) if config.instance_group else 1


def signature_of(config: ModelConfig) -> Signature:
    def spec(t: Any, optional: bool = False) -> TensorSpec:
        return TensorSpec(
            t.name, BY_CONFIG[DataType.Name(t.data_type)].v2, tuple(int(d) for d in t.dims), optional
        )

    return Signature(
        inputs=tuple(spec(t, t.optional) for t in config.input),
        outputs=tuple(spec(t) for t in config.output),
        max_batch_size=max(config.max_batch_size, 0),
    )


def v2_datatype(config_type: int) -> str:
    return BY_CONFIG[DataType.Name(config_type)].v2
