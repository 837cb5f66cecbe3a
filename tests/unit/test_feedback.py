"""Feedback joined with kept predictions: outcomes, eviction, per-version accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from turnout.model_store.signature import Signature, TensorSpec
from turnout.server.errors import InvalidInput, NotFound
from turnout.server.observe.feedback import Feedback, Judged
from turnout.server.observe.metrics import Metrics

CLASSIFIER = Signature(
    inputs=(TensorSpec("input", "FP32", (4,)),),
    outputs=(TensorSpec("label", "INT64", ()), TensorSpec("probabilities", "FP32", (3,))),
    max_batch_size=8,
)
SCORES_ONLY = Signature(
    inputs=(TensorSpec("input", "FP32", (4,)),),
    outputs=(TensorSpec("logits", "FP32", (3,)),),
    max_batch_size=8,
)
REGRESSOR = Signature(
    inputs=(TensorSpec("input", "FP32", (4,)),), outputs=(TensorSpec("y", "FP32", (1,)),), max_batch_size=8
)


def make(capacity: int = 100, window: int = 10) -> tuple[Feedback, Metrics]:
    metrics = Metrics(CollectorRegistry())
    sink: list[dict[str, object]] = []
    fb = Feedback(
        metrics,
        models=("m",),
        max_predictions=capacity,
        window=window,
        clock=lambda: 1.0,
        sink=lambda m, v, doc: sink.append(doc),
    )
    fb.sunk = sink  # type: ignore[attr-defined]
    return fb, metrics


def predict(
    fb: Feedback, rid: str, version: str, label: int, probs: list[float], sig: Signature = CLASSIFIER
) -> None:
    outputs = {"label": np.array([label]), "probabilities": np.array([probs], dtype=np.float32)}
    fb.add(fb.store("m"), "m", rid, version, outputs, Judged(sig))


def test_judged_outputs_of_classifiers_and_regressors() -> None:
    j = Judged(CLASSIFIER)
    assert (j.task, j.label, j.scores, j.value) == ("classification", "label", "probabilities", None)
    j = Judged(SCORES_ONLY)
    assert (j.task, j.label, j.scores) == ("classification", None, "logits")
    j = Judged(REGRESSOR)
    assert (j.task, j.value) == ("regression", "y")


def test_outcomes_and_accuracy_per_version() -> None:
    fb, metrics = make()
    predict(fb, "a", "1", 0, [0.9, 0.05, 0.05])
    predict(fb, "b", "1", 2, [0.1, 0.1, 0.8])
    predict(fb, "c", "2", 1, [0.2, 0.6, 0.2])
    counts = fb.apply(
        "m",
        [
            {"id": "a", "label": 0},
            {"id": "b", "label": "1"},
            {"id": "a", "label": 0},  # duplicate
            {"id": "zz", "label": 0},  # unknown
            {"id": "c", "label": 1},
            {"id": "c"},  # no label
            {"id": 5, "label": 1},
        ],
    )
    assert counts == {"accepted": 3, "duplicate": 1, "unknown": 1, "late": 0, "invalid": 2}
    r1, r2 = fb.report("m", "1"), fb.report("m", "2")
    assert (r1["labelled"], r1["accuracy"]) == (2, 0.5)
    assert (r2["labelled"], r2["accuracy"]) == (1, 1.0)
    assert r1["estimate"]["expected_accuracy"] == pytest.approx((0.9 + 0.8) / 2, rel=1e-6)
    reg = metrics.registry
    assert reg.get_sample_value("turnout_model_accuracy", {"model": "m", "version": "1"}) == 0.5
    assert reg.get_sample_value("turnout_feedback_total", {"model": "m", "outcome": "duplicate"}) == 1
    assert [d["id"] for d in fb.sunk] == ["a", "b", "c"]  # type: ignore[attr-defined]


def test_eviction_makes_feedback_late_and_is_counted() -> None:
    fb, metrics = make(capacity=2)
    for i in range(4):
        predict(fb, f"r{i}", "1", 0, [1.0, 0.0, 0.0])
    assert fb.apply("m", [{"id": "r0", "label": 0}, {"id": "r3", "label": 0}]) == {
        "accepted": 1,
        "duplicate": 0,
        "unknown": 0,
        "late": 1,
        "invalid": 0,
    }
    assert metrics.registry.get_sample_value("turnout_feedback_evictions_total", {"model": "m"}) == 2
    assert fb.report("m", "1")["store"] == {"predictions": 2, "capacity": 2, "evictions": 2}


def test_multi_row_requests_take_one_label_per_row() -> None:
    fb, _ = make()
    outputs = {"label": np.array([0, 1]), "probabilities": np.array([[0.9, 0.1, 0], [0.3, 0.7, 0]])}
    fb.add(fb.store("m"), "m", "x", "1", outputs, Judged(CLASSIFIER))
    assert fb.apply("m", [{"id": "x", "label": 0}])["invalid"] == 1  # one label for two rows
    assert fb.apply("m", [{"id": "x", "label": [0, 0]}])["accepted"] == 1
    assert fb.report("m", "1")["accuracy"] == 0.5


def test_argmax_when_there_is_no_label_output_and_regression_errors() -> None:
    fb, _ = make()
    fb.add(fb.store("m"), "m", "s", "1", {"logits": np.array([[0.0, 3.0, 1.0]])}, Judged(SCORES_ONLY))
    assert fb.apply("m", [{"id": "s", "label": 1}])["accepted"] == 1
    assert fb.report("m", "1")["accuracy"] == 1.0
    fb.add(fb.store("m"), "m", "y", "2", {"y": np.array([[2.5]])}, Judged(REGRESSOR))
    assert fb.apply("m", [{"id": "y", "label": "a"}])["invalid"] == 1
    assert fb.apply("m", [{"id": "y", "label": 1.5}])["accepted"] == 1
    report = fb.report("m", "2")
    assert report["mae"] == pytest.approx(1.0) and report["rmse"] == pytest.approx(1.0)


def test_untracked_models_and_bad_bodies_are_refused() -> None:
    fb, _ = make()
    with pytest.raises(NotFound):
        fb.apply("other", [])
    with pytest.raises(NotFound):
        fb.report("other", "1")
    with pytest.raises(InvalidInput):
        fb.apply("m", {"id": "a"})


async def test_apply_async_gives_way_and_counts_like_apply() -> None:
    fb, _ = make(capacity=1000)
    for i in range(600):
        predict(fb, f"r{i}", "1", i % 3, [0.5, 0.3, 0.2])
    items = [{"id": f"r{i}", "label": 0} for i in range(600)] + [{"id": "r0", "label": 0}]
    counts = await fb.apply_async("m", items)
    assert counts == {"accepted": 600, "duplicate": 1, "unknown": 0, "late": 0, "invalid": 0}
    assert fb.report("m", "1")["accuracy"] == pytest.approx(200 / 600)
