"""MonitorProcess: the drift monitor in a child process, fed rows, queried, reporting events."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from turnout.drift import DriftConfig
from turnout.drift.process import DetectorSpec, MonitorProcess

pytestmark = pytest.mark.timeout(120)


def _wait(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_rows_reach_the_child_and_status_changes_come_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shipped = tmp_path / "reference.npz"
    np.savez(shipped, X=rng.normal(size=(5000, 3)))  # training rows, as a model ships them
    persisted = tmp_path / "state" / "reference.npz"
    changes: list[tuple[str, str, str, str]] = []
    windows: list[str] = []
    main_thread = threading.get_ident()
    threads: set[int] = set()

    def on_change(model: str, version: str, old: str, new: str, report: dict) -> None:
        threads.add(threading.get_ident())
        changes.append((model, version, old, new))

    proc = MonitorProcess(on_status_change=on_change, on_window=lambda m, v, r: windows.append(r["status"]))
    try:
        assert proc.pid is not None and proc.pid != os.getpid()
        spec = DetectorSpec(
            config=DriftConfig(window_rows=200), name="m/1", persisted=persisted, shipped=shipped
        )
        asked: list[int] = []

        def make_spec() -> DetectorSpec:
            asked.append(1)
            return spec

        for _ in range(5):  # 1,000 rows like the reference: ok
            assert proc.offer(("m", "1"), rng.normal(size=(200, 3)), None, make_spec)
        report, stats = proc.call("report", "m", "1", "window", False)
        assert report["status"] == "ok" and stats["rows"] == 1000
        assert asked == [1]  # the spec goes once per version
        _wait(lambda: proc.statuses().get(("m", "1")) == "ok")
        shifted = rng.normal(size=(200, 3))
        shifted[:, 1] += 3.0
        for _ in range(3):
            assert proc.offer(("m", "1"), shifted, None, make_spec)
        _wait(lambda: proc.statuses().get(("m", "1")) == "drift")
        assert ("m", "1", "ok", "drift") in changes
        assert threads and main_thread not in threads  # callbacks run on the reader thread
        assert "drift" in windows
        report, _ = proc.call("report", "m", "1", "window", True)
        assert [f["status"] for f in report["features"]].count("drift") == 1
        live = proc.call("live", "m", "1")
        assert live is not None and "features" in live
        assert proc.call("report", "other", "1", "window", False)[0] is None  # no rows, no detector
        proc.remove(("m", "1"))
        assert ("m", "1") not in proc.statuses()
        with pytest.raises(RuntimeError, match="unknown query"):
            proc.call("nonsense")
    finally:
        proc.stop()
    assert not proc._child.proc.is_alive()
    assert proc.offer(("m", "1"), np.zeros((1, 3)), None, lambda: None) is False  # stopped: dropped


def test_a_version_without_a_spec_is_ignored_and_a_dead_child_fails_queries() -> None:
    proc = MonitorProcess(timeout=5.0)
    try:
        assert proc.offer(("gone", "1"), np.zeros((4, 2)), None, lambda: None) is False  # unloaded
        proc._child.proc.kill()
        proc._child.proc.join(10)
        with pytest.raises(RuntimeError):
            proc.call("report", "gone", "1", "window", False)
    finally:
        proc.stop(timeout=2.0)


def test_a_dead_child_is_replaced_on_the_next_use(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    spec = DetectorSpec(config=DriftConfig(window_rows=100, reference_rows=200), name="m/1")
    restarted: list[int] = []
    proc = MonitorProcess(restart_after=0.0, on_restart=lambda: restarted.append(1))
    try:
        assert proc.offer(("m", "1"), rng.normal(size=(300, 2)), None, lambda: spec)
        _wait(lambda: proc.statuses().get(("m", "1")) == "ok")
        first = proc.pid
        proc._child.proc.kill()
        _wait(lambda: not proc._child.alive)
        assert proc.statuses() == {}  # what the dead child knew is forgotten
        asked: list[int] = []

        def again() -> DetectorSpec:
            asked.append(1)
            return spec

        assert proc.offer(("m", "1"), rng.normal(size=(300, 2)), None, again)
        assert proc.pid != first and proc.restarts == 1 and restarted == [1]
        assert asked == [1]  # the new child was told about the version again
        report, stats = proc.call("report", "m", "1", "window", False)
        assert stats["rows"] == 300 and report["status"] == "ok"
    finally:
        proc.stop()


def test_batches_the_child_refuses_come_back_as_bad_batch_events(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shipped = tmp_path / "reference.npz"
    np.savez(shipped, X=rng.normal(size=(1000, 3)))
    bad: list[tuple[str, str, str]] = []
    proc = MonitorProcess(on_bad_batch=lambda m, v, message: bad.append((m, v, message)))
    try:
        spec = DetectorSpec(config=DriftConfig(window_rows=200), name="m/1", persisted=None, shipped=shipped)
        assert proc.offer(("m", "1"), rng.normal(size=(10, 5)), None, lambda: spec)  # 5 columns, not 3
        _wait(lambda: bool(bad))
        assert bad[0][:2] == ("m", "1") and "columns" in bad[0][2]
        _, stats = proc.call("report", "m", "1", "window", False)
        assert stats["errors"] == 1
    finally:
        proc.stop()
