"""A model version served from processes of its own (``isolation: process``).

Loading a large model in the server's process takes CPU from the event loop and from the other
models' inference, whatever the loader thread's priority: onnxruntime builds a session in native
calls of several milliseconds that cannot be paused, and on a small machine those bursts show
up in everyone's tail latency. A version served from child processes (one per instance of its
``instance_group``) can be loaded *gently*:

* each child is put at the lowest OS priority (``SCHED_IDLE``) as soon as it starts, where it may
  come back to normal priority afterwards (root, ``CAP_SYS_NICE`` or a permissive
  ``RLIMIT_NICE``); otherwise it loads at normal priority;
* a small pacer process lets the children run for ``on_s``, stops them (``SIGSTOP``) for
  ``off_s``, and so on until they report ready. Their work reaches the cores in short slices
  between which the serving threads have them to themselves.

Once ready, a child puts all its threads back to normal priority and serves ``run`` calls over a
pipe (numpy arrays pickled both ways). The runner calls ``run`` from this session's own threads,
never from the event loop or the shared inference pool. A child that dies or stops answering
fails that version's requests with a clear error; the version turns unready until the model is
loaded again; the other models and versions serve on.

Messages, parent -> child: ``("run", feeds)``, ``("close",)``. Child -> parent: ``("ready",
config bytes, row_ns)`` or ``("failed", message)`` once, then ``("ok", outputs)`` or
``("error", message)`` per run. A child exits on ``close`` or when the parent's end of the pipe
closes. At interpreter exit any child still running is killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from turnout.model_store.config import signature_of
from turnout.model_store.errors import LoadError
from turnout.model_store.pacing import PACER, Pacing, continue_pids
from turnout.model_store.process_child import child_main, log_setup
from turnout.model_store.session import SessionOptions
from turnout.model_store.signature import Signature
from turnout.protos.model_config_pb2 import ModelConfig


def _call(fn: Callable[[], None]) -> None:
    fn()


_GENTLE = Pacing()


@dataclass(slots=True)
class _Worker:
    proc: Any  # multiprocessing's spawn Process
    conn: Connection
    busy_since: float | None = None  # monotonic time the current run was sent, if any
    timed_out: bool = False  # killed by the watchdog


def _kill_workers(workers: list[_Worker], stop_watch: threading.Event) -> None:
    """Kill what is still running (continued first, in case it was stopped) and close the
    pipes. Also runs at interpreter exit for a session never closed, before multiprocessing
    waits for its children: the children ignore SIGTERM, so that wait would never end."""
    stop_watch.set()
    for w in workers:
        pid = w.proc.pid
        if pid is not None and w.proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
    for w in workers:
        if w.proc.pid is not None:
            w.proc.join(5)
        w.conn.close()


class ProcessSession:
    """The ModelSession surface (name, version, config, signature, row_ns, run, warmup, close)
    for a session that lives in child processes: one per ``instances`` (the config's
    instance_group count), each running one execution at a time. ``run`` is thread-safe and
    meant to be called from :attr:`executor`, this session's own threads (one per child)."""

    remote = True

    def __init__(
        self,
        name: str,
        version: str,
        version_dir: Path,
        config: ModelConfig,
        options: SessionOptions,
        *,
        sha256: str,
        instances: int = 1,
        pacing: Pacing = _GENTLE,
        start: Callable[[Callable[[], None]], None] = _call,
        idle: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.version_dir = version_dir
        self.sha256 = sha256
        self.run_timeout_s = options.process_run_timeout_s
        self.load_timeout_s = options.process_load_timeout_s
        self._closed = False
        self._workers: list[_Worker] = []
        self._stop_watch = threading.Event()
        self._finalizer = weakref.finalize(self, _kill_workers, self._workers, self._stop_watch)
        try:
            replies = self._start(config, options, max(instances, 1), pacing, start, idle)
        except BaseException as exc:
            self._finalizer()
            if isinstance(exc, LoadError) or not isinstance(exc, Exception):
                raise
            raise LoadError(f"model '{name}' version {version}: cannot start its processes: {exc}") from exc
        failed = [r for r in replies if r[0] != "ready"]
        if failed:
            self._finalizer()
            raise LoadError(str(failed[0][1]))
        _, config_bytes, row_ns = replies[0]
        self.config = ModelConfig.FromString(config_bytes)
        self.signature: Signature = signature_of(self.config)
        self.row_ns = float(row_ns)
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._workers:
            self._free.put(w)
        self.executor = ThreadPoolExecutor(len(self._workers), thread_name_prefix=f"turnout-{name}-{version}")
        # One watchdog for the whole run, the send included (a child that stops reading its pipe
        # blocks a large request's send, which a receive timeout would not cover): it kills a
        # child whose run has outlasted the run timeout.
        threading.Thread(
            target=_watch, args=(self._workers, self.run_timeout_s, self._stop_watch), daemon=True
        ).start()

    def _start(
        self,
        config: ModelConfig,
        options: SessionOptions,
        instances: int,
        pacing: Pacing,
        start: Callable[[Callable[[], None]], None],
        idle: bool,
    ) -> list[tuple[Any, ...]]:
        ctx = mp.get_context("spawn")
        args = (
            self.name,
            self.version,
            str(self.version_dir),
            config.SerializeToString(),
            options,
            self.sha256,
            log_setup(),
        )
        ends = []
        for i in range(instances):
            conn, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=child_main,
                args=(child_end, *args),
                name=f"turnout-model-{self.name}-{self.version}-{i}",
                daemon=True,
            )
            self._workers.append(_Worker(proc, conn))
            ends.append(child_end)
        pacer: list[subprocess.Popen[bytes]] = []

        def launch() -> None:
            # All in one thread at nice 0 (``start``: the registry's spawner; a process inherits
            # its forking thread's nice value), with no hand-off between a child's start, its move
            # to SCHED_IDLE and the start of its pacing: each step waiting for a busy loader thread
            # would let the child run at full speed meanwhile.
            for w in self._workers:
                w.proc.start()
                if idle:
                    with contextlib.suppress(OSError):
                        os.sched_setscheduler(w.proc.pid, os.SCHED_IDLE, os.sched_param(0))
            if pacing.off_s > 0:
                cmd = [
                    sys.executable,
                    "-S",
                    "-c",
                    PACER,
                    repr(pacing.on_s),
                    repr(pacing.off_s),
                    *map(str, self.pids),
                ]
                pacer.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True))

        try:
            start(launch)
        finally:
            for end in ends:
                end.close()
        return self._wait_ready(pacing, pacer[0] if pacer else None)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    @property
    def healthy(self) -> bool:
        return self._closed or all(w.proc.is_alive() for w in self._workers)

    @property
    def failure(self) -> str:
        """Why the version cannot serve ("" while it can)."""
        dead = [w.proc for w in self._workers if not w.proc.is_alive()]
        if self._closed or not dead:
            return ""
        return f"its process exited (exit code {dead[0].exitcode}); load the model again to restart it"

    def _wait_ready(self, pacing: Pacing, pacer: subprocess.Popen[bytes] | None) -> list[tuple[Any, ...]]:
        """Wait for every child's ready (or failed) report while the pacer process lets them run
        ``on_s`` and stops them ``off_s``, in turn. The pacer is a process of its own so that
        pacing never needs this process's GIL: a loader thread waking every millisecond would
        take the GIL from the event loop just as often."""
        pids = self.pids
        deadline = time.monotonic() + self.load_timeout_s
        replies: list[tuple[Any, ...]] = []
        try:
            for w in self._workers:
                while not w.conn.poll(0.25):
                    if pacer is not None and pacer.poll() is not None:  # the pacer died: let them run
                        continue_pids(pids)
                        pacer = None
                    if time.monotonic() > deadline:
                        raise LoadError(
                            f"model '{self.name}' version {self.version}: not loaded after {self.load_timeout_s:g} s"
                        )
                try:
                    replies.append(w.conn.recv())
                except EOFError:
                    code = w.proc.exitcode
                    raise LoadError(
                        f"model '{self.name}' version {self.version}: its process exited"
                        + (f" with {code}" if code is not None else "")
                        + " while loading"
                    ) from None
            return replies
        finally:
            if pacer is not None:
                pacer.kill()
                pacer.wait()
            continue_pids(pids)  # the pacer may have died between stopping and continuing them

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("this version was unloaded")
        if not self.healthy:  # fail fast: the version is unready until the model is loaded again
            raise RuntimeError(self.failure)
        w = self._free.get()  # this session's executor has one thread per worker
        w.busy_since = time.monotonic()  # a run that outlasts the timeout: the watchdog kills the child
        try:
            w.conn.send(("run", feeds))
            kind, value = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(0.5)
            if w.timed_out:  # hung: killed, so the version turns unready and a load restarts it
                raise RuntimeError(
                    f"its process did not answer within {self.run_timeout_s:g} s and was stopped;"
                    " load the model again to restart it"
                ) from None
            raise RuntimeError(
                f"its process exited (exit code {w.proc.exitcode}); load the model again to restart it"
            ) from None
        finally:
            w.busy_since = None
            self._free.put(w)
        if kind != "ok":
            raise RuntimeError(str(value))
        out: dict[str, np.ndarray] = value
        return out

    def warmup(self) -> None:
        """The children warmed their sessions up before they reported ready."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown(wait=True)  # the runner has drained; nothing should be running
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(("close",))
        for w in self._workers:
            w.proc.join(10)
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed


def _watch(workers: list[_Worker], timeout_s: float, stop: threading.Event) -> None:
    """Kill a child whose run was sent more than ``timeout_s`` ago (checked a few times per
    timeout, at most once a second)."""
    while not stop.wait(min(1.0, timeout_s / 4)):
        now = time.monotonic()
        for w in workers:
            since = w.busy_since
            if since is not None and now - since > timeout_s and w.proc.pid is not None:
                w.timed_out = True
                with contextlib.suppress(OSError):
                    os.kill(w.proc.pid, signal.SIGKILL)
