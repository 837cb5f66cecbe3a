"""The request log: sampled requests and accepted feedback, written off the request path.

The request path encodes a record as one JSON line (orjson, a few microseconds for a small
model's request, while its arrays are still in cache) and appends it, under a lock held for the
append only, to the pending bytes of its kind and version (one ``bytearray`` each). The line
object is freed at once by the thread that made it; the writer receives one buffer per version
and turn rather than thousands of small objects, which costs the event loop less than a queue
of lines did (the A/B is in ``benchmarks/results/NOTES.md``). Past ``queue_size`` pending records
or ``queue_bytes`` pending bytes a record is dropped and counted
(``turnout_request_log_dropped_total``), so logging never blocks or fails a request and never
holds more than that much memory. One writer thread wakes every ``FLUSH_INTERVAL_S`` (or when
half the bound is reached), takes the pending buffers and appends each to its files under
``<dir>/<model>/<version>/``: ``requests-*.jsonl`` and ``feedback-*.jsonl``. It does no Python
work per record: it cuts a buffer at line ends where a file must rotate and writes it (the GIL
is released during the write). A file is closed and a new one started past ``max_file_bytes`` or
``max_file_secs``; beyond ``max_files`` per kind and version the oldest files are deleted, and so
are files started more than ``max_age_secs`` ago (checked whenever a file is started).
A failure to encode or write is logged (rate-limited) and counted as drops (for a write, the lines
after the last cut that reached a file); the writer carries on.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from binascii import b2a_base64
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from turnout.model_store.datatypes import BY_V2, WIRE_DTYPE, from_numpy
from turnout.server.observe.logs import RateLimitedLog
from turnout.server.observe.metrics import Metrics

log = logging.getLogger("turnout.request_log")

FLUSH_INTERVAL_S = 0.1

Key = tuple[str, str, str]  # kind, model, version
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


def tensors_base64(tensors: dict[str, np.ndarray], exclude: Collection[str]) -> dict[str, Any]:
    """Each numeric tensor as ``{"datatype", "shape", "b64"}``: its raw little-endian bytes in
    row-major order, base64-encoded: exact, and cheaper to write than printing every number once a
    tensor holds more than a few dozen values. BYTES tensors stay JSON."""
    out: dict[str, Any] = {}
    for name, arr in tensors.items():
        if name in exclude:
            continue
        v2 = _LITTLE_ENDIAN.get(arr.dtype)
        if v2 is None:  # BYTES, or a byte order to swap first
            dt = from_numpy(arr.dtype)
            if dt is None or dt.itemsize == 0:
                out[name] = arr
                continue
            v2, arr = dt.v2, arr.astype(WIRE_DTYPE[dt.v2])
        out[name] = {
            "datatype": v2,
            "shape": arr.shape,
            "b64": b2a_base64(arr.tobytes(), newline=False).decode(),
        }
    return out


# numpy dtypes whose bytes are already the protocol's little-endian layout
_LITTLE_ENDIAN: dict[np.dtype, str] = {
    dt.numpy: name for name, dt in BY_V2.items() if name in WIRE_DTYPE and WIRE_DTYPE[name] == dt.numpy
}


def decode_tensor(value: Any) -> Any:
    """A logged tensor as nested lists, whichever form it was logged in."""
    if isinstance(value, dict) and "b64" in value and "datatype" in value:
        flat = np.frombuffer(base64.b64decode(value["b64"]), WIRE_DTYPE[value["datatype"]])
        return flat.reshape(value["shape"]).tolist()
    return value


TENSOR_FORMATS = {"json": tensors_json, "base64": tensors_base64}


@dataclass(frozen=True)
class Rotation:
    max_file_bytes: int
    max_file_secs: float
    max_files: int
    max_age_secs: float | None = None  # files started longer ago are deleted


class WriteFailed(Exception):
    """Writing a buffer failed (the ``OSError`` is its ``__cause__``) after its first ``written``
    bytes (whole lines) were written."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(str(cause))
        self.written = written


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

    def write(self, data: bytes | bytearray) -> None:
        """Append ``data`` (whole JSON lines), cut at line ends so that no file grows past
        ``max_file_bytes`` (a single longer line gets a file of its own). An ``OSError`` is raised
        as :class:`WriteFailed`, which tells how much was written before it."""
        view, i, n = memoryview(data), 0, len(data)
        limit = self.rotation.max_file_bytes
        try:
            while i < n:
                if self._file is not None and (
                    self.clock() - self._opened >= self.rotation.max_file_secs or self._size >= limit
                ):
                    self.close()
                if self._file is None:
                    self._open()
                end = n
                if self._size + (n - i) > limit:  # cut after the last line that fits
                    end = data.rfind(b"\n", i, i + limit - self._size) + 1
                    if end <= i:  # not even the next line fits
                        if self._size:
                            self._size = limit  # rotate, then write it into an empty file
                            continue
                        end = data.find(b"\n", i) + 1 or n
                self._file.write(view[i:end])
                self._file.flush()
                self._size += end - i
                i = end
        except OSError as exc:
            raise WriteFailed(i, exc) from exc

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
            try:
                self._file.close()  # the descriptor is released even when the last flush fails
            except OSError:
                pass
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
        queue_bytes: int = 64 << 20,
        exclude: Collection[str] = (),
        tensors: str = "json",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.rotation = rotation
        self.exclude = frozenset(exclude)
        self._tensors = TENSOR_FORMATS[tensors]
        self._reshape = bool(self.exclude) or tensors != "json"
        self.clock = clock
        self._lock = threading.Lock()  # guards the four fields below
        self._pending: dict[Key, bytearray] = {}
        self._records = 0
        self._bytes = 0
        self._max_records = queue_size  # 0 once stopping: nothing more is taken
        self._max_bytes = queue_bytes
        self._wake_records, self._wake_bytes = max(queue_size // 2, 1), max(queue_bytes // 2, 1)
        self._wake = threading.Event()  # early: half the bound is reached; or: stop
        self._files: dict[Key, RotatingFiles] = {}
        self._errors = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="turnout-request-log", daemon=True)
        self._thread.start()

    # ---- request path -----------------------------------------------------------------

    def submit(self, key: Key, doc: dict[str, Any], dropped: Any) -> None:
        """Encode ``doc`` and add it to the pending bytes of ``key`` (kind, model, version); when
        the bound is reached (or the record cannot be encoded) count one drop on ``dropped``."""
        if self._records >= self._max_records:  # checked again under the lock
            dropped.inc()
            return
        try:
            line = encode(self._shape(doc) if self._reshape else doc)
        except Exception as exc:  # an unencodable record is dropped, never the request
            self._errors.warning("request log: record not encoded: %s", exc)
            dropped.inc()
            return
        with self._lock:
            records, size = self._records + 1, self._bytes + len(line)
            if records > self._max_records or size > self._max_bytes:
                full = True
            else:
                full = False
                buf = self._pending.get(key)
                if buf is None:
                    self._pending[key] = bytearray(line)
                else:
                    buf += line
                self._records, self._bytes = records, size
        if full:
            dropped.inc()
        elif records == self._wake_records or (
            size >= self._wake_bytes and size - len(line) < self._wake_bytes
        ):
            self._wake.set()

    # ---- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            with self._lock:  # what is pending now; later records wait for the next turn
                pending, self._pending = self._pending, {}
                self._records = self._bytes = 0
                stop = self._max_records == 0  # set under the lock: nothing is added after this turn
            for key, data in pending.items():
                self._write(key, data)
            if stop:
                for files in self._files.values():
                    files.close()
                return

    def _shape(self, doc: dict[str, Any]) -> dict[str, Any]:
        ex = self.exclude
        out = {k: v for k, v in doc.items() if k not in ex}
        for part in ("inputs", "outputs"):
            if part in out:
                out[part] = self._tensors(out[part], ex)
        return out

    def _write(self, key: Key, data: bytearray) -> None:
        kind, model, version = key
        files = self._files.get(key)
        if files is None:
            files = self._files[key] = RotatingFiles(
                self.root / path_component(model) / path_component(version), kind, self.rotation, self.clock
            )
        lines = data.count(b"\n")
        try:
            files.write(data)
            written = lines
        except WriteFailed as exc:  # the lines before the failing cut are in a file; the rest is lost
            self._errors.warning("request log: cannot write %s: %s", files.dir, exc)
            files.close()
            written = data.count(b"\n", 0, exc.written)
            self.metrics.request_log_dropped.labels(model, version).inc(lines - written)
        if kind == "requests" and written:
            self.metrics.request_log_written.labels(model, version).inc(written)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the files and end the thread."""
        if not self._thread.is_alive():
            return
        with self._lock:
            self._max_records = 0
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
