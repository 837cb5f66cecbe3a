"""The model repository on disk: ``<repo>/<model>/[config.pbtxt]`` and ``<model>/<version>/model.onnx``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_store.config import read_config_file
from model_store.errors import ModelNotFoundError
from model_store.versions import select_versions
from protos.model_config_pb2 import ModelConfig


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What the repository holds for one model right now."""

    name: str
    path: Path
    config: ModelConfig  # as written (or empty), not yet completed from the graph
    versions: dict[str, Path]  # every numeric version directory
    selected: tuple[str, ...]  # the ones the version policy serves, ascending


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, name: str) -> ModelSource:
        """Scan one model directory (blocking: call off the event loop)."""
        path = self.root / name
        if not path.is_dir() or name.startswith(".") or "/" in name or name in ("", "..", "."):
            raise ModelNotFoundError(f"model '{name}' is not in the repository")
        config = read_config_file(path, name)
        versions = {p.name: p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}
        selected = select_versions(config.version_policy, (int(v) for v in versions))
        return ModelSource(name, path, config, versions, tuple(str(v) for v in selected))
