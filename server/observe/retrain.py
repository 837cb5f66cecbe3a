"""The retraining hook: one signed webhook event (and one log line) each time a version's drift
alarm is raised or its live accuracy drops, naming the logged slice to retrain on.

An event is sent when a version's drift status enters ``drift``, and when its windowed
accuracy on ground-truth feedback (at least ``min_labelled`` rows in the window) falls below
``accuracy_threshold`` or more than ``accuracy_drop`` below its cumulative accuracy. Accuracy
alarms latch: another event comes only after the accuracy has recovered and dropped again.
Each worker process sends the events of what it observed.

The body (see :func:`retrain_event`) carries the model, version, reason, details and, when
request logging is on, the slice of the request log to retrain on: its directory, the time
range, and the ``turnout export`` command that extracts it. Delivery, signing and retries are
:mod:`server.observe.webhook`'s.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turnout.server.observe.drift import DriftWiring
from turnout.server.observe.feedback import Feedback
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.performance import PerformanceTally
from turnout.server.observe.request_log import path_component
from turnout.server.observe.webhook import WebhookSender
from turnout.server.settings import Settings

log = logging.getLogger("turnout.retrain")


@dataclass(frozen=True, slots=True)
class AccuracyRule:
    """When live accuracy is low enough to retrain (both limits optional)."""

    threshold: float | None = None
    drop: float | None = None
    min_labelled: int = 100

    @property
    def enabled(self) -> bool:
        return self.threshold is not None or self.drop is not None


def accuracy_alarm(
    rule: AccuracyRule, window_accuracy: float | None, window_rows: int, cumulative: float | None
) -> str | None:
    """Why the accuracy is too low (None: it is not, or too few labelled rows to tell)."""
    if window_accuracy is None or window_rows < rule.min_labelled:
        return None
    if rule.threshold is not None and window_accuracy < rule.threshold:
        return f"windowed accuracy {window_accuracy:.4f} over {window_rows} rows is below {rule.threshold:g}"
    if rule.drop is not None and cumulative is not None and cumulative - window_accuracy > rule.drop:
        return (
            f"windowed accuracy {window_accuracy:.4f} over {window_rows} rows is {cumulative - window_accuracy:.4f}"
            f" below the cumulative {cumulative:.4f} (allowed drop {rule.drop:g})"
        )
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def logged_slice(
    log_dir: Path | None, model: str, version: str, since: float, until: float
) -> dict[str, Any] | None:
    """Where the request log keeps the version's records of ``[since, until]`` and the command
    that extracts them (None when request logging is off)."""
    if log_dir is None:
        return None
    out = f"{path_component(model)}-{path_component(version)}-{int(since)}.parquet"
    command = [
        "turnout", "export", "--log-dir", str(log_dir), "--model", model, "--version", version,
        "--since", _iso(since), "--out", out,
    ]  # fmt: skip
    return {
        "request_log_dir": str(log_dir),
        "path": str(log_dir / path_component(model) / path_component(version)),
        "since": since,
        "until": until,
        "since_iso": _iso(since),
        "until_iso": _iso(until),
        "export_command": shlex.join(command),
    }


def retrain_event(
    model: str,
    version: str,
    reason: str,
    details: Mapping[str, Any],
    at: float,
    slice_: dict[str, Any] | None,
) -> dict[str, Any]:
    """The webhook body of one event; ``id`` lets a receiver drop a retried duplicate."""
    return {
        "event": "retrain",
        "id": uuid.uuid4().hex,
        "at": at,
        "model": model,
        "version": version,
        "reason": reason,
        "details": dict(details),
        "slice": slice_,
    }


class RetrainHook:
    """Turns drift status changes and judged feedback into retraining events."""

    def __init__(
        self,
        send: Callable[[Mapping[str, Any]], bool],
        *,
        rule: AccuracyRule,
        log_dir: Path | None,
        slice_secs: float,
        clock: Callable[[], float],
    ) -> None:
        self._send = send
        self.rule = rule
        self.log_dir = log_dir
        self.slice_secs = slice_secs
        self.clock = clock
        self._low: set[tuple[str, str]] = set()  # versions whose accuracy alarm is raised

    def drift_changed(self, model: str, version: str, old: str, new: str, report: Mapping[str, Any]) -> None:
        """A drift status change (from the monitor's thread): an event when ``drift`` is entered."""
        if new != "drift" or old == "drift":
            return
        now = self.clock()
        window = report.get("window") or {}
        since = float(window.get("start") or now - self.slice_secs)
        until = float(window.get("end") or now)
        drifted = [
            {"name": c.get("name"), "score": c.get("score"), "status": c.get("status")}
            for c in [*(report.get("features") or []), *(report.get("outputs") or [])]
            if c.get("status") == "drift"
        ]
        details = {"old_status": old, "new_status": new, "window": window, "drifted": drifted}
        self._emit(model, version, "drift", details, now, since, until)

    def accuracy_judged(self, model: str, version: str, tally: PerformanceTally) -> None:
        """After feedback was judged for a version (on the event loop): an event when its
        accuracy alarm is raised; recovery is logged and re-arms the alarm."""
        if not self.rule.enabled or tally.task != "classification":
            return
        outcomes, _ = tally.recent()
        window_accuracy = float(outcomes.mean()) if outcomes.size else None
        why = accuracy_alarm(self.rule, window_accuracy, int(outcomes.size), tally.accuracy)
        key = (model, version)
        if why is None:
            if key in self._low and window_accuracy is not None and outcomes.size >= self.rule.min_labelled:
                self._low.discard(key)
                log.info(
                    "model %s version %s: live accuracy recovered (%.4f)", model, version, window_accuracy
                )
            return
        if key in self._low:
            return
        self._low.add(key)
        now = self.clock()
        details = {
            "why": why,
            "window_accuracy": window_accuracy,
            "window_rows": int(outcomes.size),
            "cumulative_accuracy": tally.accuracy,
            "labelled": tally.labelled,
            "threshold": self.rule.threshold,
            "allowed_drop": self.rule.drop,
        }
        self._emit(model, version, "accuracy", details, now, now - self.slice_secs, now)

    def _emit(
        self,
        model: str,
        version: str,
        reason: str,
        details: dict[str, Any],
        now: float,
        since: float,
        until: float,
    ) -> None:
        event = retrain_event(
            model, version, reason, details, now, logged_slice(self.log_dir, model, version, since, until)
        )
        log.warning(
            "model %s version %s: retraining event (%s), id %s",
            model,
            version,
            reason,
            event["id"],
            extra={"event": {"event": "retrain", "model": model, "version": version, "reason": reason}},
        )
        self._send(event)


def wire_retrain(
    settings: Settings,
    metrics: Metrics,
    drift: DriftWiring | None,
    feedback: Feedback | None,
    clock: Callable[[], float] = time.time,
) -> WebhookSender | None:
    """When ``--retrain-webhook-url`` is set: the hook listening to drift and feedback, and its
    started sender (close it at shutdown); else None."""
    url = settings.retrain_webhook_url
    if not url:
        return None

    def outcome(event: Mapping[str, Any], result: str) -> None:
        metrics.retrain_events.labels(str(event.get("reason", "")), result).inc()

    sender = WebhookSender(
        url,
        settings.retrain_secret(),
        retries=settings.retrain_webhook_retries,
        backoff=settings.retrain_webhook_backoff_secs,
        queue_size=settings.retrain_webhook_queue,
        clock=clock,
        on_outcome=outcome,
    ).start()
    rule = AccuracyRule(
        settings.retrain_accuracy_threshold, settings.retrain_accuracy_drop, settings.retrain_min_labelled
    )
    hook = RetrainHook(
        sender.submit,
        rule=rule,
        log_dir=settings.request_log_dir,
        slice_secs=settings.retrain_slice_secs,
        clock=clock,
    )
    if drift is not None:
        drift.on_status = hook.drift_changed
    if feedback is not None:
        feedback.watch = hook.accuracy_judged
    if drift is None and not (feedback is not None and rule.enabled):
        log.warning("--retrain-webhook-url is set but neither drift monitoring nor an accuracy rule is on")
    return sender
