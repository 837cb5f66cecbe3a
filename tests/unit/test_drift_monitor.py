"""DriftMonitor: bounded queue, drops, sampling, background processing, callbacks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from turnout.drift import DriftConfig, DriftDetector, DriftMonitor, Reference

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(0)
    return Reference.from_arrays(rng.normal(size=(5000, 4)), outputs=rng.random((5000, 1)))


def _factory(reference: Reference, window: int = 200):
    def make(model: str, version: str) -> DriftDetector | None:
        if model == "disabled":
            return None
        return DriftDetector(reference, DriftConfig(window_rows=window), name=f"{model}/{version}")

    return make


def test_drops_are_counted_when_the_queue_is_full(reference: Reference) -> None:
    monitor = DriftMonitor(_factory(reference), queue_size=2, autostart=False)
    rng = np.random.default_rng(1)
    results = [monitor.offer("m", "1", rng.normal(size=(10, 4))) for _ in range(5)]
    assert results == [True, True, False, False, False]
    stats = monitor.stats()
    assert stats["dropped"] == 3 and stats["enqueued"] == 2 and stats["queue_depth"] == 2
    monitor.start()
    assert monitor.flush(10)
    assert monitor.stats()["processed"] == 2 and monitor.stats()["rows"] == 20
    monitor.stop()
    assert monitor.offer("m", "1", rng.normal(size=(10, 4))) is False


def test_items_are_processed_off_thread_with_callbacks(reference: Reference) -> None:
    windows: list[tuple[str, str, str]] = []
    changes: list[tuple[str, str]] = []
    threads: set[str] = set()

    def on_window(model: str, version: str, report: dict) -> None:
        threads.add(threading.current_thread().name)
        windows.append((model, version, report["status"]))

    def on_change(model: str, version: str, old: str, new: str, report: dict) -> None:
        changes.append((old, new))

    rng = np.random.default_rng(2)
    with DriftMonitor(_factory(reference), on_window=on_window, on_status_change=on_change) as monitor:
        for _ in range(40):  # 400 rows of single-digit batches: coalesced by the worker
            monitor.offer("m", "1", rng.normal(size=(10, 4)), rng.random((10, 1)))
        assert monitor.flush(10)
        assert monitor.report("m", "1")["status"] == "ok"
        for _ in range(20):
            monitor.offer("m", "1", rng.normal(size=(10, 4)) + 2.0, rng.random((10, 1)))
        assert monitor.flush(10)
        report = monitor.report("m", "1")
        assert report is not None and report["status"] == "drift"
        assert monitor.report("m", "2") is None
        assert monitor.statuses() == {("m", "1"): "drift"}
    # on_window fires once per coalesced batch that closed windows (3 windows here, in 2 or 3 calls).
    assert windows[0][2] == "ok" and windows[-1][2] == "drift" and 2 <= len(windows) <= 3
    assert changes == [("collecting", "ok"), ("ok", "drift")]
    assert threads == {"drift-monitor"}


def test_sampling_and_disabled_versions(reference: Reference) -> None:
    rng = np.random.default_rng(3)
    with DriftMonitor(_factory(reference), sample_fraction=0.0) as monitor:
        assert not monitor.offer("m", "1", rng.normal(size=(5, 4)))
        assert monitor.stats()["sampled_out"] == 1
    with DriftMonitor(_factory(reference), sample_fraction=0.5, seed=7) as monitor:
        accepted = sum(monitor.offer("m", "1", rng.normal(size=(5, 4))) for _ in range(400))
        assert 150 < accepted < 250
        assert monitor.flush(10)
        assert monitor.stats()["rows"] == 5 * accepted
    with DriftMonitor(_factory(reference)) as monitor:
        assert monitor.offer("disabled", "1", rng.normal(size=(5, 4)))
        assert monitor.flush(10)
        assert monitor.stats()["ignored"] == 1 and monitor.report("disabled", "1") is None


def test_bad_batches_are_counted_and_the_worker_survives(reference: Reference) -> None:
    rng = np.random.default_rng(4)
    with DriftMonitor(_factory(reference), max_coalesce=1) as monitor:
        monitor.offer("m", "1", rng.normal(size=(5, 3)))  # wrong number of features
        monitor.offer("m", "1", rng.normal(size=(200, 4)))
        assert monitor.flush(10)
        stats = monitor.stats()
        assert stats["errors"] == 1 and stats["processed"] == 2
        assert monitor.detector("m", "1").windows_completed == 1


def test_bad_batches_go_to_the_callback_or_one_line_never_a_traceback(
    reference: Reference, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    bad: list[tuple[str, str, str]] = []
    with DriftMonitor(_factory(reference), max_coalesce=1, on_bad_batch=lambda *a: bad.append(a)) as monitor:
        for _ in range(3):
            monitor.offer("m", "1", rng.normal(size=(5, 3)))
        assert monitor.flush(10)
    assert len(bad) == 3 and bad[0][:2] == ("m", "1") and "columns" in bad[0][2]
    caplog.clear()
    with DriftMonitor(_factory(reference), max_coalesce=1) as monitor:
        for _ in range(3):
            monitor.offer("m", "1", rng.normal(size=(5, 3)))
        assert monitor.flush(10)
        assert monitor.stats()["errors"] == 3
    lines = [r for r in caplog.records if r.name == "drift.monitor"]
    assert len(lines) == 1 and lines[0].exc_info is None and "skipped" in lines[0].getMessage()


def test_stop_without_drain_discards_the_queue(reference: Reference) -> None:
    monitor = DriftMonitor(_factory(reference), autostart=False)
    for _ in range(3):
        monitor.offer("m", "1", np.zeros((5, 4)))
    monitor.stop(drain=False)
    stats = monitor.stats()
    assert stats["dropped"] == 3 and stats["pending"] == 0 and stats["queue_depth"] == 0
    assert monitor.flush(0.1)


def test_installed_detectors_and_removal(reference: Reference) -> None:
    with DriftMonitor(lambda model, version: None) as monitor:
        detector = DriftDetector(reference, DriftConfig(window_rows=100))
        monitor.set_detector("m", "1", detector)
        monitor.offer("m", "1", np.random.default_rng(5).normal(size=(100, 4)))
        assert monitor.flush(10)
        assert detector.windows_completed == 1
        monitor.remove("m", "1")
        assert monitor.detector("m", "1") is None
