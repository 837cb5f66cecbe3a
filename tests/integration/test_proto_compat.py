"""Our .proto files describe the same wire format as the descriptors tritonclient ships:
every message, field name, number, type and label, every enum value and every RPC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

ROOT = Path(__file__).resolve().parents[2]


def _our_pool(tmp_path: Path) -> descriptor_pool.DescriptorPool:
    out = tmp_path / "ours.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT),
            f"--descriptor_set_out={out}",
            "--include_imports",
            "protos/inference.proto",
        ],
        check=True,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


def _check_message(ours, theirs, path: str) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    their_fields = {f.number: f for f in theirs.fields}
    for f in ours.fields:
        t = their_fields.get(f.number)
        where = f"{path}.{f.name}"
        if t is None:
            problems.append(f"{where}: field number {f.number} not in Triton's {theirs.full_name}")
            continue
        if (f.name, f.type, f.is_repeated) != (t.name, t.type, t.is_repeated):
            problems.append(
                f"{where}: ours ({f.name}, type {f.type}, repeated {f.is_repeated}) vs ({t.name}, {t.type}, {t.is_repeated})"
            )
        if f.message_type is not None and f.message_type.full_name != t.message_type.full_name:
            problems.append(f"{where}: message type {f.message_type.full_name} vs {t.message_type.full_name}")
        if f.enum_type is not None:
            ov = {v.name: v.number for v in f.enum_type.values}
            tv = {v.name: v.number for v in t.enum_type.values}
            if any(tv.get(k) != v for k, v in ov.items()):
                problems.append(f"{where}: enum values differ")
    for nested in ours.nested_types:
        if nested.GetOptions().map_entry:
            continue
        problems += _check_message(nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}")
    return problems


def test_inference_service_matches_triton(tmp_path: Path) -> None:
    pool = _our_pool(tmp_path)
    ours = pool.FindServiceByName("inference.GRPCInferenceService")
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in ours.methods] == [m.name for m in theirs.methods]
    for m in ours.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (
            t.input_type.full_name,
            t.output_type.full_name,
        )
        assert (m.client_streaming, m.server_streaming) == (t.client_streaming, t.server_streaming)
    problems: list[str] = []
    their_msgs = triton_service.DESCRIPTOR.message_types_by_name
    for name in their_msgs:  # every service message is present and identical
        ours_msg = pool.FindMessageTypeByName(f"inference.{name}")
        problems += _check_message(ours_msg, their_msgs[name], name)
        assert len(ours_msg.fields) == len(their_msgs[name].fields), name
    assert problems == []


def test_model_config_subset_matches_triton(tmp_path: Path) -> None:
    pool = _our_pool(tmp_path)
    problems: list[str] = []
    for name, theirs in triton_config.DESCRIPTOR.message_types_by_name.items():
        try:
            ours = pool.FindMessageTypeByName(f"inference.{name}")
        except KeyError:
            continue  # a part of ModelConfig Turnout does not use
        problems += _check_message(ours, theirs, name)
    ours_dt = pool.FindEnumTypeByName("inference.DataType")
    assert {v.name: v.number for v in ours_dt.values} == {
        v.name: v.number for v in triton_config.DESCRIPTOR.enum_types_by_name["DataType"].values
    }
    assert problems == []
    essential = [
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "input",
        "output",
        "version_policy",
        "dynamic_batching",
        "instance_group",
        "parameters",
        "model_warmup",
    ]
    mc = pool.FindMessageTypeByName("inference.ModelConfig")
    assert all(f in mc.fields_by_name for f in essential)
