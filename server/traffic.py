"""Glue between the core and the router package: the RouteHook the core calls, shadow
execution, and the periodic rollout tick. Routing decisions themselves live in ``router/``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from turnout.model_store.registry import ModelRegistry, ServingVersion
from turnout.router.controller import TrafficController
from turnout.router.shadow import ShadowMirror, compare_outputs
from turnout.server.observe.metrics import Metrics
from turnout.server.types import InferRequest

log = logging.getLogger("turnout.traffic")

# A batch of mirrored requests whose expected run time is below this runs on the event loop.
# Handing a small batch to the inference pool makes the loop and the pool trade the GIL: 100 %
# mirroring of mlp_small then added ~9 % to p50 at concurrency 8, inline ~4 % (within run-to-run
# noise). Larger batches (large models) go through the shadow version's runner and its pool.
SHADOW_INLINE_NS = 500_000


@dataclass(slots=True)
class _Mirrored:
    model: str
    primary: str
    shadow: str
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    latency: float


class TrafficRouting:
    def __init__(
        self, controller: TrafficController, mirror: ShadowMirror, registry: ModelRegistry, metrics: Metrics
    ) -> None:
        self.controller = controller
        self.mirror = mirror
        self.registry = registry
        self.metrics = metrics
        self._pending: list[_Mirrored] = []
        self.max_pending = 4096

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
        batching = sv.session.signature.batching
        for shadow in shadows:
            if shadow == sv.version:
                continue
            if batching:  # mirrored in batches: a list append here, the work every few ms
                if len(self._pending) >= self.max_pending:
                    self.controller.shadow_stats.pair(model, sv.version, shadow).dropped += 1
                    self.metrics.shadow.labels(model, shadow, "dropped").inc()
                    continue
                self._pending.append(_Mirrored(model, sv.version, shadow, feeds, outputs, latency_s))
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

    # ---- batched shadows --------------------------------------------------------------

    async def shadow_forever(self, interval: float = 0.02) -> None:
        """Run the mirrored requests of each interval as few batched calls of the shadow version,
        and compare them with the primary outputs in one vectorised comparison per batch."""
        while True:
            await asyncio.sleep(interval)
            if not self._pending:
                continue
            pending, self._pending = self._pending, []
            groups: dict[tuple[str, str, str], list[_Mirrored]] = {}
            for m in pending:
                groups.setdefault((m.model, m.primary, m.shadow), []).append(m)
            for items in groups.values():
                try:
                    await self._shadow_group(items)
                except Exception:  # a shadow must never hurt serving
                    log.exception("shadow batch failed")

    async def _shadow_group(self, items: list[_Mirrored]) -> None:
        first = items[0]
        stats = self.controller.shadow_stats.pair(first.model, first.primary, first.shadow)
        try:
            sv = self.registry.resolve(first.model, first.shadow)
        except Exception:
            stats.shadow_errors += len(items)
            return
        limit = max(sv.session.signature.max_batch_size, 1)
        # requests whose tensors differ beyond the batch axis cannot share a batch: group them by
        # layout, unless the primary's signature fixes every dimension but the batch (the usual
        # case, which then costs nothing per request)
        layouts: dict[tuple[Any, ...], list[_Mirrored]] = {}
        if self._fixed_layout(first.model, first.primary):
            layouts[()] = items
        else:
            for m in items:
                key = tuple((k, v.dtype, v.shape[1:]) for k, v in m.feeds.items())
                layouts.setdefault(key, []).append(m)
        for group in layouts.values():
            chunk: list[_Mirrored] = []
            rows = 0
            for m in group:
                n = next(iter(m.feeds.values())).shape[0]
                if chunk and rows + n > limit:
                    await self._shadow_chunk(sv, chunk, stats)
                    chunk, rows = [], 0
                chunk.append(m)
                rows += n
            if chunk:
                await self._shadow_chunk(sv, chunk, stats)

    def _fixed_layout(self, model: str, version: str) -> bool:
        try:
            sig = self.registry.resolve(model, version).session.signature
        except Exception:
            return False
        return sig.batching and all(d >= 0 for spec in sig.inputs for d in spec.shape)

    async def _shadow_chunk(self, sv: ServingVersion, chunk: list[_Mirrored], stats: Any) -> None:
        names = list(chunk[0].feeds)
        feeds = {
            n: np.concatenate([m.feeds[n] for m in chunk]) if len(chunk) > 1 else chunk[0].feeds[n]
            for n in names
        }
        rows = next(iter(feeds.values())).shape[0]
        t0 = time.perf_counter()
        sv.acquire()
        try:
            done = sv.runner.run_inline(feeds, rows, len(chunk), SHADOW_INLINE_NS)
            out = done if done is not None else await sv.runner.run(feeds, priority=None, timeout_s=None)
        except Exception:
            stats.shadow_errors += len(chunk)
            self.metrics.shadow.labels(chunk[0].model, chunk[0].shadow, "error").inc(len(chunk))
            return
        finally:
            sv.release()
        shadow_latency = (time.perf_counter() - t0) / len(chunk)
        primary = {
            n: np.concatenate([m.outputs[n] for m in chunk]) if len(chunk) > 1 else chunk[0].outputs[n]
            for n in chunk[0].outputs
        }
        comparison = compare_outputs(primary, out, "auto")
        mean_primary = sum(m.latency for m in chunk) / len(chunk)
        stats.add(comparison, mean_primary, shadow_latency, requests=len(chunk))
        self.metrics.shadow.labels(chunk[0].model, chunk[0].shadow, "sent").inc(len(chunk))

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
