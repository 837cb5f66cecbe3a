"""A model version served from a process of its own (``isolation: process``).

Loading a large model in the server's process takes CPU from the event loop and from the other
models' inference, whatever the loader thread's priority: onnxruntime builds a session in native
calls of several milliseconds that cannot be paused, and on a small machine those bursts show
up in everyone's tail latency. A version served from a child process can be loaded *gently*:

* the child runs at the lowest OS priority (``SCHED_IDLE``) while it starts, imports, builds the
  session and warms it up, where it is allowed to come back to normal priority afterwards (root
  or ``CAP_SYS_NICE``; otherwise it loads at normal priority);
* a small pacer process lets the child run for ``on_s``, stops it (``SIGSTOP``) for ``off_s``,
  and so on until the child reports ready. The child's work reaches the cores in short slices
  between which the serving threads have them to themselves.

Once ready, the child serves ``run`` calls over a pipe (numpy arrays pickled both ways) at
normal priority; the runner never calls ``run`` on the event loop. A crash in the child (a bad
custom op, an out-of-memory kill) fails that version's requests with a clear error and leaves
the server and the other models untouched.

Messages, parent -> child: ``("run", feeds)``, ``("close",)``. Child -> parent: ``("ready",
config bytes, row_ns, priority note)`` or ``("failed", message)`` once, then ``("ok", outputs)``
or ``("error", message)`` per run. The child exits on ``close`` or when the parent's end of the
pipe closes.
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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from model_store.config import signature_of
from model_store.errors import LoadError
from model_store.session import ModelSession, SessionOptions
from model_store.signature import Signature
from protos.model_config_pb2 import ModelConfig

# The pacer: let the processes ``argv[3:]`` run ``argv[1]`` seconds, stop them ``argv[2]``, repeat
# until they are gone (or the pacer is killed: its parent then continues them).
_PACER = """
import os, signal, sys, time
on, off, pids = float(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
def send(sig):
    for pid in list(pids):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pids.remove(pid)
while pids:
    time.sleep(on)
    send(signal.SIGSTOP)
    time.sleep(off)
    send(signal.SIGCONT)
"""


def _call(fn: Callable[[], None]) -> None:
    fn()


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the parent paces a loading child: run ``on_s``, stopped ``off_s``, repeat."""

    on_s: float = 0.001
    off_s: float = 0.003
    timeout_s: float = 600.0


@dataclass(slots=True)
class _Worker:
    proc: Any  # multiprocessing's spawn Process
    conn: Connection


class ProcessSession:
    """The ModelSession surface (name, version, config, signature, row_ns, run, warmup, close)
    for a session that lives in child processes: one per ``instances`` (the config's
    instance_group count), each running one execution at a time. ``run`` is thread-safe."""

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
        pacing: Pacing = Pacing(),
        start: Callable[[Callable[[], None]], None] = _call,
    ) -> None:
        self.name = name
        self.version = version
        self.version_dir = version_dir
        self.sha256 = sha256
        self._closed = False
        self._lock = threading.Lock()  # guards _closed against close() racing run()
        ctx = mp.get_context("spawn")
        args = (name, version, str(version_dir), config.SerializeToString(), options, sha256)
        self._workers: list[_Worker] = []
        ends = []
        for i in range(max(instances, 1)):
            conn, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_child,
                args=(child_end, *args),
                name=f"turnout-model-{name}-{version}-{i}",
                daemon=True,
            )
            self._workers.append(_Worker(proc, conn))
            ends.append(child_end)
        # ``start`` runs the spawn in the registry's spawner thread: a child inherits that
        # thread's scheduling (SCHED_IDLE where it can be undone, else normal at nice 0), so it
        # starts up and imports at idle priority; it returns to normal once loaded
        try:
            for w in self._workers:
                start(w.proc.start)
        except OSError as exc:
            self._kill()
            raise LoadError(f"model '{name}' version {version}: cannot start its process: {exc}") from exc
        finally:
            for end in ends:
                end.close()
        try:
            replies = self._wait_ready(pacing)
        except BaseException:
            self._kill()
            raise
        failed = [r for r in replies if r[0] != "ready"]
        if failed:
            self._kill()
            raise LoadError(str(failed[0][1]))
        _, config_bytes, row_ns, self.priority_note = replies[0]
        self.config = ModelConfig.FromString(config_bytes)
        self.signature: Signature = signature_of(self.config)
        self.row_ns = float(row_ns)
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._workers:
            self._free.put(w)

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

    def _wait_ready(self, pacing: Pacing) -> list[tuple[Any, ...]]:
        """Wait for every child's ready (or failed) report while a pacer process lets them run
        ``on_s`` and stops them ``off_s``, in turn. The pacer is a process of its own so that
        pacing never needs this process's GIL: a loader thread waking every millisecond would
        take the GIL from the event loop just as often."""
        pids = self.pids
        pacer = None
        if pacing.off_s > 0:
            cmd = [sys.executable, "-S", "-c", _PACER, repr(pacing.on_s), repr(pacing.off_s), *map(str, pids)]
            pacer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)
        deadline = time.monotonic() + pacing.timeout_s
        replies: list[tuple[Any, ...]] = []
        try:
            for w in self._workers:
                if not w.conn.poll(max(deadline - time.monotonic(), 0.0)):
                    raise LoadError(
                        f"model '{self.name}' version {self.version}: not loaded after {pacing.timeout_s:g} s"
                    )
                try:
                    replies.append(w.conn.recv())
                except EOFError:
                    w.proc.join(1.0)
                    raise LoadError(
                        f"model '{self.name}' version {self.version}: its process exited with"
                        f" {w.proc.exitcode} while loading"
                    ) from None
            return replies
        finally:
            if pacer is not None:
                pacer.kill()
                pacer.wait()
                for pid in pids:  # the pacer may have died between stopping and continuing them
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("this version was unloaded")
        w = self._free.get()  # the runner never runs more executions than there are workers
        try:
            w.conn.send(("run", feeds))
            kind, value = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(0.5)
            raise RuntimeError(
                f"its process exited (exit code {w.proc.exitcode}); load the model again to restart it"
            ) from None
        finally:
            self._free.put(w)
        if kind != "ok":
            raise RuntimeError(str(value))
        out: dict[str, np.ndarray] = value
        return out

    def warmup(self) -> None:
        """The children warmed their sessions up before they reported ready."""

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(("close",))
        for w in self._workers:
            w.proc.join(10)
        self._kill()

    def _kill(self) -> None:
        for w in self._workers:
            if w.proc.pid is not None and w.proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
                w.proc.kill()
                w.proc.join(5)
            w.conn.close()

    @property
    def closed(self) -> bool:
        return self._closed


def lower_to_idle_if_reversible() -> bool:
    """Put the calling thread in SCHED_IDLE if it may come back to SCHED_OTHER later (root or
    CAP_SYS_NICE); True if it did. Processes it forks start in SCHED_IDLE too."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:  # not allowed back: stay normal (an idle thread is useless to us)
        return False
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return True


def _child(
    conn: Connection,
    name: str,
    version: str,
    version_dir: str,
    config_bytes: bytes,
    options: SessionOptions,
    sha256: str,
) -> None:
    # Ctrl-C or SIGTERM to the process group are the parent's to handle; the child ends on
    # "close" or when the parent's end of the pipe closes (also when the parent is killed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        session = ModelSession(
            name, version, Path(version_dir), ModelConfig.FromString(config_bytes), options, sha256=sha256
        )
        session.warmup()
    except Exception as exc:  # LoadError or anything onnxruntime raises: report, then exit
        conn.send(("failed", str(exc)))
        return
    note = "normal"
    if os.sched_getscheduler(0) == os.SCHED_IDLE:  # loaded at idle priority: serve at normal
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        note = "idle"
    conn.send(("ready", session.config.SerializeToString(), session.row_ns, note))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            return
        try:
            out = session.run(msg[1])
        except Exception as exc:
            conn.send(("error", str(exc)))
        else:
            conn.send(("ok", out))
