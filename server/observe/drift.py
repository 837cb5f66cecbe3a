"""Drift monitoring wired into the server: what each request contributes, where references
come from and persist, and how statuses reach metrics, logs, a webhook and the router.

Features are a version's numeric inputs, flattened per row and concatenated in signature
order; the monitored output is the first float output with several columns (scores or
probabilities, whose argmax becomes the predicted class), else the first numeric output.
BYTES tensors are not monitored. The reference of a version is, in this order: one persisted
earlier under ``<state-dir>/drift`` (so a restart keeps it), a ``reference.npz`` shipped in the
version directory, or the first ``--drift-reference-rows`` rows served (then frozen and persisted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from turnout.drift import DriftConfig
from turnout.drift.fleet import window_counts
from turnout.drift.layout import column_step
from turnout.drift.process import DetectorSpec, MonitorProcess
from turnout.model_store.registry import ModelRegistry, ServingVersion
from turnout.model_store.signature import Signature
from turnout.server.observe.logs import RateLimitedLog
from turnout.server.observe.metrics import Metrics

log = logging.getLogger("turnout.drift")

# How often the request path's buffers go to the monitor process. Each flush concatenates the
# buffered rows on the event loop, so a short interval keeps each of these pauses short (the
# measured effect on p99 is in benchmarks/results/NOTES.md). The hand-off itself is a queue put on
# the loop; a sender thread then pickles the rows and writes the pipe. Reports flush first, so
# nothing waits on this.
FLUSH_INTERVAL_S = 0.1

StatusListener = Callable[[str, str, str, str, dict[str, Any]], None]  # model, version, old, new, report

STATUS_CODE = {"collecting": 0, "ok": 1, "warning": 2, "drift": 3}
ALARMS = ("warning", "drift")


def status_change_level(old: str, new: str) -> int:
    """The log level of a drift status change: WARNING when a version enters an alarm state or
    a worse one (ok -> warning, warning -> drift), INFO for the rest (collecting -> ok, recoveries)."""
    worse = STATUS_CODE.get(new, 0) > STATUS_CODE.get(old, 0)
    return logging.WARNING if worse and new in ALARMS else logging.INFO


class _Layout:
    """Which tensors of a version feed drift, decided once per version."""

    __slots__ = ("feature_names", "inputs", "output", "output_names")

    def __init__(self, sig: Signature) -> None:
        self.inputs = [s.name for s in sig.inputs if s.datatype != "BYTES"]
        numeric_out = [s for s in sig.outputs if s.datatype != "BYTES"]
        wide = [s for s in numeric_out if s.datatype.startswith("FP") and _width(s.shape) > 1]
        chosen = wide[0] if wide else (numeric_out[0] if numeric_out else None)
        self.output = chosen.name if chosen else None
        self.feature_names = tuple(
            n for s in sig.inputs if s.datatype != "BYTES" for n in _names(s.name, s.shape)
        )
        self.output_names = tuple(_names(chosen.name, chosen.shape)) if chosen else None


class _Plan:
    """One version's part of the request path, decided once: which tensors to take, and the
    lists they are appended to until the next flush."""

    __slots__ = (
        "batching", "inputs", "layout", "output", "single", "x_step", "x_width", "xs", "y_step", "y_width", "ys",
    )  # fmt: skip

    def __init__(self, layout: _Layout, batching: bool) -> None:
        self.layout = layout
        self.inputs = tuple(layout.inputs)
        self.single = len(self.inputs) == 1
        self.output = layout.output
        self.batching = batching
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        # columns per row, fixed by the first rows seen: a later request with another width
        # (a variable dimension) cannot join the same detector and is counted as malformed
        self.x_width = -1
        self.y_width = -1
        # of a tensor wider than the config's max_features, every k-th column (fixed with the widths)
        self.x_step = 1
        self.y_step = 1

    @classmethod
    def of(cls, sig: Signature) -> _Plan | None:
        layout = _Layout(sig)
        return cls(layout, sig.batching) if layout.inputs else None


def _width(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d if d > 0 else 1
    return n


def _names(name: str, shape: tuple[int, ...]) -> list[str]:
    if any(d < 0 for d in shape):
        return []  # variable width: names are assigned when the reference is captured
    w = _width(shape)
    return [name] if w == 1 and not shape else [f"{name}[{i}]" for i in range(w)]


class DriftWiring:
    """The core's ObserveHook plus the monitor's factory and callbacks."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        state_dir: Path | None,
        config: DriftConfig,
        sample: float,
        webhook: str | None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.state_dir = state_dir
        self.config = config
        self.webhook = webhook
        self.on_status: StatusListener | None = None  # the retraining hook, when on
        # per version: its layout and the rows its requests left since the last flush, handed to
        # the monitor in one concatenated batch per flush interval (None: nothing to monitor)
        self._plans: dict[tuple[str, str], _Plan | None] = {}
        self.max_buffered = 20_000
        self.sample = sample
        self._rand = random.Random().random
        self._bad_log = RateLimitedLog(log)  # malformed batches: a client can send them at will
        self.monitor = MonitorProcess(
            on_status_change=self._status_changed,
            on_window=self._window_closed,
            on_restart=metrics.drift_restarts.inc,
            on_bad_batch=self._bad_batch,
        )

    # ---- request path (ObserveHook) ---------------------------------------------------

    def observe(
        self, sv: ServingVersion, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        key = (sv.name, sv.version)
        try:
            plan = self._plans[key]
        except KeyError:
            plan = self._plans[key] = _Plan.of(sv.session.signature)
        if plan is None:
            return
        if self.sample < 1.0 and self._rand() >= self.sample:
            return
        xs = plan.xs
        if len(xs) >= self.max_buffered:
            self.metrics.drift_dropped.inc()
            return
        batching = plan.batching
        if plan.single:
            x = feeds.get(plan.inputs[0])
            if x is None:
                return
            if x.ndim != 2 or not batching:
                x = _rows(x, batching)
        else:
            parts = [_rows(feeds[n], batching) for n in plan.inputs if n in feeds]
            if not parts:
                return
            x = np.hstack(parts)
        y = None
        if plan.output is not None:
            y = outputs[plan.output]
            if not batching or y.ndim != 2:
                y = _rows(y, batching)
        if x.shape[1] != plan.x_width or (y is not None and y.shape[1] != plan.y_width):
            if not self._fits(plan, key, x, y):
                return
        xs.append(x[:, :: plan.x_step] if plan.x_step > 1 else x)  # a view: the flush copies the columns
        if y is not None:
            plan.ys.append(y[:, :: plan.y_step] if plan.y_step > 1 else y)

    def _fits(self, plan: _Plan, key: tuple[str, str], x: np.ndarray, y: np.ndarray | None) -> bool:
        """Whether rows of this width may join the version's earlier ones (the first fix it)."""
        if plan.x_width == -1:
            plan.x_width = x.shape[1]
            plan.y_width = y.shape[1] if y is not None else -1
            plan.x_step = column_step(plan.x_width, self.config.max_features)
            plan.y_step = column_step(max(plan.y_width, 0), self.config.max_features)
            return True
        if x.shape[1] != plan.x_width:
            what = f"{x.shape[1]} feature columns, earlier rows had {plan.x_width}"
        else:
            what = f"{y.shape[1] if y is not None else 0} output columns, earlier rows had {plan.y_width}"
        self._bad_batch(key[0], key[1], what)
        return False

    def _bad_batch(self, model: str, version: str, message: str) -> None:
        """Rows left out of monitoring (request path or monitor process): counted, one line."""
        self.metrics.drift_malformed.inc()
        self._bad_log.warning("drift: rows of model %s version %s not monitored: %s", model, version, message)

    def flush(self) -> None:
        """Hand what the requests left in the buffers to the monitor process (on the event loop)."""
        for key, plan in self._plans.items():
            if plan is None or not plan.xs:
                continue
            xs, ys = plan.xs, plan.ys
            plan.xs, plan.ys = [], []
            x = xs[0] if len(xs) == 1 else np.concatenate(xs)
            y = (ys[0] if len(ys) == 1 else np.concatenate(ys)) if ys else None
            if not self.monitor.offer(key, x, y, partial(self._spec, key, plan)):
                self.metrics.drift_dropped.inc(len(xs))

    async def flush_forever(self, interval: float = FLUSH_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.flush()
            except Exception as exc:  # drift must never take serving down
                self._bad_log.error("drift flush failed", exc_info=exc)

    # ---- the monitor process ---------------------------------------------------------

    def _reference_path(self, sv: ServingVersion) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / "drift" / sv.name / sv.version / sv.session.sha256[:16] / "reference.npz"

    def _spec(self, key: tuple[str, str], plan: _Plan) -> DetectorSpec | None:
        """What the monitor process needs to build this version's detector (None: unloaded)."""
        model, version = key
        try:
            sv = self.registry.resolve(model, version)
        except Exception:
            return None  # unloaded meanwhile
        layout = plan.layout
        cfg = replace(
            self.config,
            feature_names=layout.feature_names[:: plan.x_step] or None,
            output_names=(layout.output_names or ())[:: plan.y_step] or None,
        )
        return DetectorSpec(
            config=cfg,
            name=f"model {model} version {version}",
            persisted=self._reference_path(sv),
            shipped=sv.session.version_dir / "reference.npz",
        )

    def _window_closed(self, model: str, version: str, report: dict[str, Any]) -> None:
        self.metrics.drift_status.labels(model, version).set(STATUS_CODE.get(report.get("status", ""), 0))
        for col in report.get("features", []) + report.get("outputs", []):
            score = col.get("score")
            if score is not None:
                self.metrics.drift_score.labels(model, version, col["name"]).set(float(score))

    def _status_changed(self, model: str, version: str, old: str, new: str, report: dict[str, Any]) -> None:
        event = {"event": "drift_status", "model": model, "version": version, "old": old, "new": new}
        log.log(
            status_change_level(old, new),
            "model %s version %s: drift status %s -> %s",
            model,
            version,
            old,
            new,
            extra={"event": event},
        )
        self.metrics.drift_status.labels(model, version).set(STATUS_CODE.get(new, 0))
        if self.on_status is not None:
            self.on_status(model, version, old, new, report)
        if self.webhook:
            body = {
                **event,
                "window": report.get("window"),
                "features": report.get("features"),
                "outputs": report.get("outputs"),
            }
            threading.Thread(target=_post, args=(self.webhook, body), daemon=True).start()

    # ---- queries -----------------------------------------------------------------------

    def status(self, model: str, version: str) -> str | None:
        return self.monitor.statuses().get((model, version))

    def report(
        self, model: str, version: str, view: str = "window", histograms: bool = True
    ) -> dict[str, Any]:
        """A version's drift report from the monitor process. Blocks while the process answers:
        call it from a thread, not the event loop."""
        sv = self.registry.resolve(model, version)  # NotFound for unknown versions
        if view == "live":  # the counts of the window being filled: mergeable across workers and replicas
            live = self.monitor.call("live", model, sv.version) or {"rows": 0, "features": [], "outputs": []}
            return {"model_name": model, "model_version": sv.version, "view": "live", **live}
        rep, stats = self.monitor.call(
            "report", model, sv.version, "sliding" if view == "sliding" else "window", histograms
        )
        if rep is None:
            rep = {
                "status": "collecting",
                "window": {"rows": 0, "reference_ready": False},
                "features": [],
                "outputs": [],
            }
        rep["model_name"] = model
        rep["model_version"] = sv.version
        rep["monitor"] = stats
        return rep

    def counts(self, model: str, version: str) -> dict[str, Any]:
        """A version's reference and window counts, for a fleet-wide merge (drift/fleet.py).
        Blocks while the monitor process answers: call it from a thread."""
        sv = self.registry.resolve(model, version)
        counts = self.monitor.call("counts", model, sv.version) or window_counts(None, None, self.config)
        return {"model_name": model, "model_version": sv.version, **counts}

    async def counts_async(self, model: str, version: str) -> dict[str, Any]:
        self.flush()
        return await asyncio.to_thread(self.counts, model, version)

    async def report_async(
        self, model: str, version: str, view: str = "window", histograms: bool = True
    ) -> dict[str, Any]:
        """:meth:`report` for the event loop: flushes this process's buffers first, then waits
        for the monitor process in a thread."""
        self.flush()
        return await asyncio.to_thread(self.report, model, version, view, histograms)

    def forget(self, model: str, version: str) -> None:
        self._plans.pop((model, version), None)
        self.monitor.remove((model, version))

    def stop(self) -> None:
        self.monitor.stop(timeout=5.0)


def _rows(arr: np.ndarray, batching: bool) -> np.ndarray:
    if batching:
        return arr.reshape(arr.shape[0], -1) if arr.ndim != 2 else arr
    return arr.reshape(1, -1)


def _post(url: str, body: dict[str, Any]) -> None:
    try:
        req = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST")
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=5):
            pass
    except Exception as exc:  # a webhook that is down must not affect serving
        log.warning("drift webhook %s failed: %s", url, exc)
