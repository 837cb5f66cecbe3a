"""One model's files seen as a repository of one model (``--single-model NAME``).

KServe's storage initializer copies an InferenceService's ``storageUri`` to ``/mnt/models``. When
that URI names one model rather than a Triton repository, ``/mnt/models`` holds the model itself:
``model.onnx`` (or another ``*.onnx``), perhaps ``config.pbtxt``, external data and a drift
``reference.npz`` beside it, or numbered version directories. :func:`stage_single_model` builds
``<dest>/<name>/config.pbtxt`` and ``<dest>/<name>/<version>/...`` out of symbolic links to those
files (nothing is copied), so that the repository code reads it like any other repository.
Only files are linked, never directories: the repository's scan and fingerprint read files.
"""

from __future__ import annotations

from pathlib import Path

from turnout.model_store.config import CONFIG_FILE, DEFAULT_MODEL_FILE
from turnout.model_store.errors import ModelStoreError


def _link_tree(src: Path, dest: Path) -> None:
    """``dest`` mirrors ``src``: real directories, each file a symbolic link to its original."""
    for path in sorted(src.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue  # KServe's storage initializer may leave hidden files; skip them
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())


def stage_single_model(src: Path, name: str, dest: Path) -> Path:
    """Make ``dest`` a repository holding the model in ``src`` as ``name``; returns ``dest``.

    - ``src/<n>/`` numeric directories: each is version ``n``, as in a repository's model directory;
    - otherwise the ``.onnx`` file directly in ``src`` (exactly one, any name) is version 1's
      ``model.onnx``, and every other file of ``src`` goes beside it;
    - ``src/config.pbtxt``, in both cases, is the model's configuration (its ``name``, if set,
      must be ``name``)."""
    if not name or "/" in name or name.startswith("."):
        raise ModelStoreError(f"single model name {name!r} is not a valid model name")
    if not src.is_dir():
        raise ModelStoreError(f"single model directory {src} does not exist")
    model = dest / name
    if model.exists():
        raise ModelStoreError(f"{model} already exists: stage a single model into an empty directory")
    model.mkdir(parents=True)
    config = src / CONFIG_FILE
    if config.is_file():
        (model / CONFIG_FILE).symlink_to(config.resolve())
    versions = [p for p in src.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    if versions:
        for version in versions:
            _link_tree(version, model / version.name)
        return dest
    graphs = sorted(p for p in src.iterdir() if p.suffix == ".onnx" and p.is_file())
    if len(graphs) != 1:
        found = ", ".join(p.name for p in graphs) or "none"
        raise ModelStoreError(
            f"{src} holds no numeric version directory and not exactly one .onnx file ({found})"
        )
    version_dir = model / "1"
    version_dir.mkdir()
    for path in sorted(src.iterdir()):
        if path.name.startswith(".") or path == config or path == graphs[0]:
            continue
        if path.is_dir():
            _link_tree(path, version_dir / path.name)
        elif path.is_file():
            (version_dir / path.name).symlink_to(path.resolve())
    (version_dir / DEFAULT_MODEL_FILE).symlink_to(graphs[0].resolve())
    return dest
