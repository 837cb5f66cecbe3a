"""The retraining hook without a network or real time: signatures, the retry schedule, a
sender driven by a fake clock and a fake HTTP call, and the events drift and accuracy raise."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from turnout.server.observe.performance import PerformanceTally
from turnout.server.observe.retrain import AccuracyRule, RetrainHook, accuracy_alarm, logged_slice
from turnout.server.observe.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    retry_delays,
    signature,
    verify,
)


class FakePost:
    """Answers each attempt from ``statuses`` (an exception instance is raised)."""

    def __init__(self, *statuses: int | OSError) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.calls.append((url, body, dict(headers)))
        answer = self.statuses.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _sender(post: FakePost, clock: Clock, outcomes: list[str], retries: int = 4) -> WebhookSender:
    return WebhookSender(
        "http://receiver/hook",
        SecretStr("k3y"),
        retries=retries,
        backoff=0.5,
        queue_size=2,
        clock=clock,
        on_outcome=lambda event, outcome: outcomes.append(outcome),
        post=post,
        sleep=clock.sleep,
    )


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"model":"iris"}'
    expected = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(b"k3y", "1700000000", body) == "sha256=" + expected
    sig = signature(b"k3y", "1700000000", body)
    assert verify(b"k3y", body, "1700000000", sig, now=1_700_000_100)
    assert not verify(b"k3y", body + b" ", "1700000000", sig, now=1_700_000_100)  # body changed
    assert not verify(b"other", body, "1700000000", sig, now=1_700_000_100)  # wrong key
    assert not verify(b"k3y", body, "1700000001", sig, now=1_700_000_100)  # timestamp changed
    assert not verify(b"k3y", body, "1700000000", sig, now=1_700_000_301)  # replayed too late
    assert not verify(b"k3y", body, "soon", sig, now=1_700_000_000)


def test_retry_schedule_doubles_up_to_a_cap() -> None:
    assert retry_delays(5, 0.5) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert retry_delays(4, 20.0, cap=60.0) == [20.0, 40.0, 60.0, 60.0]
    assert retry_delays(0, 1.0) == []


def test_sender_retries_then_delivers_each_attempt_signed_afresh() -> None:
    clock, outcomes = Clock(), []
    post = FakePost(500, OSError("connection refused"), 204)
    sender = _sender(post, clock, outcomes)
    assert sender.deliver({"model": "iris", "reason": "drift"})
    assert outcomes == ["delivered"]
    assert clock.sleeps == [0.5, 1.0]
    bodies = {body for _, body, _ in post.calls}
    assert len(bodies) == 1  # the same body every time
    body = bodies.pop()
    assert json.loads(body) == {"model": "iris", "reason": "drift"}
    stamps = [h[TIMESTAMP_HEADER] for _, _, h in post.calls]
    assert stamps == ["1700000000", "1700000000", "1700000001"]
    for _, _, headers in post.calls:
        assert verify(b"k3y", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], clock.now)


def test_sender_gives_up_after_a_bounded_number_of_attempts() -> None:
    clock, outcomes = Clock(), []
    post = FakePost(*([503] * 5))
    assert not _sender(post, clock, outcomes, retries=4).deliver({"reason": "accuracy"})
    assert len(post.calls) == 5 and clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert outcomes == ["failed"]


def test_a_full_queue_drops_and_counts() -> None:
    clock, outcomes = Clock(), []
    sender = _sender(FakePost(), clock, outcomes)  # not started: nothing leaves the queue
    assert sender.submit({"n": 1}) and sender.submit({"n": 2})
    assert not sender.submit({"n": 3})
    assert outcomes == ["dropped"]


def test_accuracy_rule() -> None:
    rule = AccuracyRule(threshold=0.8, drop=0.1, min_labelled=50)
    assert accuracy_alarm(rule, 0.5, 49, 0.9) is None  # too few rows to tell
    assert "below 0.8" in str(accuracy_alarm(rule, 0.79, 50, 0.8))
    assert "allowed drop 0.1" in str(accuracy_alarm(rule, 0.85, 50, 0.97))
    assert accuracy_alarm(rule, 0.9, 50, 0.95) is None
    assert not AccuracyRule().enabled


def _tally(outcomes: list[bool], tally: PerformanceTally | None = None) -> PerformanceTally:
    tally = tally or PerformanceTally(window=100, task="classification")
    tally.add_classified(outcomes)
    return tally


def test_accuracy_events_latch_until_recovery(tmp_path: Path) -> None:
    events: list[Mapping[str, Any]] = []
    clock = Clock()
    hook = RetrainHook(
        lambda e: events.append(e) or True,
        rule=AccuracyRule(threshold=0.8, min_labelled=100),
        log_dir=tmp_path / "log",
        slice_secs=600,
        clock=clock,
    )
    tally = _tally([True] * 100)
    hook.accuracy_judged("iris", "1", tally)
    assert events == []
    _tally([False] * 30, tally)  # window: 70 right of the last 100
    hook.accuracy_judged("iris", "1", tally)
    hook.accuracy_judged("iris", "1", tally)  # still low: no second event
    assert len(events) == 1
    event = events[0]
    assert (event["model"], event["version"], event["reason"]) == ("iris", "1", "accuracy")
    assert event["details"]["window_accuracy"] == 0.7 and event["details"]["window_rows"] == 100
    assert event["slice"]["since"] == clock.now - 600 and event["slice"]["until"] == clock.now
    _tally([True] * 100, tally)  # recovered: re-armed
    hook.accuracy_judged("iris", "1", tally)
    _tally([False] * 40, tally)
    hook.accuracy_judged("iris", "1", tally)
    assert len(events) == 2


def test_drift_event_once_per_entry_into_drift_with_its_window_as_slice(tmp_path: Path) -> None:
    events: list[Mapping[str, Any]] = []
    hook = RetrainHook(events.append, rule=AccuracyRule(), log_dir=None, slice_secs=600, clock=Clock())  # type: ignore[arg-type]
    report = {
        "window": {"rows": 200, "start": 1000.0, "end": 1060.0},
        "features": [{"name": "x[2]", "status": "drift", "score": 0.9}, {"name": "x[0]", "status": "ok"}],
        "outputs": [],
    }
    hook.drift_changed("iris", "1", "ok", "warning", report)
    hook.drift_changed("iris", "1", "warning", "drift", report)
    hook.drift_changed("iris", "1", "drift", "drift", report)
    assert len(events) == 1
    assert events[0]["details"]["drifted"] == [{"name": "x[2]", "score": 0.9, "status": "drift"}]
    assert events[0]["slice"] is None  # no request log


def test_logged_slice_names_the_directory_and_the_export_command(tmp_path: Path) -> None:
    s = logged_slice(tmp_path / "log dir", "my model", "2", 1_700_000_000.0, 1_700_000_060.0)
    assert s is not None
    assert s["path"] == str(tmp_path / "log dir" / "my_model" / "2")
    assert s["since_iso"] == "2023-11-14T22:13:20Z"
    assert s["export_command"] == (
        f"turnout export --log-dir '{tmp_path / 'log dir'}' --model 'my model' --version 2"
        " --since 2023-11-14T22:13:20Z --out my_model-2-1700000000.parquet"
    )


def test_the_sender_thread_delivers_in_order_and_stops() -> None:
    clock, outcomes = Clock(), []
    post = FakePost(204, 204)
    sender = _sender(post, clock, outcomes).start()
    assert sender.submit({"n": 1}) and sender.submit({"n": 2})
    sender.close()
    assert [json.loads(body) for _, body, _ in post.calls] == [{"n": 1}, {"n": 2}]
    assert outcomes == ["delivered", "delivered"]
