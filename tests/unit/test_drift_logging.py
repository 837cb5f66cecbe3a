"""A drift status change is a WARNING only when a version enters an alarm state or a worse one."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from turnout.drift import DriftConfig
from turnout.server.observe.drift import DriftWiring, status_change_level
from turnout.server.observe.metrics import Metrics


@pytest.mark.parametrize(
    ("old", "new", "level"),
    [
        ("collecting", "ok", logging.INFO),
        ("ok", "warning", logging.WARNING),
        ("collecting", "drift", logging.WARNING),
        ("warning", "drift", logging.WARNING),
        ("drift", "warning", logging.INFO),  # better, still watched through the metric and webhook
        ("drift", "ok", logging.INFO),
        ("warning", "ok", logging.INFO),
        ("ok", "collecting", logging.INFO),
    ],
)
def test_levels(old: str, new: str, level: int) -> None:
    assert status_change_level(old, new) == level


def test_the_status_change_is_logged_at_its_level(caplog: pytest.LogCaptureFixture) -> None:
    wiring = DriftWiring(
        None,  # type: ignore[arg-type]  # not used by status changes
        Metrics(CollectorRegistry()),
        state_dir=None,
        config=DriftConfig(),
        sample=1.0,
        webhook=None,
    )
    with caplog.at_level(logging.INFO, logger="turnout.drift"):
        wiring._status_changed("m", "1", "collecting", "ok", {})
        wiring._status_changed("m", "1", "ok", "drift", {})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "model m version 1: drift status collecting -> ok"),
        (logging.WARNING, "model m version 1: drift status ok -> drift"),
    ]
