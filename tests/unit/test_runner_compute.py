"""Compute runs a tiny model on the event loop thread and a costly one in the pool, judging by
the CPU time a run takes, so that waiting (for the GIL, for a core) never counts as cost."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np

from turnout.model_store.session import ModelSession
from turnout.server.runner import Compute


class _Session:
    name = "m"
    version = "1"
    remote = False  # a process-served session (ProcessSession) says True
    executor = None  # ... and brings its own threads

    def __init__(self, busy_s: float, sleep_s: float) -> None:
        self.busy_s = busy_s
        self.sleep_s = sleep_s
        self.row_ns = 10_000.0  # as measured at warm-up: 10 us a row
        self.threads: list[int] = []

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        end = time.thread_time() + self.busy_s
        while time.thread_time() < end:  # CPU work
            pass
        time.sleep(self.sleep_s)  # waiting: costs wall time, not CPU
        return {"y": feeds["x"]}


def _drive(session: _Session, runs: int) -> tuple[int, Compute]:
    async def main() -> tuple[int, Compute]:
        loop_thread = threading.get_ident()
        with ThreadPoolExecutor(1) as pool:
            compute = Compute(cast(ModelSession, session), pool, inline_ns=50_000)
            for _ in range(runs):
                out, _ = await compute({"x": np.zeros((1, 2), np.float32)}, 1)
                assert out["y"].shape == (1, 2)
        return sum(t == loop_thread for t in session.threads), compute

    return asyncio.run(main())


def test_waiting_does_not_push_a_tiny_model_off_the_loop() -> None:
    session = _Session(busy_s=0.0, sleep_s=0.002)  # 2 ms of wall time, ~no CPU
    inline, compute = _drive(session, 20)
    assert inline == 20
    assert compute.row_ns < 50_000


def test_a_process_served_model_never_runs_on_the_loop() -> None:
    session = _Session(busy_s=0.0, sleep_s=0.0)  # as cheap as can be, but run() waits on a pipe
    session.remote = True
    inline, _ = _drive(session, 10)
    assert inline == 0 and len(session.threads) == 10


def test_a_costly_model_moves_to_the_pool() -> None:
    session = _Session(busy_s=0.003, sleep_s=0.0)  # 3 ms of CPU a row
    inline, compute = _drive(session, 40)
    assert compute.row_ns > 50_000
    assert inline < 40  # the first runs were inline (10 us estimate), the later ones pooled
    assert session.threads[-1] != session.threads[0]


def test_run_inline_respects_the_budget_and_records_the_batch() -> None:
    from turnout.server.observe.stats import VersionStats
    from turnout.server.runner import DirectRunner

    session = _Session(busy_s=0.0, sleep_s=0.0)  # estimate: 10 us a row (warm-up figure)
    with ThreadPoolExecutor(1) as pool:
        compute = Compute(cast(ModelSession, session), pool, inline_ns=50_000)
        stats = VersionStats("m", "1")
        runner = DirectRunner(cast(ModelSession, session), compute, 1, stats)
        feeds = {"x": np.zeros((8, 2), np.float32)}
        assert runner.run_inline(feeds, 8, 3, budget_ns=50_000) is None  # 8 x 10 us > 50 us: not here
        assert session.threads == []
        out = runner.run_inline(feeds, 8, 3, budget_ns=500_000)
        assert out is not None and out["y"].shape == (8, 2)
        assert session.threads == [threading.get_ident()]
        assert stats.execution_count == 1 and list(stats.batches) == [8]  # one 8-row execution


class _PoolCostlier(_Session):
    """Costs CPU only off the loop thread: a run in the pool measures more than one inline."""

    def __init__(self, loop_thread: int, pool_busy_s: float) -> None:
        super().__init__(busy_s=0.0, sleep_s=0.0)
        self.loop_thread = loop_thread
        self.pool_busy_s = pool_busy_s
        self.row_ns = 100_000.0  # over the 50 us budget: the pool, but for a probe

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.busy_s = 0.0 if threading.get_ident() == self.loop_thread else self.pool_busy_s
        return super().run(feeds)


def test_a_cheap_model_measured_in_the_pool_is_measured_again_on_the_loop() -> None:
    async def main() -> list[bool]:
        loop_thread = threading.get_ident()
        session = _PoolCostlier(loop_thread, pool_busy_s=0.00015)  # 150 us in the pool, ~0 inline
        with ThreadPoolExecutor(1) as pool:
            compute = Compute(cast(ModelSession, session), pool, inline_ns=50_000)
            for _ in range(3 * Compute.PROBE_EVERY):
                await compute({"x": np.zeros((1, 2), np.float32)}, 1)
        return [t == loop_thread for t in session.threads]

    on_loop = asyncio.run(main())
    assert all(on_loop[-Compute.PROBE_EVERY :])  # a probe on the loop measured it cheap: it stays


def test_with_nothing_else_in_flight_a_costlier_run_stays_on_the_loop() -> None:
    async def main(idle: bool) -> int:
        loop_thread = threading.get_ident()
        session = _Session(busy_s=0.0005, sleep_s=0.0)  # 500 us of CPU: over the 50 us budget
        session.row_ns = 500_000.0
        with ThreadPoolExecutor(1) as pool:
            compute = Compute(
                cast(ModelSession, session), pool, inline_ns=50_000, idle=lambda: idle, idle_ns=1_000_000
            )
            for _ in range(10):
                await compute({"x": np.zeros((1, 2), np.float32)}, 1)
        return sum(t == loop_thread for t in session.threads)

    assert asyncio.run(main(idle=True)) == 10  # under the 1 ms idle budget: no hand-off
    assert asyncio.run(main(idle=False)) == 0


def test_a_request_that_only_looked_alone_goes_to_the_pool() -> None:
    """Under load the next requests may still be unread when one arrives: after two turns of the
    loop they have started (here: ``idle`` says so the second time), and the run leaves the loop."""

    async def main() -> int:
        loop_thread = threading.get_ident()
        session = _Session(busy_s=0.0005, sleep_s=0.0)
        session.row_ns = 500_000.0
        answers = iter([True] + [False] * 100)
        with ThreadPoolExecutor(1) as pool:
            compute = Compute(
                cast(ModelSession, session),
                pool,
                inline_ns=50_000,
                idle=lambda: next(answers),
                idle_ns=1_000_000,
            )
            await compute({"x": np.zeros((1, 2), np.float32)}, 1)
        return sum(t == loop_thread for t in session.threads)

    assert asyncio.run(main()) == 0
