"""Property tests of the dynamic batcher: whatever the arrival pattern, cancellations and
timeouts, every answered request gets exactly the unbatched result of its own rows.

Each example runs a small scenario on a fresh event loop (``asyncio.run``) with a fake model
``y = x @ W[width] + 1`` that records the request ids of every batch it executes (column 0 of
every row carries its request's id).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.server.batching import BatchingConfig, DynamicBatcher
from turnout.server.errors import QueueFull, RequestTimeout

pytestmark = pytest.mark.timeout(120)

WIDTHS = (3, 5)
WEIGHTS = {w: np.arange(w * 2, dtype=np.float64).reshape(w, 2) / 7.0 - 0.5 for w in WIDTHS}


def compute(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x @ WEIGHTS[x.shape[1]] + 1.0, "ids": x[:, 0].copy()}


@dataclass(frozen=True)
class Req:
    rows: int
    width: int
    gap: int  # event-loop iterations before the next submit (0 = same iteration)
    fate: str  # "keep" | "cancel" | "timeout"
    cancel_after: int  # loop iterations after submitting before cancelling
    priority: int | None


@dataclass(frozen=True)
class Scenario:
    max_batch: int
    instances: int
    delay: float
    preferred: tuple[int, ...]
    exec_yields: int  # event-loop iterations one execution takes
    exec_sleep: float  # plus this much real time
    queue_size: int
    reqs: tuple[Req, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    max_batch = draw(st.integers(1, 16))
    req = st.builds(
        Req,
        rows=st.integers(1, max_batch),
        width=st.sampled_from(WIDTHS),
        gap=st.sampled_from([0, 0, 0, 1, 3]),
        fate=st.sampled_from(["keep", "keep", "keep", "cancel", "timeout"]),
        cancel_after=st.integers(0, 4),
        priority=st.sampled_from([None, 1, 2]),
    )
    return Scenario(
        max_batch=max_batch,
        instances=draw(st.integers(1, 2)),
        delay=draw(st.sampled_from([0.0, 0.0005, 0.002])),
        preferred=tuple(draw(st.sets(st.integers(1, max_batch), max_size=2))),
        exec_yields=draw(st.sampled_from([0, 2, 6, 12])),
        exec_sleep=draw(st.sampled_from([0.0, 0.0, 0.0003])),
        queue_size=draw(st.sampled_from([4, 1024])),
        reqs=tuple(draw(st.lists(req, min_size=1, max_size=24))),
    )


def make_inputs(rid: int, r: Req) -> np.ndarray:
    x = np.linspace(-1.0, 1.0, r.rows * r.width).reshape(r.rows, r.width) * (rid % 7 + 1)
    x[:, 0] = rid  # the request id travels with every row
    return x


async def run_scenario(sc: Scenario) -> None:
    executed: list[tuple[int, list[float]]] = []  # (width, ids of the rows) per batch

    async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        executed.append((x.shape[1], x[:, 0].tolist()))
        for _ in range(sc.exec_yields):
            await asyncio.sleep(0)
        if sc.exec_sleep:
            await asyncio.sleep(sc.exec_sleep)
        return compute(x)

    config = BatchingConfig(
        max_batch_size=sc.max_batch,
        max_queue_delay_s=sc.delay,
        preferred_batch_sizes=sc.preferred,
        instance_count=sc.instances,
        priority_levels=2,
        max_queue_size=sc.queue_size,
    )
    batcher = DynamicBatcher(execute, config, name="prop")

    async def cancel_later(task: asyncio.Task[dict[str, np.ndarray]], after: int) -> None:
        for _ in range(after):
            await asyncio.sleep(0)
        task.cancel()

    inputs: list[np.ndarray] = []
    tasks: list[asyncio.Task[dict[str, np.ndarray]]] = []
    cancellers: list[asyncio.Task[None]] = []
    for rid, r in enumerate(sc.reqs):
        x = make_inputs(rid, r)
        inputs.append(x)
        timeout = 0.0005 if r.fate == "timeout" else None
        task = asyncio.create_task(batcher.submit({"x": x}, priority=r.priority, timeout_s=timeout))
        tasks.append(task)
        if r.fate == "cancel":
            cancellers.append(asyncio.create_task(cancel_later(task, r.cancel_after)))
        for _ in range(r.gap):
            await asyncio.sleep(0)

    # Every request resolves; a hang shows up as a timeout here.
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)
    await asyncio.wait_for(asyncio.gather(*cancellers), 10.0)
    # A caller cancelled while its batch ran has resolved, but that batch may still be running:
    # drain before looking at what was executed.
    await asyncio.wait_for(batcher.close(drain=True), 10.0)
    assert batcher.queue_depth == 0
    assert batcher.in_flight == 0

    # Batches: never larger than max_batch_size, never mixing shape keys (widths).
    seen: dict[int, int] = {}
    for width, ids in executed:
        assert 1 <= len(ids) <= sc.max_batch
        for rid in {int(i) for i in ids}:
            assert sc.reqs[rid].width == width, "batch mixes shape keys"
            # a request's rows are contiguous and complete within one batch
            positions = [k for k, i in enumerate(ids) if int(i) == rid]
            assert len(positions) == sc.reqs[rid].rows
            assert positions == list(range(positions[0], positions[0] + len(positions)))
            seen[rid] = seen.get(rid, 0) + 1

    for rid, (r, x, res) in enumerate(zip(sc.reqs, inputs, results, strict=True)):
        assert seen.get(rid, 0) <= 1, "request executed twice"
        if isinstance(res, dict):
            assert seen.get(rid) == 1
            expected = compute(x)
            assert set(res) == {"y", "ids"}
            np.testing.assert_allclose(res["y"], expected["y"], rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(res["ids"], expected["ids"])
        elif isinstance(res, asyncio.CancelledError):
            assert r.fate == "cancel"
        elif isinstance(res, RequestTimeout):
            assert r.fate == "timeout"
            assert rid not in seen, "a timed-out request was executed"
        else:
            assert isinstance(res, QueueFull), f"unexpected outcome {res!r}"
            assert sc.queue_size < len(sc.reqs)
            assert rid not in seen


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sc=scenarios())
def test_every_answer_equals_the_unbatched_computation(sc: Scenario) -> None:
    asyncio.run(run_scenario(sc))


def test_long_busy_stream_merges_and_stays_exact() -> None:
    """A deterministic heavier run: many concurrent callers, two widths, both instance counts."""

    async def scenario(instances: int) -> None:
        batch_sizes: list[int] = []

        async def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            batch_sizes.append(len(inputs["x"]))
            await asyncio.sleep(0)
            return compute(inputs["x"])

        batcher = DynamicBatcher(
            execute,
            BatchingConfig(max_batch_size=8, max_queue_delay_s=0.001, instance_count=instances),
        )
        rng = np.random.default_rng(1234)
        reqs = [
            Req(int(rng.integers(1, 5)), WIDTHS[int(rng.integers(0, 2))], 0, "keep", 0, None)
            for _ in range(300)
        ]
        xs = [make_inputs(i, r) for i, r in enumerate(reqs)]
        outs = await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": x}) for x in xs)), 20.0)
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_allclose(out["y"], compute(x)["y"], rtol=1e-12, atol=1e-12)
        assert max(batch_sizes) <= 8
        assert len(batch_sizes) < len(reqs) / 2  # real merging happened
        await batcher.close()

    for instances in (1, 2):
        asyncio.run(scenario(instances))
