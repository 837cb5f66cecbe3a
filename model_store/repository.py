"""The model repository on disk: ``<repo>/<model>/[config.pbtxt]`` and ``<model>/<version>/model.onnx``.

Change detection is two-step: a cheap fingerprint (size, mtime, ctime, inode of every file)
says *whether* to look, the sha256 of the contents says whether anything really changed.
A version whose files changed within the last ``settle_secs`` is still being written and is
not picked up until it is stable.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from turnout.model_store.config import CONFIG_FILE, read_config_file
from turnout.model_store.errors import ModelNotFoundError
from turnout.model_store.versions import select_versions
from turnout.protos.model_config_pb2 import ModelConfig

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What the repository holds for one model right now."""

    name: str
    path: Path
    config: ModelConfig  # as written (or empty), not yet completed from the graph
    config_text: bytes  # raw config.pbtxt (b"" when absent): part of every version's digest
    versions: dict[str, Path]  # every numeric version directory
    selected: tuple[str, ...]  # the ones the version policy serves, ascending


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def fingerprint(source: ModelSource, version: str) -> Fingerprint:
    entries = []
    paths = _files(source.versions[version])
    cfg = source.path / CONFIG_FILE
    if cfg.is_file():
        paths.append(cfg)
    for p in paths:
        st = p.stat()
        entries.append((str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(entries)


def newest_change(fp: Fingerprint) -> float:
    """Seconds since the epoch of the last change to any file of the fingerprint."""
    return max((max(e[2], e[3]) / 1e9 for e in fp), default=0.0)


def is_settled(fp: Fingerprint, settle_secs: float, now: float | None = None) -> bool:
    return (now if now is not None else time.time()) - newest_change(fp) >= settle_secs


def digest(source: ModelSource, version: str, pause: float = 0.0) -> str:
    """sha256 over the version's files (names and contents) and the model's config.

    With ``pause`` > 0 the hashing yields the CPU after each 1 MiB chunk for ``pause`` times as
    long as the chunk took (2.0: a third of a core), so that hashing a large model runs in short
    slices instead of one burst that other models' requests would wait behind."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    h.update(b"config\0" + source.config_text + b"\0")
    root = source.versions[version]
    for p in _files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with p.open("rb") as f:  # one reused 1 MiB buffer: no fresh pages per chunk
            while True:
                t0 = time.perf_counter()
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                if pause > 0:
                    time.sleep((time.perf_counter() - t0) * pause)
    return h.hexdigest()


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def refresh(self, model: str | None = None) -> None:
        """Bring a local copy up to date (remote repositories); nothing to do here."""

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, name: str) -> ModelSource:
        """Scan one model directory (blocking: call off the event loop)."""
        path = self.root / name
        if name in ("", ".", "..") or "/" in name or name.startswith(".") or not path.is_dir():
            raise ModelNotFoundError(f"model '{name}' is not in the repository")
        config = read_config_file(path, name)
        cfg_path = path / CONFIG_FILE
        config_text = cfg_path.read_bytes() if cfg_path.is_file() else b""
        versions = {p.name: p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}
        selected = select_versions(config.version_policy, (int(v) for v in versions))
        return ModelSource(name, path, config, config_text, versions, tuple(str(v) for v in selected))
