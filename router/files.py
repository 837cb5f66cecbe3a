"""POSIX file primitives of the control-plane store: atomic replace, ``flock``, reading backwards.

A file written with :func:`write_atomically` goes to a temporary file in the same directory,
is flushed and fsynced, then ``os.replace``-d over the old one, and the directory is fsynced:
a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@contextlib.contextmanager
def locked(lock_path: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on ``lock_path`` (exclusive or shared) for the ``with`` block; blocking."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_lock(lock_path: Path) -> int | None:
    """Take an exclusive ``flock`` on ``lock_path`` without waiting; the open descriptor holding it,
    or None when another process holds it. Closing the descriptor releases the lock."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def write_atomically(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temp file, fsync, rename, fsync dir)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Persist a directory's entries (after a rename); a no-op where the filesystem refuses."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` (created if missing) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def lines_backwards(handle: BinaryIO, block_size: int = 64 * 1024) -> Iterator[bytes]:
    """Yield the non-empty lines of a binary file, last line first."""
    handle.seek(0, os.SEEK_END)
    position = handle.tell()
    tail = b""
    while position > 0:
        step = min(block_size, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step) + tail
        lines = chunk.split(b"\n")
        tail = lines[0]
        for line in reversed(lines[1:]):
            if line.strip():
                yield line
    if tail.strip():
        yield tail
