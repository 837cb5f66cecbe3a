"""Busy polling: the event loop keeps polling, instead of sleeping, for a short window after
network input.

A request that arrives while the loop sleeps in ``epoll_wait`` first has to wake its thread,
and on a virtual machine that wakes a halted vCPU: tens of microseconds before any of our code
runs, paid again on every round trip of a client that sends one request at a time. While the
window is open the loop reschedules a cheap callback each turn, so it polls its sockets with a
zero timeout and picks up the next request at once.

The cost is CPU: while requests keep coming less than a window apart, the loop thread stays busy
(at most one core, and only what the loop leaves idle). Under load the loop is busy anyway; with
no traffic it sleeps once the window has passed. The window restarts on every ``kick`` (the
protocols call it on input and when an answer has gone out), and a window of 0 turns polling
off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoll:
    __slots__ = ("_clock", "_deadline", "_loop", "_paused", "_spinning", "window_s")

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, at the first kick
        self._clock = clock
        self.window_s = window_s
        self._deadline = 0.0
        self._spinning = False
        self._paused = 0

    def kick(self) -> None:
        """Traffic (input arrived, or an answer went out): poll for another window from now."""
        if self.window_s <= 0:
            return
        self._deadline = self._clock() + self.window_s
        if not self._spinning and not self._paused:
            self._start()

    def pause(self) -> None:
        """Stop polling until ``resume``: while another thread needs the GIL (onnxruntime
        returning a batch), a loop that never sleeps would keep it from getting it."""
        self._paused += 1

    def resume(self) -> None:
        self._paused -= 1
        if not self._paused and not self._spinning and self._clock() < self._deadline:
            self._start()

    @property
    def spinning(self) -> bool:
        return self._spinning

    def _start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._spinning = True
        self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        if self._paused or self._clock() >= self._deadline:
            self._spinning = False
            return
        assert self._loop is not None
        self._loop.call_soon(self._turn)
