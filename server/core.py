"""The protocol-neutral core. Transports decode into :class:`InferRequest`, call
:meth:`Core.infer` (or one of the control methods) and encode what comes back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from turnout.model_store.registry import IndexEntry, ModelRegistry, ServingVersion
from turnout.model_store.signature import Signature
from turnout.protos.model_config_pb2 import ModelConfig
from turnout.server.errors import InvalidInput, NotFound, TurnoutError, wire_status
from turnout.server.model_ops import ModelOpsLog
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.stats import VersionStats
from turnout.server.observe.triton_metrics import failure_reason
from turnout.server.types import InferRequest, InferResponse, Tensor
from turnout.server.validation import schedule_params, validate_inputs, validate_outputs

log = logging.getLogger("turnout.core")

SERVER_NAME = "turnout"
SERVER_VERSION = "0.1.0"
# the model label of requests for a model the server does not know (no model has an empty name)
UNKNOWN_MODEL = ""
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "parameters",
    "schedule_policy",
)


class RouteHook(Protocol):
    """Chooses the version for requests that name none (the traffic router)."""

    def has_policy(self, model: str) -> bool: ...

    def choose(self, req: InferRequest) -> tuple[str, tuple[str, ...]] | None: ...

    def after(
        self,
        req: InferRequest,
        sv: ServingVersion,
        outputs: dict[str, np.ndarray] | None,
        latency_s: float,
        ok: bool,
        shadows: tuple[str, ...],
        feeds: dict[str, np.ndarray] | None,
    ) -> None: ...


class ObserveHook(Protocol):
    """Receives every successful inference (drift monitoring); must not block."""

    def observe(
        self, sv: ServingVersion, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None: ...


class RecordHook(Protocol):
    """Keeps what an answered request leaves for the operators' loop (request log, feedback);
    returns the id its answer carries. Must not block or raise."""

    def record(
        self,
        req: InferRequest,
        sv: ServingVersion,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> str: ...


class Core:
    """Built whole: ``router`` chooses versions (None: requests name theirs or get the
    default), ``observers`` see every success (drift), ``recorder`` is set when request
    logging or feedback is on, ``model_ops`` when several workers share the server."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        router: RouteHook | None = None,
        observers: Iterable[ObserveHook] = (),
        recorder: RecordHook | None = None,
        model_ops: ModelOpsLog | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.router = router
        self.observers = tuple(observers)
        self.recorder = recorder
        self.model_ops = model_ops
        self.live = True
        self.started = False
        self.in_flight = 0  # requests inside infer (not shadows): what a stopping server waits for
        self._labels: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    # ---- inference ------------------------------------------------------------------

    def routed(self, model: str) -> bool:
        """Whether a traffic policy chooses the version of ``model``'s unpinned requests."""
        return self.router is not None and self.router.has_policy(model)

    async def infer(self, req: InferRequest) -> InferResponse:
        t0 = self.clock()
        shadows: tuple[str, ...] = ()
        version = req.model_version
        if not version and self.router is not None:
            choice = self.router.choose(req)
            if choice is not None:
                version, shadows = choice
        try:
            sv = self.registry.resolve(req.model_name, version)
        except Exception as exc:
            self._unresolved(req, exc)
            raise
        sig = sv.session.signature
        self.in_flight += 1
        try:
            feeds, rows = validate_inputs(req.model_name, sig, req.inputs)
            validate_outputs(req.model_name, sig, req.outputs)
            priority, timeout_s = schedule_params(req)
            sv.acquire()
            try:
                outputs = await sv.runner.run(feeds, rows=rows, priority=priority, timeout_s=timeout_s)
            finally:
                sv.release()
        except BaseException as exc:
            self._failed(req, sv, t0, exc, shadows)
            raise
        finally:
            self.in_flight -= 1
        latency = self.clock() - t0
        self._succeeded(req, sv, latency, max(rows, 1), feeds, outputs, shadows)
        rid = req.id if self.recorder is None else self.recorder.record(req, sv, feeds, outputs)
        return InferResponse(
            model_name=req.model_name,
            model_version=sv.version,
            id=rid,
            outputs=_select_outputs(sig, outputs, req),
        )

    def _label_children(self, model: str, version: str, protocol: str) -> tuple[Any, Any]:
        key = (model, version, protocol)
        children = self._labels.get(key)
        if children is None:
            children = (
                self.metrics.counter_tally(self.metrics.requests, model, version, protocol, "ok"),
                self.metrics.histogram_tally(self.metrics.latency, model, version, protocol),
            )
            self._labels[key] = children
        return children

    def _succeeded(
        self,
        req: InferRequest,
        sv: ServingVersion,
        latency: float,
        rows: int,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        shadows: tuple[str, ...],
    ) -> None:
        ok_counter, hist = self._label_children(req.model_name, sv.version, req.protocol)
        ok_counter.inc()
        hist.observe(latency)
        stats: VersionStats = sv.runner.stats
        stats.record_success(rows, int(latency * 1e9))
        for obs in self.observers:
            obs.observe(sv, feeds, outputs)
        if self.router is not None:
            self.router.after(req, sv, outputs, latency, True, shadows, feeds)

    def _unresolved(self, req: InferRequest, exc: BaseException) -> None:
        """Counts a request that reached no version (unknown model or version, none ready) with
        version "", and with model "" when the server does not know the model: a name the client
        made up must not create a label set of its own."""
        model = req.model_name if self.registry.get_state(req.model_name) is not None else UNKNOWN_MODEL
        code = wire_status(exc).grpc.name.lower()
        self.metrics.requests.labels(model, "", req.protocol, code).inc()

    def _failed(
        self, req: InferRequest, sv: ServingVersion, t0: float, exc: BaseException, shadows: tuple[str, ...]
    ) -> None:
        latency = self.clock() - t0
        code = wire_status(exc).grpc.name.lower()
        self.metrics.requests.labels(req.model_name, sv.version, req.protocol, code).inc()
        sv.runner.stats.record_failure(int(latency * 1e9), failure_reason(code))
        # only server-side failures count against a version in rollouts; bad input is the client's
        server_fault = not isinstance(exc, InvalidInput) and (
            not isinstance(exc, TurnoutError) or wire_status(exc).http >= 500
        )
        if self.router is not None:
            self.router.after(req, sv, None, latency, not server_fault, shadows, None)

    # ---- metadata -------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def ready(self) -> bool:
        if not self.started:
            return False
        return all(
            self.registry.is_ready(name) for name in self.registry.model_names() if self._should_serve(name)
        )

    def _should_serve(self, name: str) -> bool:
        state = self.registry.get_state(name)
        return state is not None and not state.unloaded

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        sv = self.registry.resolve(name, version)
        state = self.registry.get_state(name)
        sig: Signature = sv.session.signature
        b = sig.batching
        return {
            "name": name,
            "versions": list(state.order) if state else [sv.version],
            "platform": "onnxruntime_onnx",
            "inputs": [s.to_json(b) for s in sig.inputs],
            "outputs": [s.to_json(b) for s in sig.outputs],
            "parameters": {"sha256": sv.session.sha256, "version": sv.version},
        }

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.registry.resolve(name, version).session.config

    def statistics(self, name: str = "", version: str = "") -> list[VersionStats]:
        if not name:
            if version:
                raise InvalidInput("a version needs a model name")
            out: list[VersionStats] = []
            for model in self.registry.model_names():
                state = self.registry.get_state(model)
                if state:
                    out.extend(state.versions[v].runner.stats for v in state.order)
            return out
        state = self.registry.get_state(name)
        if state is None:
            raise NotFound(f"unknown model '{name}'")
        if version:
            return [self.registry.resolve(name, version).runner.stats]
        return [state.versions[v].runner.stats for v in state.order]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.registry.index(ready_only)

    async def load(self, name: str) -> None:
        known = self.registry.get_state(name) is not None
        try:
            await self.registry.load(name)
        finally:
            # the other workers follow, even a failed load's state; a made-up name leaves no
            # state anywhere, so it must not grow the shared operations log either
            if self.model_ops is not None and (known or self.registry.get_state(name) is not None):
                self.model_ops.append("load", name)

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)
        if self.model_ops is not None:
            self.model_ops.append("unload", name)


def _select_outputs(sig: Signature, outputs: dict[str, np.ndarray], req: InferRequest) -> list[Tensor]:
    names = [r.name for r in req.outputs] if req.outputs else [s.name for s in sig.outputs]
    result: list[Tensor] = []
    params = {r.name: r.parameters for r in req.outputs} if req.outputs else {}
    for name in names:
        spec = sig.output(name)
        arr = outputs[name]
        result.append(Tensor(name, spec.datatype if spec else "BYTES", arr.shape, arr, params.get(name, {})))
    return result
