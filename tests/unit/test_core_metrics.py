"""Requests that reach no version are counted too, without a label set per made-up name."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from turnout.model_store.errors import ModelNotFoundError, ModelUnavailableError, VersionNotFoundError
from turnout.server.core import Core
from turnout.server.observe.metrics import Metrics
from turnout.server.types import InferRequest


class _Registry:
    """Knows the model "m", which has no version ready; every other name is unknown."""

    def resolve(self, name: str, version: str = "") -> object:
        if name != "m":
            raise ModelNotFoundError(f"unknown model '{name}'")
        if version:
            raise VersionNotFoundError(f"model '{name}' has no version '{version}'")
        raise ModelUnavailableError("model 'm' has no version ready to serve")

    def get_state(self, name: str) -> object | None:
        return object() if name == "m" else None


def _count(metrics: Metrics, model: str, protocol: str, code: str) -> float | None:
    labels = {"model": model, "version": "", "protocol": protocol, "code": code}
    return metrics.registry.get_sample_value("turnout_requests_total", labels)


async def test_unresolved_requests_are_counted_with_fixed_labels() -> None:
    metrics = Metrics(CollectorRegistry())
    core = Core(_Registry(), metrics)  # type: ignore[arg-type]
    for i in range(5):  # five made-up names: one label set
        with pytest.raises(ModelNotFoundError):
            await core.infer(InferRequest(model_name=f"nope-{i}", protocol="http"))
    with pytest.raises(VersionNotFoundError):
        await core.infer(InferRequest(model_name="m", model_version="made-up", protocol="grpc"))
    with pytest.raises(ModelUnavailableError):
        await core.infer(InferRequest(model_name="m", protocol="grpc"))
    assert _count(metrics, "", "http", "not_found") == 5
    assert _count(metrics, "m", "grpc", "not_found") == 1
    assert _count(metrics, "m", "grpc", "unavailable") == 1
    exposed = [
        s.labels["model"]
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "turnout_requests_total"
    ]
    assert sorted(exposed) == ["", "m", "m"]
