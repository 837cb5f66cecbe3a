"""Unit tests of the dynamic batcher (server/batching.py).

The model is a fake async ``execute`` computing a real function (y = 2x + 1, s = row sums) and
recording every batch it sees. Executions can be held open with per-call gates, so tests
control exactly when a slot is busy. Deadlines and queue delays use an injected clock where the
outcome depends on time; real sleeps are only used as generous "nothing happened" windows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from turnout.server.batching import BatchingConfig, DynamicBatcher
from turnout.server.errors import (
    Cancelled,
    InferenceFailed,
    InvalidInput,
    QueueFull,
    RequestTimeout,
    Unavailable,
)

pytestmark = pytest.mark.timeout(30)

Arrays = dict[str, np.ndarray]


# --------------------------------------------------------------------------- helpers


class FakeModel:
    """An async execute: y = 2x + 1 and s = x.sum(axis=1) for every row of input "x"."""

    def __init__(self) -> None:
        self.batches: list[Arrays] = []
        self.gates: deque[asyncio.Event] = deque()
        self.active = 0
        self.max_active = 0
        self.fail_when: Callable[[Arrays], BaseException | None] | None = None
        self.rows_delta = 0  # make outputs wrong-sized on purpose

    def hold_next(self) -> asyncio.Event:
        """The next execution blocks until the returned event is set."""
        gate = asyncio.Event()
        self.gates.append(gate)
        return gate

    @property
    def sizes(self) -> list[int]:
        return [len(next(iter(b.values()))) for b in self.batches]

    async def __call__(self, inputs: Arrays) -> Arrays:
        self.batches.append(inputs)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gates:
                await self.gates.popleft().wait()
            if self.fail_when is not None:
                exc = self.fail_when(inputs)
                if exc is not None:
                    raise exc
            x = inputs["x"]
            y = x * 2 + 1
            s = x.sum(axis=1)
            if self.rows_delta:
                y = np.concatenate([y, y[:1]]) if self.rows_delta > 0 else y[:-1]
            return {"y": y, "s": s}
        finally:
            self.active -= 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingObserver:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, list[float], float]] = []
        self.rejects: list[str] = []
        self.depths: list[int] = []

    def on_batch(
        self, size_rows: int, n_requests: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        self.batches.append((size_rows, n_requests, list(queue_seconds), compute_seconds))

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


class ExplodingObserver:
    def on_batch(self, *args: Any) -> None:
        raise RuntimeError("observer bug")

    def on_reject(self, reason: str) -> None:
        raise RuntimeError("observer bug")

    def on_queue_depth(self, depth: int) -> None:
        raise RuntimeError("observer bug")


_counter = iter(range(1, 1_000_000))


def req(rows: int, width: int = 3, dtype: Any = np.float64) -> Arrays:
    """A request with distinct, recognisable values."""
    base = next(_counter) * 1000
    x = (base + np.arange(rows * width, dtype=np.float64).reshape(rows, width)).astype(dtype)
    return {"x": x}


def expect(inputs: Arrays, out: Arrays) -> None:
    x = inputs["x"]
    assert set(out) == {"y", "s"}
    np.testing.assert_allclose(out["y"], x * 2 + 1)
    np.testing.assert_allclose(out["s"], x.sum(axis=1))


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate`` holds (bounded: at most ~5 s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    for _ in range(100_000):
        if predicate():
            return
        if loop.time() > end:
            break
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached in time")


async def settle(iterations: int = 20) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


def make(model: FakeModel, **kwargs: Any) -> DynamicBatcher:
    clock = kwargs.pop("clock", None)
    observer = kwargs.pop("observer", None)
    kwargs.setdefault("max_batch_size", 16)
    cfg = BatchingConfig(**kwargs)
    if clock is None:
        return DynamicBatcher(model, cfg, observer=observer, name="m")
    return DynamicBatcher(model, cfg, clock=clock, observer=observer, name="m")


async def start_busy(
    batcher: DynamicBatcher, model: FakeModel
) -> tuple[asyncio.Event, asyncio.Task[Arrays], Arrays]:
    """Occupy one execution slot with a held single-row request."""
    gate = model.hold_next()
    inputs = req(1)
    running = model.active
    task = asyncio.create_task(batcher.submit(inputs))
    await wait_until(lambda: model.active == running + 1)
    return gate, task, inputs


def spawn(batcher: DynamicBatcher, inputs: Arrays, **kwargs: Any) -> asyncio.Task[Arrays]:
    return asyncio.create_task(batcher.submit(inputs, **kwargs))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.0}, "max_batch_size"),
        ({"max_batch_size": 4, "max_queue_delay_s": -1.0}, "max_queue_delay_s"),
        ({"max_batch_size": 4, "max_queue_delay_s": float("inf")}, "max_queue_delay_s"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (5,)}, "preferred_batch_sizes"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (0,)}, "preferred_batch_sizes"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (2, 2)}, "duplicates"),
        ({"max_batch_size": 4, "max_queue_size": 0}, "max_queue_size"),
        ({"max_batch_size": 4, "default_timeout_s": 0.0}, "default_timeout_s"),
        ({"max_batch_size": 4, "default_timeout_s": -3}, "default_timeout_s"),
        ({"max_batch_size": 4, "priority_levels": 0}, "priority_levels"),
        ({"max_batch_size": 4, "priority_levels": 2, "default_priority": 3}, "default_priority"),
        ({"max_batch_size": 4, "default_priority": 0}, "default_priority"),
        ({"max_batch_size": 4, "instance_count": 0}, "instance_count"),
        ({"max_batch_size": 4, "allow_timeout_override": 1}, "allow_timeout_override"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchingConfig(**kwargs)


def test_config_normalises_preferred_sizes() -> None:
    cfg = BatchingConfig(max_batch_size=8, preferred_batch_sizes=[8, 2, 4])  # type: ignore[arg-type]
    assert cfg.preferred_batch_sizes == (2, 4, 8)
    assert cfg.max_queue_size == 1024 and cfg.priority_levels == 1 and cfg.instance_count == 1


# --------------------------------------------------------------------------- validation


async def test_invalid_inputs_are_rejected() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4, priority_levels=2)
    x3 = np.zeros((3, 2))
    bad: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"x": np.float64(1.0)}, {}),
        ({"x": np.zeros(())}, {}),
        ({"x": [[1.0, 2.0]]}, {}),
        ({"x": np.zeros((0, 2))}, {}),
        ({"x": np.zeros((5, 2))}, {}),
        ({"x": x3, "z": np.zeros((2, 2))}, {}),
        ({"x": x3}, {"priority": 3}),
        ({"x": x3}, {"priority": -1}),
        ({"x": x3}, {"timeout_s": 0.0}),
        ({"x": x3}, {"timeout_s": float("nan")}),
    ]
    for inputs, kwargs in bad:
        with pytest.raises(InvalidInput):
            await b.submit(inputs, **kwargs)
    assert model.batches == []
    await b.close()


async def test_rows_validated_upstream_are_trusted_and_out_of_range_ones_rechecked() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4)
    gate, busy, busy_in = await start_busy(b, model)
    first, second = req(2), req(1)
    tasks = [spawn(b, first, rows=2), spawn(b, second, rows=1)]  # queued: their shape key is built
    await wait_until(lambda: b.queue_depth == 2)
    gate.set()
    expect(busy_in, await busy)
    for inputs, task in zip((first, second), tasks, strict=True):
        expect(inputs, await task)
    assert model.sizes == [1, 3]
    for rows in (0, 5):  # not a validated batch dimension: the arrays are checked
        with pytest.raises(InvalidInput, match=r"batch dimension must be in 1..4, got 5"):
            await b.submit(req(5), rows=rows)
    await b.close()


# --------------------------------------------------------------------------- idle dispatch


@pytest.mark.parametrize("instances", [1, 2])
async def test_idle_request_runs_at_once_despite_huge_delay(instances: int) -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8, max_queue_delay_s=60.0, instance_count=instances)
    inputs = req(2)
    out = await asyncio.wait_for(b.submit(inputs), 5.0)  # the delay would be 60 s
    expect(inputs, out)
    assert model.sizes == [2]
    # A lone request is passed through without copying.
    assert model.batches[0]["x"] is inputs["x"]
    # And again, after the first one finished.
    inputs2 = req(1)
    expect(inputs2, await asyncio.wait_for(b.submit(inputs2), 5.0))
    assert model.sizes == [2, 1]
    await b.close()


async def test_requests_arriving_while_busy_are_merged_and_split_exactly() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=16)
    gate, busy, busy_in = await start_busy(b, model)
    queued = [req(n) for n in (1, 3, 2, 4, 1)]
    tasks = [spawn(b, q) for q in queued]
    await wait_until(lambda: b.queue_depth == len(queued))
    assert b.in_flight == 1
    gate.set()
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    expect(busy_in, await busy)
    assert model.sizes == [1, 11]
    np.testing.assert_array_equal(model.batches[1]["x"], np.concatenate([q["x"] for q in queued]))
    for q, out in zip(queued, outs, strict=True):
        assert out["y"].shape[0] == q["x"].shape[0]
        expect(q, out)
    assert b.queue_depth == 0 and b.in_flight == 0
    await b.close()


async def test_single_queued_request_is_passed_through_without_copy() -> None:
    model = FakeModel()
    b = make(model)
    gate, busy, _ = await start_busy(b, model)
    inputs = req(2)
    task = spawn(b, inputs)
    await wait_until(lambda: b.queue_depth == 1)
    gate.set()
    expect(inputs, await asyncio.wait_for(task, 5.0))
    await busy
    assert model.batches[1]["x"] is inputs["x"]
    await b.close()


async def test_different_shape_keys_are_never_merged() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=16)
    gate, busy, _ = await start_busy(b, model)
    queued = [req(1, 3), req(2, 4), req(1, 3), req(1, 4), req(2, 3, np.float32), req(1, 3)]
    tasks = [spawn(b, q) for q in queued]
    await wait_until(lambda: b.queue_depth == len(queued))
    gate.set()
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    await busy
    for q, out in zip(queued, outs, strict=True):
        expect(q, out)
        assert out["y"].dtype == q["x"].dtype
    # batch 0 is the busy one; then width-3 float64 (oldest first), width-4, width-3 float32
    assert model.sizes == [1, 3, 3, 2]
    assert [(b_["x"].shape[1], b_["x"].dtype) for b_ in model.batches[1:]] == [
        (3, np.float64),
        (4, np.float64),
        (3, np.float32),
    ]
    await b.close()


async def test_shape_key_ignores_input_order_but_not_input_names() -> None:
    seen: list[Arrays] = []

    async def execute(inputs: Arrays) -> Arrays:
        seen.append(inputs)
        await asyncio.sleep(0)
        return {"z": inputs["a"] + inputs["b"]}

    hold = asyncio.Event()
    first = True

    async def gated(inputs: Arrays) -> Arrays:
        nonlocal first
        if first:
            first = False
            await hold.wait()
        return await execute(inputs)

    b = DynamicBatcher(gated, BatchingConfig(max_batch_size=8))
    a1, b1 = np.ones((1, 2)), np.full((1, 2), 2.0)
    busy = asyncio.create_task(b.submit({"a": a1, "b": b1}))
    await wait_until(lambda: b.in_flight == 1)
    r1 = asyncio.create_task(b.submit({"a": np.full((2, 2), 3.0), "b": np.full((2, 2), 4.0)}))
    r2 = asyncio.create_task(b.submit({"b": np.full((1, 2), 5.0), "a": np.full((1, 2), 6.0)}))
    r3 = asyncio.create_task(b.submit({"a": np.ones((1, 2)), "c": np.ones((1, 2))}))
    await wait_until(lambda: b.queue_depth == 3)
    hold.set()
    o1, o2 = await asyncio.wait_for(asyncio.gather(r1, r2), 5.0)
    with pytest.raises(InferenceFailed):  # {"a", "c"} is its own key; execute fails on it
        await asyncio.wait_for(r3, 5.0)
    await busy
    np.testing.assert_allclose(o1["z"], np.full((2, 2), 7.0))
    np.testing.assert_allclose(o2["z"], np.full((1, 2), 11.0))
    assert [len(s["a"]) for s in seen] == [1, 3, 1]
    await b.close()


async def test_batch_never_exceeds_max_and_requests_are_never_split() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8)
    gate, busy, _ = await start_busy(b, model)
    queued = [req(n) for n in (5, 4, 3, 8, 1)]
    tasks = [spawn(b, q) for q in queued]
    await wait_until(lambda: b.queue_depth == len(queued))
    gate.set()
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    await busy
    for q, out in zip(queued, outs, strict=True):
        expect(q, out)
    # Head first; requests that do not fit are skipped over (not split) and lead the next batch.
    assert model.sizes == [1, 8, 5, 8]
    assert all(size <= 8 for size in model.sizes)
    await b.close()


# --------------------------------------------------------------------------- delays / preferred sizes


async def test_delay_applies_only_while_another_execution_runs() -> None:
    model = FakeModel()
    clock = FakeClock()
    b = make(model, max_batch_size=8, max_queue_delay_s=0.02, instance_count=2, clock=clock)
    gate, busy, _ = await start_busy(b, model)
    early = [req(1), req(2)]
    tasks = [spawn(b, q) for q in early]
    # A slot is free but one execution is running: the free slot waits for a fuller batch.
    # The injected clock does not move, so the delay cannot expire however long we look.
    await asyncio.sleep(0.1)
    assert model.sizes == [1] and b.queue_depth == 2
    late = req(1)
    tasks.append(spawn(b, late))
    await wait_until(lambda: b.queue_depth == 3)
    clock.advance(0.05)  # now the oldest request has waited past max_queue_delay_s
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    for q, out in zip([*early, late], outs, strict=True):
        expect(q, out)
    assert model.sizes == [1, 4]
    assert not busy.done()  # the second slot ran while the first was still busy
    gate.set()
    await busy
    await b.close()


async def test_waiting_slot_dispatches_at_once_when_the_running_batch_ends() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8, max_queue_delay_s=60.0, instance_count=2)
    gate, busy, _ = await start_busy(b, model)
    inputs = req(1)
    task = spawn(b, inputs)
    await settle()
    assert model.sizes == [1]
    gate.set()  # nothing executes any more -> no reason to keep waiting 60 s
    expect(inputs, await asyncio.wait_for(task, 5.0))
    await busy
    assert model.sizes == [1, 1]
    await b.close()


async def test_reaching_a_preferred_size_stops_the_wait() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_sizes=(3,), instance_count=2)
    gate, busy, _ = await start_busy(b, model)
    first = [spawn(b, q) for q in (req(1), req(1))]
    await settle()
    assert model.sizes == [1]  # 2 rows: not preferred yet, keep waiting
    third = req(1)
    outs = await asyncio.wait_for(asyncio.gather(*first, spawn(b, third)), 5.0)
    expect(third, outs[2])
    assert model.sizes == [1, 3]
    assert not busy.done()
    gate.set()
    await busy
    await b.close()


async def test_reaching_max_batch_size_stops_the_wait() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=3, max_queue_delay_s=60.0, instance_count=2)
    gate, busy, _ = await start_busy(b, model)
    a = spawn(b, req(2))
    await settle()
    assert model.sizes == [1]
    await asyncio.wait_for(asyncio.gather(a, spawn(b, req(1))), 5.0)
    assert model.sizes == [1, 3]
    gate.set()
    await busy
    await b.close()


async def test_batch_is_cut_at_the_largest_reachable_preferred_size() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8, preferred_batch_sizes=(2, 4))
    gate, busy, _ = await start_busy(b, model)
    queued = [req(1) for _ in range(5)] + [req(3)]
    tasks = [spawn(b, q) for q in queued]
    await wait_until(lambda: b.queue_depth == len(queued))
    gate.set()
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    await busy
    for q, out in zip(queued, outs, strict=True):
        expect(q, out)
    # 1+1+1+1 = 4 (preferred; adding more would give 5, 8 -- not preferred), then 1+3 = 4.
    assert model.sizes == [1, 4, 4]
    await b.close()


# --------------------------------------------------------------------------- queue full / timeouts / cancel


async def test_full_queue_rejects_at_once() -> None:
    model = FakeModel()
    obs = RecordingObserver()
    b = make(model, max_batch_size=4, max_queue_size=2, observer=obs)
    gate, busy, _ = await start_busy(b, model)
    tasks = [spawn(b, req(1)) for _ in range(2)]
    await wait_until(lambda: b.queue_depth == 2)
    with pytest.raises(QueueFull, match=r"model 'm'.*2 requests"):
        await b.submit(req(1))
    assert obs.rejects == ["queue_full"]
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks), 5.0)
    # Room again.
    await asyncio.wait_for(b.submit(req(1)), 5.0)
    assert model.sizes == [1, 2, 1]
    await b.close()


async def test_queued_request_times_out_and_is_never_executed() -> None:
    model = FakeModel()
    clock = FakeClock()
    obs = RecordingObserver()
    b = make(model, max_batch_size=4, clock=clock, observer=obs)
    gate, busy, _ = await start_busy(b, model)
    doomed = req(1)
    t_doomed = spawn(b, doomed, timeout_s=0.01)
    keep = req(1)
    t_keep = spawn(b, keep)
    await wait_until(lambda: b.queue_depth == 2)
    await asyncio.sleep(0.05)  # the timer fired, but the injected clock says "not yet"
    assert not t_doomed.done()
    clock.advance(1.0)
    with pytest.raises(RequestTimeout, match="model 'm'"):
        await asyncio.wait_for(t_doomed, 5.0)
    assert b.queue_depth == 1 and obs.rejects == ["timeout"]
    gate.set()
    expect(keep, await asyncio.wait_for(t_keep, 5.0))
    await busy
    assert model.sizes == [1, 1]
    assert all(doomed["x"][0, 0] not in batch["x"][:, 0] for batch in model.batches)
    await b.close()


async def test_expired_request_is_dropped_when_the_batch_is_formed() -> None:
    model = FakeModel()
    clock = FakeClock()
    b = make(model, max_batch_size=4, clock=clock)
    gate, busy, _ = await start_busy(b, model)
    doomed, keep = req(1), req(1)
    t_doomed = spawn(b, doomed, timeout_s=60.0)  # its timer will not fire during the test
    t_keep = spawn(b, keep)
    await wait_until(lambda: b.queue_depth == 2)
    clock.advance(120.0)
    gate.set()
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(t_doomed, 5.0)
    expect(keep, await asyncio.wait_for(t_keep, 5.0))
    await busy
    assert model.sizes == [1, 1]
    await b.close()


async def test_default_timeout_and_override_policy() -> None:
    model = FakeModel()
    # Override disallowed: the per-request timeout is ignored, the 50 ms default applies.
    b = make(model, max_batch_size=4, default_timeout_s=0.05, allow_timeout_override=False)
    gate, busy, _ = await start_busy(b, model)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(b.submit(req(1), timeout_s=600.0), 5.0)
    gate.set()
    await busy
    await b.close()

    # Override allowed: a long per-request timeout beats the short default.
    model = FakeModel()
    b = make(model, max_batch_size=4, default_timeout_s=0.05)
    gate, busy, _ = await start_busy(b, model)
    inputs = req(1)
    task = spawn(b, inputs, timeout_s=600.0)
    await asyncio.sleep(0.3)
    assert not task.done()
    gate.set()
    expect(inputs, await asyncio.wait_for(task, 5.0))
    await busy
    await b.close()


async def test_cancelled_caller_is_skipped_and_others_complete() -> None:
    model = FakeModel()
    obs = RecordingObserver()
    b = make(model, max_batch_size=8, observer=obs)
    gate, busy, _ = await start_busy(b, model)
    a, c, d = req(1), req(2), req(3)
    ta, tc, td = spawn(b, a), spawn(b, c), spawn(b, d)
    await wait_until(lambda: b.queue_depth == 3)
    tc.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tc
    assert b.queue_depth == 2  # removed at once, not left for the dispatcher
    assert obs.rejects == ["cancelled"]
    gate.set()
    oa, od = await asyncio.wait_for(asyncio.gather(ta, td), 5.0)
    await busy
    expect(a, oa)
    expect(d, od)
    assert model.sizes == [1, 4]
    assert b.queue_depth == 0 and b.in_flight == 0
    await b.close()


async def test_caller_cancelled_while_its_batch_runs_does_not_affect_the_others() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=8)
    gate, busy, _ = await start_busy(b, model)
    a, c = req(1), req(1)
    ta, tc = spawn(b, a), spawn(b, c)
    await wait_until(lambda: b.queue_depth == 2)
    gate2 = model.hold_next()
    gate.set()
    await wait_until(lambda: b.in_flight == 2)  # a and c execute together
    tc.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tc
    gate2.set()
    expect(a, await asyncio.wait_for(ta, 5.0))
    await busy
    await b.close()


# --------------------------------------------------------------------------- failures


async def test_execute_error_fails_exactly_its_batch_and_batcher_keeps_working() -> None:
    model = FakeModel()
    model.fail_when = lambda inputs: ValueError("bad row") if (inputs["x"] < 0).any() else None
    b = make(model, max_batch_size=8)
    gate, busy, _ = await start_busy(b, model)
    poison = {"x": -np.ones((1, 3))}
    mate, other = req(2), req(1, width=4)
    tp, tm, to = spawn(b, poison), spawn(b, mate), spawn(b, other)
    await wait_until(lambda: b.queue_depth == 3)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(tp, tm, to, return_exceptions=True), 5.0)
    await busy
    assert isinstance(results[0], InferenceFailed) and isinstance(results[1], InferenceFailed)
    assert "ValueError: bad row" in str(results[0])
    assert isinstance(results[0].__cause__, ValueError)
    assert isinstance(results[2], dict)
    expect(other, results[2])
    assert model.sizes == [1, 3, 1]
    # Idle path too: the error is wrapped, and the next request works.
    with pytest.raises(InferenceFailed, match="bad row"):
        await b.submit(poison)
    fine = req(3)
    expect(fine, await asyncio.wait_for(b.submit(fine), 5.0))
    await b.close()


async def test_turnout_errors_from_execute_pass_through_unchanged() -> None:
    model = FakeModel()
    model.fail_when = lambda inputs: InvalidInput("model says no")
    b = make(model)
    with pytest.raises(InvalidInput, match="model says no"):
        await b.submit(req(1))
    gate, busy, _ = await start_busy(b, model)
    t1, t2 = spawn(b, req(1)), spawn(b, req(1))
    await wait_until(lambda: b.queue_depth == 2)
    gate.set()
    for r in await asyncio.gather(t1, t2, busy, return_exceptions=True):
        assert isinstance(r, InvalidInput)
    await b.close()


@pytest.mark.parametrize("delta", [1, -1])
async def test_wrong_output_row_count_is_an_inference_failure(delta: int) -> None:
    model = FakeModel()
    b = make(model)
    gate, busy, _ = await start_busy(b, model)
    model.rows_delta = delta
    t1, t2 = spawn(b, req(2)), spawn(b, req(1))
    await wait_until(lambda: b.queue_depth == 2)
    gate.set()
    results = await asyncio.gather(t1, t2, busy, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert "rows for a batch of 3" in str(results[0])
    with pytest.raises(InferenceFailed):  # idle path
        await b.submit(req(1))
    model.rows_delta = 0
    fine = req(1)
    expect(fine, await b.submit(fine))
    await b.close()


async def test_non_mapping_output_is_an_inference_failure() -> None:
    async def execute(inputs: Arrays) -> Any:
        return [inputs["x"]]

    b = DynamicBatcher(execute, BatchingConfig(max_batch_size=2))
    with pytest.raises(InferenceFailed, match="expected a mapping"):
        await b.submit(req(1))
    await b.close()


async def test_execution_cancelled_from_inside_fails_its_requests_with_cancelled() -> None:
    calls = 0

    async def execute(inputs: Arrays) -> Arrays:
        nonlocal calls
        calls += 1
        if calls <= 2:
            await asyncio.sleep(0.01)
            raise asyncio.CancelledError  # e.g. the executor running the model shut down
        return {"y": inputs["x"] * 2 + 1}

    b = DynamicBatcher(execute, BatchingConfig(max_batch_size=4))
    first = asyncio.create_task(b.submit(req(1)))
    await wait_until(lambda: b.in_flight == 1)
    second = asyncio.create_task(b.submit(req(1)))  # queued; runs on a worker
    with pytest.raises(Cancelled):
        await asyncio.wait_for(first, 5.0)
    with pytest.raises(Cancelled):
        await asyncio.wait_for(second, 5.0)
    inputs = req(2)
    out = await asyncio.wait_for(b.submit(inputs), 5.0)
    np.testing.assert_allclose(out["y"], inputs["x"] * 2 + 1)
    await b.close()


# --------------------------------------------------------------------------- priorities


async def test_higher_priority_is_served_first_fifo_within_a_level() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=1, priority_levels=3, default_priority=2)
    gate, busy, _ = await start_busy(b, model)
    order = [("low1", 3), ("mid1", None), ("high1", 1), ("low2", 3), ("high2", 1), ("mid2", 0)]
    inputs = {name: req(1) for name, _ in order}
    tasks = [spawn(b, inputs[name], priority=p) for name, p in order]
    await wait_until(lambda: b.queue_depth == len(order))
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    await busy
    by_value = {float(v["x"][0, 0]): name for name, v in inputs.items()}
    executed = [by_value[float(batch["x"][0, 0])] for batch in model.batches[1:]]
    assert executed == ["high1", "high2", "mid1", "mid2", "low1", "low2"]
    await b.close()


async def test_lower_priorities_fill_spare_room_after_higher_ones() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=3, priority_levels=2)
    gate, busy, _ = await start_busy(b, model)
    low = [req(1) for _ in range(3)]
    high = req(1)
    tasks = [spawn(b, q, priority=2) for q in low] + [spawn(b, high, priority=1)]
    await wait_until(lambda: b.queue_depth == 4)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    await busy
    assert model.sizes == [1, 3, 1]
    np.testing.assert_array_equal(
        model.batches[1]["x"], np.concatenate([high["x"], low[0]["x"], low[1]["x"]])
    )
    await b.close()


# --------------------------------------------------------------------------- concurrency / close


async def test_instance_count_two_runs_two_batches_concurrently() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4, instance_count=2)
    gate1, busy1, _ = await start_busy(b, model)
    gate2 = model.hold_next()
    inputs = req(2)
    t2 = spawn(b, inputs)
    await wait_until(lambda: model.active == 2)
    assert b.in_flight == 2 and b.queue_depth == 0
    t3 = spawn(b, req(1))  # both slots busy: it waits
    await settle()
    assert len(model.batches) == 2 and b.queue_depth == 1
    gate2.set()
    expect(inputs, await asyncio.wait_for(t2, 5.0))
    await asyncio.wait_for(t3, 5.0)
    gate1.set()
    await busy1
    assert model.max_active == 2
    await b.close()


async def test_instance_count_one_never_runs_two_batches() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=2, instance_count=1)
    gates = [model.hold_next() for _ in range(3)]
    tasks = [spawn(b, req(1)) for _ in range(7)]
    for gate in gates:  # the i-th execution waits on gates[i]
        await wait_until(lambda: model.active == 1)
        await settle()
        assert model.active == 1
        gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    assert model.max_active == 1
    assert model.sizes == [1, 2, 2, 2]
    await b.close()


async def test_close_with_drain_finishes_work_and_rejects_new_requests() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4, max_queue_delay_s=60.0, instance_count=2)
    gate, busy, busy_in = await start_busy(b, model)
    queued = req(2)
    task = spawn(b, queued)
    await wait_until(lambda: b.queue_depth == 1)
    closing = asyncio.create_task(b.close(drain=True))
    await settle()
    with pytest.raises(Unavailable, match="model 'm'"):
        await b.submit(req(1))
    expect(queued, await asyncio.wait_for(task, 5.0))  # closing: no more waiting for a fuller batch
    assert not closing.done()  # still draining the held execution
    gate.set()
    await asyncio.wait_for(closing, 5.0)
    expect(busy_in, await busy)
    assert b.closed and b.queue_depth == 0 and b.in_flight == 0
    await b.close()  # idempotent
    with pytest.raises(Unavailable):
        await b.submit(req(1))


async def test_close_without_drain_fails_queued_and_running_requests() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4)
    gate, busy, _ = await start_busy(b, model)  # runs in the caller's task (idle path)
    worker_gate = model.hold_next()
    on_worker = spawn(b, req(1))
    await wait_until(lambda: b.queue_depth == 1)
    gate.set()
    await busy
    await wait_until(lambda: model.active == 1)  # now executing on a worker task
    queued = spawn(b, req(1))
    await wait_until(lambda: b.queue_depth == 1)
    await asyncio.wait_for(b.close(drain=False), 5.0)
    for t in (on_worker, queued):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(t, 5.0)
    assert b.queue_depth == 0 and b.in_flight == 0
    worker_gate.set()


async def test_close_before_first_submit() -> None:
    b = make(FakeModel())
    await b.close()
    with pytest.raises(Unavailable):
        await b.submit(req(1))


# --------------------------------------------------------------------------- observer


async def test_observer_sees_batches_rejects_and_depth() -> None:
    model = FakeModel()
    obs = RecordingObserver()
    clock = FakeClock()
    b = make(model, max_batch_size=8, observer=obs, clock=clock)
    gate, busy, _ = await start_busy(b, model)
    tasks = [spawn(b, req(n)) for n in (2, 3)]
    await wait_until(lambda: b.queue_depth == 2)
    clock.advance(0.5)
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks), 5.0)
    assert [(rows, n) for rows, n, _, _ in obs.batches] == [(1, 1), (5, 2)]
    assert obs.batches[1][2] == [0.5, 0.5]
    assert all(compute >= 0 for *_, compute in obs.batches)
    assert obs.depths[:2] == [1, 2] and obs.depths[-1] == 0
    await b.close()


async def test_observer_errors_never_reach_the_batcher() -> None:
    model = FakeModel()
    b = make(model, max_batch_size=4, max_queue_size=1, observer=ExplodingObserver())
    gate, busy, _ = await start_busy(b, model)
    inputs = req(1)
    task = spawn(b, inputs)
    await wait_until(lambda: b.queue_depth == 1)
    with pytest.raises(QueueFull):
        await b.submit(req(1))
    gate.set()
    expect(inputs, await asyncio.wait_for(task, 5.0))
    await busy
    await b.close()
