"""The record hook: sample rates per model and version, ids only when feedback is on, and
settings that name them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from turnout.model_store.signature import Signature, TensorSpec
from turnout.server.observe.feedback import Feedback
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.recording import Recorder
from turnout.server.settings import Settings, parse_rate
from turnout.server.types import InferRequest

SIG = Signature(
    inputs=(TensorSpec("input", "FP32", (4,)),),
    outputs=(TensorSpec("label", "INT64", ()), TensorSpec("probabilities", "FP32", (3,))),
    max_batch_size=8,
)


class FakeLog:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def submit(self, key: tuple[str, str, str], doc: Any, dropped: Any) -> None:
        self.records.append((*key, doc))


class FakeVersion:
    """What the recorder reads of a serving version (hashed by identity, like the real one)."""

    def __init__(self, name: str, version: str, session: Any = None) -> None:
        self.name, self.version, self.session = name, version, session


def version(name: str, v: str) -> Any:
    return FakeVersion(name, v, SimpleNamespace(signature=SIG))


def outputs() -> dict[str, np.ndarray]:
    return {"label": np.array([1]), "probabilities": np.array([[0.2, 0.7, 0.1]], dtype=np.float32)}


def test_parse_rate() -> None:
    assert parse_rate("iris=0.5") == ("iris", "", 0.5)
    assert parse_rate("mlp:2=1") == ("mlp", "2", 1.0)
    for bad in ("iris", "=0.5", "iris=2", "iris=x"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    with pytest.raises(ValidationError):
        Settings(request_log_rates=("iris=3",))
    assert Settings(request_log_rates="a=1,b:2=0.5").request_log_rates == ("a=1", "b:2=0.5")  # type: ignore[arg-type]


def test_rates_resolve_version_then_model_then_default() -> None:
    metrics = Metrics(CollectorRegistry())
    log = FakeLog()
    rec = Recorder(
        metrics,
        request_log=log,  # type: ignore[arg-type]
        feedback=None,
        sample=0.0,
        rates=("m=1", "m:2=0", "n:1=1"),
        clock=lambda: 5.0,
        rand=lambda: 0.5,
    )
    assert (rec.rate("m", "1"), rec.rate("m", "2"), rec.rate("n", "1"), rec.rate("n", "2")) == (
        1.0,
        0.0,
        1.0,
        0.0,
    )
    feeds = {"input": np.zeros((1, 4), np.float32)}
    for name, v in (("m", "1"), ("m", "2"), ("n", "2")):
        assert (
            rec.record(InferRequest(name, id="", routing_key="k"), version(name, v), feeds, outputs()) == ""
        )
    assert [(r[1], r[2]) for r in log.records] == [("m", "1")]
    kind, _, _, doc = log.records[0]
    assert kind == "requests" and doc["routing_key"] == "k" and doc["ts"] == 5.0 and doc["id"] == ""


def test_ids_are_made_only_for_models_that_keep_feedback() -> None:
    metrics = Metrics(CollectorRegistry())
    fb = Feedback(metrics, models=("m",), max_predictions=10, window=10, clock=lambda: 1.0)
    rec = Recorder(metrics, request_log=None, feedback=fb, sample=0.0, clock=lambda: 1.0)
    feeds = {"input": np.zeros((1, 4), np.float32)}
    a = rec.record(InferRequest("m"), version("m", "1"), feeds, outputs())
    b = rec.record(InferRequest("m"), version("m", "1"), feeds, outputs())
    assert a and b and a != b
    assert rec.record(InferRequest("m", id="mine"), version("m", "1"), feeds, outputs()) == "mine"
    assert rec.record(InferRequest("other"), version("other", "1"), feeds, outputs()) == ""
    assert fb.apply("m", [{"id": a, "label": 1}, {"id": "mine", "label": 0}])["accepted"] == 2


def test_a_failing_hook_never_fails_the_request() -> None:
    metrics = Metrics(CollectorRegistry())
    fb = Feedback(metrics, models=("m",), max_predictions=10, window=10, clock=lambda: 1.0)
    rec = Recorder(metrics, request_log=None, feedback=fb, sample=0.0, clock=lambda: 1.0)
    broken = FakeVersion("m", "1")  # no session: building its plan raises
    assert rec.record(InferRequest("m", id="x"), broken, {}, {}) == "x"  # type: ignore[arg-type]
