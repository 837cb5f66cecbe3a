"""The request log's writer: JSON lines, rotation by size and age, retention, exclusion, drops."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from turnout.model_store.datatypes import WIRE_DTYPE
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.request_log import (
    RequestLog,
    RotatingFiles,
    Rotation,
    WriteFailed,
    decode_tensor,
    encode,
    tensors_base64,
)


def doc(i: int) -> dict[str, Any]:
    return {
        "ts": float(i),
        "model": "m",
        "version": "1",
        "id": f"r{i}",
        "routing_key": None,
        "parameters": {},
        "inputs": {
            "x": np.arange(4, dtype=np.float32).reshape(1, 4),
            "s": np.array([b"a", b"\xff"], dtype=object),
        },
        "outputs": {"y": np.array([i])},
    }


def lines(directory: Path, prefix: str = "requests") -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(directory.glob(f"{prefix}-*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def submit_while_the_writer_waits(rl: RequestLog, metrics: Metrics, n: int) -> None:
    """Submit ``n`` records while the writer is held at its first write, then let it finish."""
    gate = threading.Event()
    original = rl._write

    def slow_write(key: tuple[str, str, str], batch: bytearray) -> None:
        gate.wait(10)
        original(key, batch)

    rl._write = slow_write  # type: ignore[method-assign,assignment]
    dropped = metrics.request_log_dropped.labels("m", "1")
    for i in range(n):
        rl.submit(("requests", "m", "1"), doc(i), dropped)
    gate.set()
    rl.close()


def test_rotation_by_size_keeps_files_under_the_limit_and_prunes_old_ones(tmp_path: Path) -> None:
    now = [0.0]
    files = RotatingFiles(tmp_path, "requests", Rotation(100, 1e9, 3), lambda: now[0])
    for i in range(20):
        now[0] += 0.01
        files.write(b'{"i": %d, "pad": "0123456789"}\n' % i)
    files.close()
    kept = sorted(tmp_path.glob("requests-*.jsonl"))
    assert len(kept) == 3
    assert all(f.stat().st_size <= 100 for f in kept)
    assert [json.loads(x)["i"] for f in kept for x in f.read_text().splitlines()][-1] == 19


def test_rotation_by_age(tmp_path: Path) -> None:
    now = [0.0]
    files = RotatingFiles(tmp_path, "requests", Rotation(1 << 20, 10.0, 100), lambda: now[0])
    for _ in range(5):
        files.write(b"{}\n")
        now[0] += 6.0  # every other line crosses 10 s
    files.close()
    assert len(list(tmp_path.glob("requests-*.jsonl"))) == 3


def test_records_are_json_lines_with_exclusions(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    rl = RequestLog(
        tmp_path, metrics, Rotation(1 << 20, 1e9, 10), queue_size=100, exclude=("routing_key", "s")
    )
    dropped = metrics.request_log_dropped.labels("m", "1")
    for i in range(3):
        rl.submit(("requests", "m", "1"), doc(i), dropped)
    rl.submit(("feedback", "m", "1"), {"id": "r1", "label": 2}, dropped)
    rl.close()
    got = lines(tmp_path / "m" / "1")
    assert [g["id"] for g in got] == ["r0", "r1", "r2"]
    assert "routing_key" not in got[0]
    assert got[0]["inputs"] == {"x": [[0.0, 1.0, 2.0, 3.0]]}
    assert got[2]["outputs"] == {"y": [2]}
    assert lines(tmp_path / "m" / "1", "feedback") == [{"id": "r1", "label": 2}]
    assert (
        metrics.registry.get_sample_value("turnout_request_log_written_total", {"model": "m", "version": "1"})
        == 3
    )


def test_bytes_tensors_are_text_or_base64(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    rl = RequestLog(tmp_path, metrics, Rotation(1 << 20, 1e9, 10), queue_size=10)
    rl.submit(("requests", "m", "1"), doc(0), metrics.request_log_dropped.labels("m", "1"))
    rl.close()
    assert lines(tmp_path / "m" / "1")[0]["inputs"]["s"] == ["a", {"b64": "/w=="}]


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    rl = RequestLog(tmp_path, metrics, Rotation(1 << 20, 1e9, 10), queue_size=4)
    submit_while_the_writer_waits(rl, metrics, 50)
    written = metrics.registry.get_sample_value(
        "turnout_request_log_written_total", {"model": "m", "version": "1"}
    )
    lost = metrics.registry.get_sample_value(
        "turnout_request_log_dropped_total", {"model": "m", "version": "1"}
    )
    assert (
        lost is not None and lost >= 30
    )  # only the queue (4) and what the writer took before it blocked got through
    assert written == 50 - lost == len(lines(tmp_path / "m" / "1"))


def test_an_unwritable_directory_counts_drops_and_the_writer_survives(tmp_path: Path) -> None:
    blocker = tmp_path / "m"
    blocker.write_text("not a directory")
    metrics = Metrics(CollectorRegistry())
    rl = RequestLog(tmp_path, metrics, Rotation(1 << 20, 1e9, 10), queue_size=10)
    rl.submit(("requests", "m", "1"), doc(0), metrics.request_log_dropped.labels("m", "1"))
    rl.submit(("requests", "n", "1"), doc(1), metrics.request_log_dropped.labels("n", "1"))
    rl.close()
    assert (
        metrics.registry.get_sample_value("turnout_request_log_dropped_total", {"model": "m", "version": "1"})
        == 1
    )
    assert len(lines(tmp_path / "n" / "1")) == 1


def test_files_older_than_the_age_limit_are_deleted_when_a_file_starts(tmp_path: Path) -> None:
    now = [1000.0]
    files = RotatingFiles(
        tmp_path, "requests", Rotation(1 << 20, 10.0, 100, max_age_secs=25.0), lambda: now[0]
    )
    (tmp_path / "requests-notours.jsonl").write_text("{}\n")  # a name without a start time: kept
    for _ in range(6):
        files.write(b"{}\n")
        now[0] += 10.0  # a new file every write (age rotation)
    files.close()
    kept = sorted(p.name for p in tmp_path.glob("requests-*.jsonl"))
    # files started at 1000..1050; the last start (1050) deleted those before 1025
    assert len(kept) == 4 and "requests-notours.jsonl" in kept


def test_a_buffer_of_many_lines_is_cut_at_line_ends_where_files_rotate(tmp_path: Path) -> None:
    files = RotatingFiles(tmp_path, "requests", Rotation(100, 1e9, 100), lambda: 0.0)
    lines_ = [b'{"i": %d, "pad": "0123456789"}\n' % i for i in range(20)]
    files.write(lines_[0])  # a part-filled file first
    files.write(b"".join(lines_[1:]))
    files.close()
    kept = sorted(tmp_path.glob("requests-*.jsonl"))
    assert all(0 < f.stat().st_size <= 100 for f in kept)
    assert all(f.read_bytes().endswith(b"\n") for f in kept)
    got = [json.loads(x)["i"] for f in kept for x in f.read_text().splitlines()]
    assert got == list(range(20))


def test_a_line_longer_than_the_file_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    files = RotatingFiles(tmp_path, "requests", Rotation(20, 1e9, 100), lambda: 0.0)
    files.write(b'{"a":1}\n' + b'{"long":"' + b"x" * 40 + b'"}\n' + b'{"b":2}\n')
    files.close()
    sizes = [f.stat().st_size for f in sorted(tmp_path.glob("requests-*.jsonl"))]
    assert sizes == [8, 52, 8]


def test_the_byte_bound_drops_and_counts(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    size = len(encode(doc(0)))  # one line
    rl = RequestLog(tmp_path, metrics, Rotation(1 << 20, 1e9, 10), queue_size=1000, queue_bytes=3 * size)
    submit_while_the_writer_waits(rl, metrics, 40)
    lost = metrics.registry.get_sample_value(
        "turnout_request_log_dropped_total", {"model": "m", "version": "1"}
    )
    assert lost is not None and lost >= 30
    assert len(lines(tmp_path / "m" / "1")) == 40 - lost


def test_base64_tensors_round_trip_exactly_in_every_datatype() -> None:
    rng = np.random.default_rng(3)
    tensors: dict[str, np.ndarray] = {
        name: (rng.random((2, 3)) * 100).astype(dtype) for name, dtype in WIRE_DTYPE.items()
    }
    tensors["strided"] = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]  # not contiguous
    tensors["swapped"] = np.array([1.5, -2.25], dtype=">f8")  # big-endian: swapped to the wire order
    tensors["text"] = np.array([b"ok", b"\xff"], dtype=object)  # BYTES stay JSON
    tensors["secret"] = np.zeros(2, np.float32)
    logged = json.loads(encode(tensors_base64(tensors, {"secret"})))
    assert "secret" not in logged
    assert logged["FP32"]["datatype"] == "FP32" and logged["FP32"]["shape"] == [2, 3]
    assert logged["swapped"]["datatype"] == "FP64"
    assert logged["text"] == ["ok", {"b64": "/w=="}]
    for name, arr in tensors.items():
        if name in ("secret", "text"):
            continue
        back = np.array(decode_tensor(logged[name]), dtype=arr.dtype)
        assert back.shape == arr.shape and np.array_equal(back, arr), name
    assert decode_tensor([[1.0, 2.0]]) == [[1.0, 2.0]]  # the json form passes through
    assert decode_tensor({"b64": "/w=="}) == {"b64": "/w=="}  # a non-UTF-8 BYTES element is no tensor


def test_the_log_writes_base64_tensors_when_asked(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    rl = RequestLog(tmp_path, metrics, Rotation(1 << 20, 3600, 10), queue_size=10, tensors="base64")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    rl.submit(
        ("requests", "m", "1"),
        {"id": "a", "inputs": {"x": x}, "outputs": {}},
        metrics.request_log_dropped.labels("m", "1"),
    )
    rl.close()
    (line,) = lines(tmp_path / "m" / "1")
    assert line["inputs"]["x"]["datatype"] == "FP32"
    assert decode_tensor(line["inputs"]["x"]) == x.tolist()


class SecondFileFails(RotatingFiles):
    """A disk that refuses the second file (ENOSPC) and accepts every other."""

    def _open(self) -> None:
        self.opened = getattr(self, "opened", 0) + 1
        if self.opened == 2:
            raise OSError(28, "No space left on device")
        super()._open()


def test_a_failed_write_tells_how_much_reached_a_file_and_the_files_recover(tmp_path: Path) -> None:
    files = SecondFileFails(tmp_path, "requests", Rotation(100, 1e9, 100), lambda: 0.0)
    data = b"".join(b'{"i": %d, "pad": "0123456789"}\n' % i for i in range(10))  # 30 bytes a line
    with pytest.raises(WriteFailed) as failed:
        files.write(data)
    assert failed.value.written == 90  # three lines fit the first file; the second could not start
    assert isinstance(failed.value.__cause__, OSError)
    files.write(b'{"i": 10}\n')  # the next buffer goes to a third file
    files.close()
    got = lines(tmp_path)
    assert [g["i"] for g in got] == [0, 1, 2, 10]


def test_lines_written_before_a_failure_count_as_written_the_rest_as_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import turnout.server.observe.request_log as request_log

    monkeypatch.setattr(request_log, "RotatingFiles", SecondFileFails)
    metrics = Metrics(CollectorRegistry())
    size = len(encode(doc(0)))
    rl = RequestLog(tmp_path, metrics, Rotation(3 * size, 1e9, 100), queue_size=100)
    submit_while_the_writer_waits(rl, metrics, 10)  # one buffer of ten lines, three to a file
    labels = {"model": "m", "version": "1"}
    written = metrics.registry.get_sample_value("turnout_request_log_written_total", labels)
    dropped = metrics.registry.get_sample_value("turnout_request_log_dropped_total", labels)
    assert (written, dropped) == (3, 7)
    assert [g["id"] for g in lines(tmp_path / "m" / "1")] == ["r0", "r1", "r2"]
