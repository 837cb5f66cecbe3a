"""Small file helpers shared by the drift package (atomic ``.npz`` writes, safe loads)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt


def atomic_save_npz(path: str | os.PathLike[str], arrays: Mapping[str, npt.NDArray[np.generic]]) -> Path:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` so that readers never see a torn file.

    The data goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
    ``path`` (``os.replace`` is atomic on POSIX and Windows). The directory entry is fsynced where the OS
    allows it, so the rename itself survives a power cut. Object arrays are refused: every file written
    here must be loadable with ``allow_pickle=False``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for key, value in arrays.items():
        if value.dtype.kind == "O":
            raise TypeError(f"array {key!r} has dtype object; refusing to write a pickled npz")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **dict(arrays))  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - exotic filesystems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_npz(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[np.generic]]:
    """Read every array of an ``.npz`` file eagerly, never unpickling anything."""
    with np.load(Path(path), allow_pickle=False) as data:
        return {key: np.asarray(data[key]) for key in data.files}
