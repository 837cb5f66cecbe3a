"""The request log: sampled requests and accepted feedback, written off the request path.

The request path encodes a record as one JSON line (orjson, about a microsecond for a small
model's request, while its arrays are still in cache) and appends it to a bounded queue (a deque:
no lock, and no wake-up of the writer per record); a full queue drops the record and counts it
(``turnout_request_log_dropped_total``), so logging never blocks or fails a request. One writer
thread wakes every ``FLUSH_INTERVAL_S`` (or when the queue is half full), takes everything queued
and appends it to per-version files under ``<dir>/<model>/<version>/``: ``requests-*.jsonl`` and
``feedback-*.jsonl``. The writer does almost no Python work per record: it joins lines and
writes them (the GIL is released during the write), so it never holds the GIL for long while
the event loop waits for it. A file is closed and a new one started past ``max_file_bytes`` or
``max_file_secs``; beyond ``max_files`` per kind and version the oldest files are deleted, and so
are files started more than ``max_age_secs`` ago (checked whenever a file is started).
A failure to encode or write is logged (rate-limited) and counted as drops; the writer carries on.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from turnout.server.observe.logs import RateLimitedLog
from turnout.server.observe.metrics import Metrics

log = logging.getLogger("turnout.request_log")

FLUSH_INTERVAL_S = 0.5

# a record as the request path gives it: (kind, model, version, document)
Record = tuple[str, str, str, dict[str, Any]]
# and as it waits for the writer: (kind, model, version, JSON line)
Line = tuple[str, str, str, bytes]
RECORD_FIELDS = ("ts", "model", "version", "id", "routing_key", "parameters", "inputs", "outputs")


def _default(obj: Any) -> Any:
    """What orjson cannot encode by itself: BYTES tensors, numpy scalars, odd arrays."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def tensors_json(tensors: dict[str, np.ndarray], exclude: Collection[str]) -> dict[str, Any]:
    return {name: arr for name, arr in tensors.items() if name not in exclude}


@dataclass(frozen=True)
class Rotation:
    max_file_bytes: int
    max_file_secs: float
    max_files: int
    max_age_secs: float | None = None  # files started longer ago are deleted


class RotatingFiles:
    """One kind of record of one version: appends lines, rotates by size and age, keeps the
    newest ``max_files`` files. Writer thread only."""

    def __init__(self, directory: Path, prefix: str, rotation: Rotation, clock: Callable[[], float]) -> None:
        self.dir = directory
        self.prefix = prefix
        self.rotation = rotation
        self.clock = clock
        self._file: Any = None
        self._size = 0
        self._opened = 0.0
        self._seq = 0

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines``, as many at a time as fit the current file (one write each)."""
        i, n = 0, len(lines)
        while i < n:
            if self._file is not None and (
                self.clock() - self._opened >= self.rotation.max_file_secs
                or (self._size and self._size + len(lines[i]) > self.rotation.max_file_bytes)
            ):
                self.close()
            if self._file is None:
                self._open()
            room, total, j = self.rotation.max_file_bytes - self._size, len(lines[i]), i + 1
            while j < n and total + len(lines[j]) <= room:
                total += len(lines[j])
                j += 1
            self._file.write(b"".join(lines[i:j]))
            self._size += total
            i = j
        if self._file is not None:
            self._file.flush()

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        self._seq += 1
        path = self.dir / f"{self.prefix}-{int(now * 1000):014d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self._file = path.open("ab")
        self._size = 0
        self._opened = now
        self._prune()

    def _prune(self) -> None:
        files = sorted(self.dir.glob(f"{self.prefix}-*.jsonl"))  # oldest first: named by start time
        doomed = files[: max(0, len(files) - self.rotation.max_files)]
        if self.rotation.max_age_secs is not None:
            cutoff_ms = int((self.clock() - self.rotation.max_age_secs) * 1000)
            doomed += [f for f in files[len(doomed) :] if _started_ms(f) < cutoff_ms]
        for old in doomed:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RequestLog:
    """The bounded queue and its writer thread."""

    def __init__(
        self,
        root: Path,
        metrics: Metrics,
        rotation: Rotation,
        *,
        queue_size: int,
        exclude: Collection[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.rotation = rotation
        self.exclude = frozenset(exclude)
        self.clock = clock
        self._queue: deque[Line] = deque()
        self._max = queue_size
        self._wake_at = max(queue_size // 2, 1)
        self._wake = threading.Event()  # early: the queue is half full; or: stop
        self._stopping = False
        self._files: dict[tuple[str, str, str], RotatingFiles] = {}
        self._errors = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="turnout-request-log", daemon=True)
        self._thread.start()

    # ---- request path -----------------------------------------------------------------

    def submit(self, record: Record, dropped: Any) -> None:
        """Encode and queue ``record``; when the queue is full (or the record cannot be encoded)
        count one drop on ``dropped`` instead."""
        q = self._queue
        n = len(q)
        if n >= self._max or self._stopping:
            dropped.inc()
            return
        kind, model, version, doc = record
        try:
            line = encode(self._shape(doc) if self.exclude else doc)
        except Exception as exc:  # an unencodable record is dropped, never the request
            self._errors.warning("request log: record not encoded: %s", exc)
            dropped.inc()
            return
        q.append((kind, model, version, line))  # atomic: the writer pops from the other end
        if n + 1 == self._wake_at:
            self._wake.set()

    # ---- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            stop = self._stopping
            batch = []
            for _ in range(len(q)):  # what is queued now; later records wait for the next turn
                batch.append(q.popleft())
            groups: dict[tuple[str, str, str], list[bytes]] = {}
            for kind, model, version, line in batch:
                key = (kind, model, version)
                lines = groups.get(key)
                if lines is None:
                    groups[key] = [line]
                else:
                    lines.append(line)
            for key, lines in groups.items():
                self._write(key, lines)
            if stop and not q:  # a record appended as the stop began is written on one more turn
                for files in self._files.values():
                    files.close()
                return
            if stop:
                self._wake.set()

    def _shape(self, doc: dict[str, Any]) -> dict[str, Any]:
        ex = self.exclude
        out = {k: v for k, v in doc.items() if k not in ex}
        for part in ("inputs", "outputs"):
            if part in out:
                out[part] = tensors_json(out[part], ex)
        return out

    def _write(self, key: tuple[str, str, str], lines: list[bytes]) -> None:
        kind, model, version = key
        files = self._files.get(key)
        if files is None:
            files = self._files[key] = RotatingFiles(
                self.root / path_component(model) / path_component(version), kind, self.rotation, self.clock
            )
        try:
            files.write(lines)
        except OSError as exc:
            self._errors.warning("request log: cannot write %s: %s", files.dir, exc)
            files.close()
            self.metrics.request_log_dropped.labels(model, version).inc(len(lines))
            return
        if kind == "requests":
            self.metrics.request_log_written.labels(model, version).inc(len(lines))

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the files and end the thread."""
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("request log: the writer did not finish within %.0f s; queued records lost", timeout)


def _started_ms(path: Path) -> int:
    """When a log file was started, from its name (``<kind>-<ms>-<pid>-<n>.jsonl``)."""
    try:
        return int(path.name.split("-")[1])
    except (IndexError, ValueError):
        return 1 << 62  # not one of ours: never deleted for its age


def path_component(name: str) -> str:
    """A model or version name as one path component."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return cleaned if cleaned not in ("", ".", "..") else "_"
