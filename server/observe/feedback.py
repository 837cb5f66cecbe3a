"""Ground-truth feedback: recent predictions kept per model, joined with the labels that
arrive later, judged per version (:mod:`server.observe.performance`).

The request path adds one entry per answered request (references to its output arrays, no
copy, no computation) to a bounded, insertion-ordered store per model; past
``max_predictions`` the oldest entry is evicted (counted when it never received feedback,
and its id remembered in a bounded list so that feedback for it is told ``late`` rather than
``unknown``). Feedback is judged when it arrives, on the event loop, off the request path.

Which outputs a version is judged on is decided once per version: a classifier has an
integer or string output of one value per row (its predicted class) and/or a float output
of several values per row (class scores; the argmax is the class when there is no label
output, and the top probability is its confidence); otherwise a float output of one value
per row is a regression's prediction.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from turnout.model_store.signature import Signature
from turnout.server.errors import InvalidInput, NotFound
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.performance import (
    PerformanceTally,
    binned_estimate,
    expected_accuracy,
    same_label,
    top_probability,
)

OUTCOMES = ("accepted", "duplicate", "unknown", "late", "invalid")
MAX_ITEMS = 10_000  # feedback items per call
CHUNK = 256  # items judged between two turns of the event loop
ESTIMATE_EVERY_S = 5.0  # feedback calls refresh turnout_model_estimated_accuracy at most this often


def _width(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d if d > 0 else 1
    return n


class Judged:
    """Which outputs of a version are judged, and how."""

    __slots__ = ("label", "scores", "task", "value")

    def __init__(self, sig: Signature) -> None:
        labels = [
            s
            for s in sig.outputs
            if (s.datatype.startswith(("INT", "UINT")) or s.datatype == "BYTES") and _width(s.shape) == 1
        ]
        floats = [s for s in sig.outputs if s.datatype.startswith("FP")]
        wide = [s for s in floats if _width(s.shape) > 1]
        self.label = labels[0].name if labels else None
        self.scores = wide[0].name if wide else None
        narrow = [s for s in floats if _width(s.shape) == 1]
        self.value = narrow[0].name if narrow and not (self.label or self.scores) else None
        self.task = (
            "classification" if (self.label or self.scores) else ("regression" if self.value else None)
        )


class Prediction:
    """One answered request: references to the arrays it is judged on (no copy), nothing else."""

    __slots__ = ("label", "labelled", "scores", "ts", "value", "version")

    def __init__(self, version: str, ts: float, outputs: dict[str, np.ndarray], judged: Judged) -> None:
        self.version = version
        self.ts = ts
        self.label = outputs.get(judged.label) if judged.label is not None else None
        self.scores = outputs.get(judged.scores) if judged.scores is not None else None
        self.value = outputs.get(judged.value) if judged.value is not None else None
        self.labelled = False

    @property
    def task(self) -> str:
        return "regression" if self.label is None and self.scores is None else "classification"

    def rows(self) -> tuple[list[Any], np.ndarray | None]:
        """The predicted class (or value) of each row, and each row's confidence (or None)."""
        conf = None
        if self.scores is not None:
            scores = np.asarray(self.scores)
            scores = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
            conf = top_probability(scores)
        if self.label is not None:
            return list(np.asarray(self.label).reshape(-1)), conf
        if self.scores is not None:
            return list(np.argmax(scores, axis=1)), conf
        if self.value is None:
            return [], None
        return [float(v) for v in np.asarray(self.value).reshape(-1)], None


class ModelPredictions:
    """One model's recent predictions, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, Prediction] = OrderedDict()
        self.evicted: OrderedDict[str, None] = OrderedDict()  # ids evicted unlabelled, for "late"
        self.evictions = 0

    def add(self, rid: str, prediction: Prediction) -> bool:
        """Keep ``prediction``; True when an unlabelled one was evicted to make room."""
        items = self.items
        if rid in items:
            del items[rid]
        items[rid] = prediction
        if len(items) <= self.capacity:
            return False
        old_id, old = items.popitem(last=False)
        if old.labelled:
            return False
        self.evictions += 1
        self.evicted[old_id] = None
        if len(self.evicted) > self.capacity:
            self.evicted.popitem(last=False)
        return True


FeedbackSink = Callable[[str, str, dict[str, Any]], None]
TallyWatch = Callable[[str, str, PerformanceTally], None]


class Feedback:
    """Every tracked model's predictions and every version's performance."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        models: tuple[str, ...],
        max_predictions: int,
        window: int,
        clock: Callable[[], float],
        sink: FeedbackSink | None = None,
    ) -> None:
        self.metrics = metrics
        self.all_models = "*" in models
        self.models = frozenset(m for m in models if m != "*")
        self.max_predictions = max_predictions
        self.window = window
        self.clock = clock
        self.sink = sink  # accepted feedback goes to the request log too
        self.watch: TallyWatch | None = None  # told of each version judged (the retraining hook)
        self._stores: dict[str, ModelPredictions] = {}
        self._tallies: dict[tuple[str, str], PerformanceTally] = {}
        self._evicted_counters: dict[str, Any] = {}
        self._estimated_at: dict[tuple[str, str], float] = {}

    def tracks(self, model: str) -> bool:
        return self.all_models or model in self.models

    def store(self, model: str) -> ModelPredictions:
        store = self._stores.get(model)
        if store is None:
            store = self._stores[model] = ModelPredictions(self.max_predictions)
            self._evicted_counters[model] = self.metrics.feedback_evictions.labels(model)
        return store

    # ---- request path -------------------------------------------------------------------

    def add(
        self,
        store: ModelPredictions,
        model: str,
        rid: str,
        version: str,
        outputs: dict[str, np.ndarray],
        judged: Judged,
    ) -> None:
        if store.add(rid, Prediction(version, self.clock(), outputs, judged)):
            self._evicted_counters[model].inc()

    # ---- feedback -----------------------------------------------------------------------

    def apply(self, model: str, items: Any) -> dict[str, int]:
        """Join feedback items ``[{"id": ..., "label": ...}]`` with ``model``'s predictions."""
        store = self._check(model, items)
        counts = dict.fromkeys(OUTCOMES, 0)
        touched: set[str] = set()
        for item in items:
            counts[self._one(model, store, item, touched)] += 1
        self._finish(model, counts, touched)
        return counts

    async def apply_async(self, model: str, items: Any) -> dict[str, int]:
        """:meth:`apply` on the event loop, giving way to requests every ``CHUNK`` items."""
        store = self._check(model, items)
        counts = dict.fromkeys(OUTCOMES, 0)
        touched: set[str] = set()
        for n, item in enumerate(items, 1):
            counts[self._one(model, store, item, touched)] += 1
            if n % CHUNK == 0:
                await asyncio.sleep(0)
        self._finish(model, counts, touched)
        return counts

    def _check(self, model: str, items: Any) -> ModelPredictions:
        if not self.tracks(model):
            raise NotFound(f"model '{model}' does not keep predictions for feedback (--feedback-models)")
        if not isinstance(items, list):
            raise InvalidInput('\'feedback\' must be a list of {"id": ..., "label": ...}')
        if len(items) > MAX_ITEMS:
            raise InvalidInput(f"at most {MAX_ITEMS} feedback items per call, got {len(items)}")
        store = self._stores.get(model)
        if store is None:  # nothing served yet; a made-up name must not create a store or labels
            if model not in self.models:
                raise NotFound(f"no predictions of model '{model}' are kept")
            store = ModelPredictions(0)
        return store

    def _finish(self, model: str, counts: dict[str, int], touched: set[str]) -> None:
        for outcome, n in counts.items():
            if n:
                self.metrics.feedback.labels(model, outcome).inc(n)
        for version in touched:
            tally = self._tallies[(model, version)]
            if tally.accuracy is not None:
                self.metrics.accuracy.labels(model, version).set(tally.accuracy)
            if self.watch is not None:
                self.watch(model, version, tally)
            now = self.clock()
            if now - self._estimated_at.get((model, version), -math.inf) >= ESTIMATE_EVERY_S:
                self._estimated_at[(model, version)] = now  # the gauge, without a report asked for
                self._estimate(model, version, tally)

    def _one(self, model: str, store: ModelPredictions, item: Any, touched: set[str]) -> str:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "label" not in item:
            return "invalid"
        rid, label = item["id"], item["label"]
        p = store.items.get(rid)
        if p is None:
            return "late" if rid in store.evicted else "unknown"
        if p.labelled:
            return "duplicate"
        predicted, conf = p.rows()
        labels = label if isinstance(label, list) else [label]
        if len(labels) != len(predicted) or not all(_is_label(v) for v in labels):
            return "invalid"
        if not predicted:
            return "invalid"
        tally = self.tally(model, p.version, p.task)
        if tally.task == "classification":
            correct = [same_label(pv, lv) for pv, lv in zip(predicted, labels, strict=True)]
            tally.add_classified(correct, list(conf) if conf is not None else None)
        else:
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in labels):
                return "invalid"
            tally.add_regressed([float(pv) - float(lv) for pv, lv in zip(predicted, labels, strict=True)])
        p.labelled = True
        touched.add(p.version)
        if self.sink is not None:
            doc = {"ts": self.clock(), "model": model, "version": p.version, "id": rid, "label": label}
            self.sink(model, p.version, doc)
        return "accepted"

    def tally(self, model: str, version: str, task: str) -> PerformanceTally:
        key = (model, version)
        t = self._tallies.get(key)
        if t is None or t.task != task:
            t = self._tallies[key] = PerformanceTally(self.window, task)
        return t

    # ---- reports ------------------------------------------------------------------------

    def counts(self, model: str, version: str) -> tuple[int, int] | None:
        """A classifier version's (correct, labelled) rows so far (the rollout accuracy gate)."""
        t = self._tallies.get((model, version))
        if t is None or t.task != "classification":
            return None
        return t.correct, t.labelled

    def report(self, model: str, version: str) -> dict[str, Any]:
        if not self.tracks(model):
            raise NotFound(f"model '{model}' does not keep predictions for feedback (--feedback-models)")
        store = self._stores.get(model)
        tally = self._tallies.get((model, version))
        out: dict[str, Any] = {"model": model, "version": version}
        if tally is not None:
            out.update(tally.to_json())
        else:
            out.update({"labelled": 0, "accuracy": None})
        out["estimate"] = self._estimate(model, version, tally)
        if store is not None:
            out["store"] = {
                "predictions": len(store.items),
                "capacity": store.capacity,
                "evictions": store.evictions,
            }
        return out

    def _estimate(self, model: str, version: str, tally: PerformanceTally | None) -> dict[str, Any]:
        """The label-free estimate over the version's most recent predicted rows (and its
        gauge). O(window) numpy work per call: reports and feedback calls only."""
        store = self._stores.get(model)
        confidences: list[float] = []
        predictions = 0
        if store is not None:
            for p in reversed(store.items.values()):
                if p.version != version:
                    continue
                predictions += 1
                _, conf = p.rows()
                if conf is not None:
                    confidences.extend(conf.tolist())
                if len(confidences) >= self.window or (conf is None and predictions >= self.window):
                    break
        estimate = expected_accuracy(confidences)
        calibrated = None
        if tally is not None and tally.task == "classification" and confidences:
            outcome, conf_l = tally.recent()
            known = ~np.isnan(conf_l)
            calibrated = binned_estimate(conf_l[known], outcome[known] > 0.5, confidences)
        if estimate is not None:
            self.metrics.estimated_accuracy.labels(model, version).set(estimate)
        return {
            "method": "mean top-class probability of the most recent predicted rows",
            "rows": len(confidences),
            "expected_accuracy": estimate,
            "calibrated_accuracy": calibrated,
        }

    def versions(self, model: str) -> list[str]:
        seen = {v for (m, v) in self._tallies if m == model}
        store = self._stores.get(model)
        if store is not None:
            seen.update(p.version for p in store.items.values())
        return sorted(seen, key=lambda v: (len(v), v))


def _is_label(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, int | str)
