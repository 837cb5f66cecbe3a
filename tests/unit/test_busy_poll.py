"""BusyPoll: when the loop polls, when it stops, and that it pauses for other threads.

A real event loop runs the callbacks; a fake clock decides when the window has passed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np

from turnout.server.busy_poll import BusyPoll
from turnout.server.runner import Compute


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_kick_polls_until_the_window_has_passed() -> None:
    async def main() -> None:
        clock = FakeClock()
        bp = BusyPoll(0.0005, clock)
        assert not bp.spinning
        bp.kick()
        assert bp.spinning
        await turns(10)
        assert bp.spinning  # the clock has not moved: still inside the window
        clock.now += 0.0004
        bp.kick()  # a new kick restarts the window from now
        clock.now += 0.0004
        await turns()
        assert bp.spinning
        clock.now += 0.0002
        await turns()
        assert not bp.spinning  # 0.6 ms since the last kick: the loop may sleep again

    asyncio.run(main())


def test_a_window_of_zero_never_polls() -> None:
    async def main() -> None:
        bp = BusyPoll(0.0, FakeClock())
        bp.kick()
        assert not bp.spinning
        await turns()
        assert not bp.spinning

    asyncio.run(main())


def test_pause_stops_polling_and_resume_restarts_it_inside_the_window() -> None:
    async def main() -> None:
        clock = FakeClock()
        bp = BusyPoll(0.001, clock)
        bp.kick()
        bp.pause()
        bp.pause()  # two runs in threads at once
        await turns()
        assert not bp.spinning
        bp.kick()  # input while paused does not start polling
        await turns()
        assert not bp.spinning
        bp.resume()
        assert not bp.spinning  # one run still in its thread
        bp.resume()
        assert bp.spinning  # the last kick was under a window ago
        clock.now += 0.002
        await turns()
        assert not bp.spinning
        bp.pause()
        bp.resume()
        assert not bp.spinning  # resumed after the window: nothing to poll for

    asyncio.run(main())


def test_polling_does_not_starve_the_loop() -> None:
    """Timers and socket I/O keep running while the loop polls."""

    async def main() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readexactly(4))
            await w.drain()
            w.close()

        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        bp = BusyPoll(10.0)  # the real clock and a long window: polling throughout
        bp.kick()
        ran: list[str] = []
        asyncio.get_running_loop().call_later(0.01, ran.append, "timer")
        reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await asyncio.sleep(0.05)
        assert ran == ["timer"] and bp.spinning
        writer.close()
        srv.close()
        bp.pause()
        await turns()
        assert not bp.spinning

    asyncio.run(main())


class _Session:
    """The parts of a Session that Compute uses; run() records whether polling was paused."""

    name, version, remote, executor, row_ns = "m", "1", False, None, 10_000_000.0  # 10 ms a row

    def __init__(self, bp: BusyPoll) -> None:
        self.bp = bp
        self.seen: list[bool] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.05)  # the loop meanwhile runs the turn that was already scheduled
        self.seen.append(self.bp.spinning)
        return {"y": feeds["x"] * 2}


def test_compute_pauses_polling_while_a_thread_runs_the_model() -> None:
    async def main() -> None:
        clock = FakeClock()
        bp = BusyPoll(1.0, clock)
        session = _Session(bp)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            compute = Compute(session, pool, 50_000.0, bp)  # type: ignore[arg-type]
            bp.kick()
            assert bp.spinning
            out, _ = await compute({"x": np.ones((1, 2), np.float32)}, 1)
        assert out["y"].tolist() == [[2.0, 2.0]]
        # the turn scheduled when the run started ended the polling
        assert session.seen == [False]
        assert bp.spinning  # resumed after the run, still inside the window

    asyncio.run(main())
