"""Glue between the core and the router package: the RouteHook the core calls, shadow
execution, and the periodic rollout tick. Routing decisions themselves live in ``router/``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from model_store.registry import ModelRegistry, ServingVersion
from router.controller import TrafficController
from router.shadow import ShadowMirror
from server.observe.metrics import Metrics
from server.types import InferRequest

log = logging.getLogger("turnout.traffic")


class TrafficRouting:
    def __init__(
        self, controller: TrafficController, mirror: ShadowMirror, registry: ModelRegistry, metrics: Metrics
    ) -> None:
        self.controller = controller
        self.mirror = mirror
        self.registry = registry
        self.metrics = metrics

    # ---- the core's RouteHook ---------------------------------------------------------

    def has_policy(self, model: str) -> bool:
        return self.controller.get_policy(model) is not None

    def choose(self, req: InferRequest) -> tuple[str, tuple[str, ...]] | None:
        d = self.controller.route(req.model_name, req.routing_key)
        if d is None:
            return None
        return d.version, d.shadows

    def after(
        self,
        req: InferRequest,
        sv: ServingVersion,
        outputs: dict[str, np.ndarray] | None,
        latency_s: float,
        ok: bool,
        shadows: tuple[str, ...],
        feeds: dict[str, np.ndarray] | None,
    ) -> None:
        model = req.model_name
        self.controller.record(model, sv.version, latency_s, ok)
        if not shadows or outputs is None or feeds is None:
            return
        for shadow in shadows:
            if shadow == sv.version:
                continue
            scheduled = self.mirror.mirror(
                lambda v=shadow: self._run_shadow(model, v, feeds),  # type: ignore[misc]
                outputs,
                latency_s,
                (sv.version, shadow),
                model=model,
            )
            self.metrics.shadow.labels(model, shadow, "sent" if scheduled else "dropped").inc()

    async def _run_shadow(
        self, model: str, version: str, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        sv = self.registry.resolve(model, version)
        t0 = time.perf_counter()
        sv.acquire()
        try:
            out = await sv.runner.run(feeds, priority=None, timeout_s=None)
        finally:
            sv.release()
        return out, time.perf_counter() - t0

    # ---- background -------------------------------------------------------------------

    async def tick_forever(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.controller.tick()
                for p in self.controller.pair_stats():
                    self.metrics.shadow_disagreement.labels(p.model, p.primary_version, p.shadow_version).set(
                        p.disagreement_rate or 0.0
                    )
            except Exception:  # the control loop must survive a bad tick (e.g. a busy state dir)
                log.exception("traffic tick failed")


def servable(registry: ModelRegistry) -> Callable[[str, str], str | None]:
    """The controller's validator: None when a version can take traffic, else why not."""

    def validate(model: str, version: str) -> str | None:
        state = registry.get_state(model)
        if state is None or version not in state.versions:
            served = ", ".join(state.order) if state else "none"
            return f"model '{model}' version '{version}' is not loaded (serving: {served})"
        sv = state.versions[version]
        if sv.incompatible:
            return f"model '{model}' version '{version}' has an incompatible signature: {sv.incompatible}"
        return None

    return validate
