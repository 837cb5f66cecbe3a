"""CPU and memory accounting from /proc (psutil is not installed).

``proc_cpu(pid)`` / ``pgid_cpu(pgid)``: utime+stime seconds so far; ``children_cpu()``: CPU of
this process's waited-for children (load generators run as subprocesses); ``pgid_rss_mb``:
resident memory of a process group.  :class:`CpuMeter` turns them into "cores busy" over a span.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds (0.0 if it is gone)."""
    st = _stat_fields(pid)
    return (int(st[11]) + int(st[12])) / TICK if st else 0.0


def _pgid_pids(pgid: int) -> list[str]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat_fields(d)
            if st and int(st[2]) == pgid:
                pids.append(d)
    return pids


def pgid_cpu(pgid: int) -> float:
    """utime + stime summed over the live processes of a process group, in seconds."""
    tot = 0
    for pid in _pgid_pids(pgid):
        st = _stat_fields(pid)
        if st:
            tot += int(st[11]) + int(st[12])
    return tot / TICK


def pgid_rss_mb(pgid: int) -> float:
    """Resident set size summed over a process group, in MiB."""
    tot = 0
    for pid in _pgid_pids(pgid):
        try:
            with open(f"/proc/{pid}/statm") as f:
                tot += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return tot * PAGE / 2**20


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK  # user..steal minus idle and iowait


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class CpuMeter:
    """Cores busy over a span: server process group, (child) load generators, rest of the machine.

    ``other_cores`` is load from processes that are neither (other users of a shared machine);
    a point with a high value is noisy."""

    server_pgid: int
    t0: float = field(default=0.0)
    s0: float = field(default=0.0)
    c0: float = field(default=0.0)
    m0: float = field(default=0.0)

    def __enter__(self) -> CpuMeter:
        self.t0, self.s0, self.c0 = time.perf_counter(), pgid_cpu(self.server_pgid), children_cpu()
        self.m0 = machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        srv, cli = pgid_cpu(self.server_pgid) - self.s0, children_cpu() - self.c0
        other = max(machine_cpu() - self.m0 - srv - cli, 0.0)  # everything else on the machine
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(srv, 2),
            "client_cpu_s": round(cli, 2),
            "server_cores": round(srv / wall, 2) if wall > 0 else 0.0,
            "client_cores": round(cli / wall, 2) if wall > 0 else 0.0,
            "other_cores": round(other / wall, 2) if wall > 0 else 0.0,
        }
