"""The rate-limited logger: a burst per interval, then one line that counts what was dropped."""

from __future__ import annotations

import logging

import pytest

from turnout.server.observe.logs import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppressed_then_one_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), burst=3, interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, "test.limited")
    written = [limited.warning("bad batch %d", i) for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert [r.getMessage() for r in caplog.records] == ["bad batch 0", "bad batch 1", "bad batch 2"]
    clock.now += 9.9
    assert not limited.warning("still within the interval")
    clock.now += 0.1
    caplog.clear()
    assert limited.warning("bad batch %d", 11)
    assert [r.getMessage() for r in caplog.records] == ["suppressed 8 similar messages", "bad batch 11"]
    assert limited.suppressed == 0


def test_a_traceback_is_kept_when_given(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limited"), burst=1, interval=60.0, clock=Clock())
    caplog.set_level(logging.ERROR, "test.limited")
    try:
        raise KeyError("bug")
    except KeyError as exc:
        assert limited.error("internal error", exc_info=exc)
        assert not limited.error("internal error", exc_info=exc)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
