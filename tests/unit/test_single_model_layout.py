"""``--single-model``: one model's files (KServe's ``/mnt/models``) staged as a repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.model_store.errors import ModelStoreError
from turnout.model_store.layout import stage_single_model
from turnout.model_store.repository import LocalRepository

DEMO = Path(__file__).resolve().parents[2] / "model_store" / "demo" / "repository"


def test_one_onnx_file_of_any_name_is_version_1(tmp_path: Path) -> None:
    src = tmp_path / "mnt"
    (src / "data").mkdir(parents=True)
    (src / "iris.onnx").write_bytes((DEMO / "iris" / "1" / "model.onnx").read_bytes())
    (src / "config.pbtxt").write_text((DEMO / "iris" / "config.pbtxt").read_text())
    (src / "reference.npz").write_bytes(b"npz")
    (src / "data" / "weights.bin").write_bytes(b"w")
    (src / ".hidden").write_text("storage initializer leftovers")

    repo = LocalRepository(stage_single_model(src, "iris", tmp_path / "stage"))
    assert repo.model_names() == ["iris"]
    source = repo.read("iris")
    assert source.selected == ("1",)
    version = source.versions["1"]
    assert sorted(str(p.relative_to(version)) for p in version.rglob("*") if p.is_file()) == [
        "data/weights.bin",
        "model.onnx",
        "reference.npz",
    ]
    assert (version / "model.onnx").read_bytes() == (src / "iris.onnx").read_bytes()
    assert source.config_text == (src / "config.pbtxt").read_bytes()


def test_numbered_version_directories_are_the_versions(tmp_path: Path) -> None:
    src = tmp_path / "mnt"
    for v in ("1", "2"):
        (src / v).mkdir(parents=True)
        (src / v / "model.onnx").write_bytes((DEMO / "mlp" / v / "model.onnx").read_bytes())
    source = LocalRepository(stage_single_model(src, "scorer", tmp_path / "stage")).read("scorer")
    assert sorted(source.versions) == ["1", "2"]
    assert (source.versions["2"] / "model.onnx").resolve() == (src / "2" / "model.onnx").resolve()


@pytest.mark.parametrize("files", [(), ("a.onnx", "b.onnx")])
def test_no_or_several_graphs_are_refused(tmp_path: Path, files: tuple[str, ...]) -> None:
    src = tmp_path / "mnt"
    src.mkdir()
    for f in files:
        (src / f).write_bytes(b"x")
    with pytest.raises(ModelStoreError, match=r"not exactly one \.onnx file"):
        stage_single_model(src, "m", tmp_path / "stage")


def test_bad_names_and_missing_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="not a valid model name"):
        stage_single_model(tmp_path, "../x", tmp_path / "stage")
    with pytest.raises(ModelStoreError, match="does not exist"):
        stage_single_model(tmp_path / "absent", "m", tmp_path / "stage")
