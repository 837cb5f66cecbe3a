"""The core's record hook: what one answered request leaves for the operators' loop.

Per model version, decided once: its request-log sample rate and whether its predictions are
kept for feedback. Per request, when neither applies, one dict lookup. When feedback is kept
for the model, a request that came without an id gets one (a per-process random prefix and
a counter), so the answer carries an id the labels can name. Nothing here may fail a
request: an error is logged (rate-limited) and the request's own id is returned.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from turnout.model_store.registry import ServingVersion
from turnout.server.observe.feedback import Feedback, Judged, ModelPredictions
from turnout.server.observe.logs import RateLimitedLog
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.request_log import RequestLog, Rotation
from turnout.server.settings import Settings, parse_rate
from turnout.server.types import InferRequest

log = logging.getLogger("turnout.recording")


class _Plan:
    """What to do with one version's requests, decided at its first request."""

    __slots__ = ("dropped", "judged", "log_key", "model", "rate", "store", "version")

    def __init__(
        self,
        sv: ServingVersion,
        rate: float,
        store: ModelPredictions | None,
        judged: Judged | None,
        dropped: Any,
    ) -> None:
        self.model = sv.name
        self.version = sv.version
        self.log_key = ("requests", self.model, self.version)
        self.rate = rate
        self.store = store
        self.judged = judged
        self.dropped = dropped


class Recorder:
    def __init__(
        self,
        metrics: Metrics,
        *,
        request_log: RequestLog | None,
        feedback: Feedback | None,
        sample: float,
        rates: tuple[str, ...] = (),
        clock: Callable[[], float],
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.feedback = feedback
        self.sample = sample
        self.rates: dict[tuple[str, str], float] = {}
        for entry in rates:
            model, version, rate = parse_rate(entry)
            self.rates[(model, version)] = rate
        self.clock = clock
        self._rand = rand or random.Random().random
        self._plans: dict[ServingVersion, _Plan] = {}  # by identity: no name lookups per request
        self._prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)
        self._errors = RateLimitedLog(log)

    def rate(self, model: str, version: str) -> float:
        if self.request_log is None:
            return 0.0
        for key in ((model, version), (model, "")):
            if key in self.rates:
                return self.rates[key]
        return self.sample

    def _plan(self, sv: ServingVersion) -> _Plan:
        fb = self.feedback
        store = judged = None
        if fb is not None and fb.tracks(sv.name):
            judged = Judged(sv.session.signature)
            if judged.task is not None:
                store = fb.store(sv.name)
        plan = _Plan(
            sv,
            self.rate(sv.name, sv.version),
            store,
            judged,
            self.metrics.request_log_dropped.labels(sv.name, sv.version),
        )
        self._plans[sv] = plan
        return plan

    def record(
        self,
        req: InferRequest,
        sv: ServingVersion,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> str:
        """Keep what this request leaves; returns the id its answer carries."""
        rid = req.id
        try:
            plan = self._plans.get(sv) or self._plan(sv)
            if plan.store is not None:
                if not rid:
                    rid = f"{self._prefix}{next(self._counter)}"
                assert self.feedback is not None and plan.judged is not None
                self.feedback.add(plan.store, plan.model, rid, plan.version, outputs, plan.judged)
            rate = plan.rate
            if rate and (rate >= 1.0 or self._rand() < rate):
                assert self.request_log is not None
                doc = {
                    "ts": self.clock(),
                    "model": plan.model,
                    "version": plan.version,
                    "id": rid,
                    "routing_key": req.routing_key,
                    "parameters": req.parameters,
                    "inputs": feeds,
                    "outputs": outputs,
                }
                self.request_log.submit(plan.log_key, doc, plan.dropped)
        except Exception as exc:  # the request has its answer; recording must not take it away
            self._errors.error("recording a request failed: %s", exc, exc_info=exc)
        return rid

    def feedback_sink(self, model: str, version: str, doc: dict[str, Any]) -> None:
        """Accepted feedback, written beside the version's requests (for export)."""
        if self.request_log is not None:
            dropped = self.metrics.request_log_dropped.labels(model, version)
            self.request_log.submit(("feedback", model, version), doc, dropped)

    def forget(self, model: str, version: str) -> None:
        for sv in [sv for sv, plan in self._plans.items() if (plan.model, plan.version) == (model, version)]:
            del self._plans[sv]


def operators_loop(
    s: Settings, metrics: Metrics
) -> tuple[RequestLog | None, Feedback | None, Recorder | None]:
    """The request log, the feedback store and the core's record hook the settings ask for
    (each None when off; the hook when either is on)."""
    request_log = feedback = recorder = None
    if s.request_log_dir is not None:
        rotation = Rotation(
            s.request_log_max_file_bytes,
            s.request_log_max_file_secs,
            s.request_log_max_files,
            s.request_log_max_age_secs,
        )
        request_log = RequestLog(
            s.request_log_dir,
            metrics,
            rotation,
            queue_size=s.request_log_queue,
            queue_bytes=s.request_log_queue_bytes,
            exclude=s.request_log_exclude,
            tensors=s.request_log_tensors,
        )
    if s.feedback_models:
        feedback = Feedback(
            metrics,
            models=s.feedback_models,
            max_predictions=s.feedback_max_predictions,
            window=s.feedback_window,
            clock=time.time,
        )
    if request_log is not None or feedback is not None:
        recorder = Recorder(
            metrics,
            request_log=request_log,
            feedback=feedback,
            sample=s.request_log_sample,
            rates=s.request_log_rates,
            clock=time.time,
        )
        if feedback is not None:
            feedback.sink = recorder.feedback_sink
    return request_log, feedback, recorder
