"""Loading a child process gently: the pacer that lets it run in short slices, and whether a
process put at the lowest OS priority may come back (see model_store/process_session.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

__all__ = ["PACER", "Pacing", "continue_pids", "idle_is_reversible"]

# The pacer: let the processes ``argv[3:]`` run ``argv[1]`` seconds, stop them ``argv[2]``, repeat
# until they are gone. Told to stop (SIGTERM, SIGINT: a Ctrl-C to the server's process group
# reaches it too) or orphaned, it lets them run again before it exits. It runs at nice 10 among
# the server's processes, and that is deliberate: when the server is busy the pacer wakes late,
# so the children are let to continue later and load more slowly, just when that matters. With
# the pacer in a session of its own at nice 0 (strict timing), the children got more CPU and
# the p99 of other models during a load was 2.0x the quiet p99 instead of 1.4x.
PACER = """
import os, signal, sys, time
on, off, pids = float(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
parent = os.getppid()
os.nice(10)
def send(sig):
    for pid in list(pids):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pids.remove(pid)
def leave(*_):
    send(signal.SIGCONT)
    sys.exit(0)
signal.signal(signal.SIGTERM, leave)
signal.signal(signal.SIGINT, leave)
while pids and os.getppid() == parent:
    time.sleep(on)
    send(signal.SIGSTOP)
    time.sleep(off)
    send(signal.SIGCONT)
send(signal.SIGCONT)
"""


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the parent paces a loading child: run ``on_s``, stopped ``off_s``, repeat."""

    on_s: float = 0.001
    off_s: float = 0.003


def continue_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def idle_is_reversible() -> bool:
    """Whether a process of ours put at SCHED_IDLE may come back to SCHED_OTHER (root,
    CAP_SYS_NICE or RLIMIT_NICE); tried on the calling thread, which is left as it was."""
    try:
        before = os.sched_getscheduler(0)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    try:
        os.sched_setscheduler(0, before, os.sched_param(0))
        return True
    except OSError:
        return False
