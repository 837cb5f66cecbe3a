"""Start, probe and stop one Turnout server for a benchmark run.

The server runs in its own session (``setsid``) so its whole process group can be measured
(:mod:`benchmarks.cpu`) and stopped; ports are ephemeral unless given, read from ``--ports-file``.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, PYTHON

TURNOUT = Path(PYTHON).with_name("turnout")
ROOT = HERE.parent


# keep freed pages for reuse: purging them makes every large tensor buffer fault its pages in anew
# (16 MB gRPC requests: 9 -> 31 req/s, 36,500 -> 670 page faults each)
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc() -> str | None:
    """The jemalloc library, if installed (Debian: libjemalloc2)."""
    return ctypes.util.find_library("jemalloc")


def server_env() -> dict[str, str]:
    """The environment a benchmarked Turnout runs in: as deployed (the Dockerfile, ``make serve``),
    with jemalloc preloaded when it is installed; ``TURNOUT_BENCH_MALLOC=glibc`` leaves it out."""
    env = dict(os.environ)
    lib = jemalloc()
    if lib and env.get("TURNOUT_BENCH_MALLOC") != "glibc" and "jemalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(p for p in (env.get("LD_PRELOAD", ""), lib) if p)
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL
    it if it has not ended within 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Turnout:
    repo: Path
    workdir: Path
    http_port: int = 0
    grpc_port: int = 0
    extra_args: tuple[str, ...] = ()
    source: Path | None = None  # run ``python -m turnout`` from this source tree instead of the installed one
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # setsid: the server leads its own process group

    @property
    def cmd(self) -> list[str]:
        if self.source is None:
            program = [str(TURNOUT)]
        else:  # a tree from before the turnout namespace (benchmarks.commits' base) runs as ``server``
            program = [PYTHON, "-m", "turnout" if (self.source / "turnout").is_dir() else "server"]
        return [
            *program, "serve", str(self.repo), "--host", "127.0.0.1",
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--ports-file", str(self.workdir / "ports.json"), *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = self.workdir / "ports.json"
        ports.unlink(missing_ok=True)
        log = (self.workdir / "turnout.log").open("wb")
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.source,
            env=server_env(),
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"turnout exited with {self.proc.returncode}; see {self.workdir}/turnout.log"
                )
            if ports.exists() and not self.http_port:
                try:
                    p = json.loads(ports.read_text())
                    self.http_port, self.grpc_port = int(p["http"]), int(p["grpc"])
                except (ValueError, KeyError):
                    pass
            if self.http_port and http_status(f"http://{self.http}/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"turnout not ready after {timeout:.0f} s; see {self.workdir}/turnout.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def stats(self, model: str) -> dict[str, int]:
        return model_counters(self.http, model)


def model_counters(http: str, model: str) -> dict[str, int]:
    """A model's statistics (Triton's extension) summed over its versions: ``inference_count``
    (rows), ``execution_count`` (batches), ``compute_count`` / ``compute_ns`` (compute_infer,
    charged once per request), and ``batch_count`` / ``batch_ns`` (compute_infer per formed
    batch: once per execution)."""
    s = http_json(f"http://{http}/v2/models/{model}/stats")["model_stats"]
    batches = [b["compute_infer"] for v in s for b in v.get("batch_stats", [])]
    return {
        "inference_count": sum(int(v["inference_count"]) for v in s),
        "execution_count": sum(int(v["execution_count"]) for v in s),
        "compute_count": sum(int(v["inference_stats"]["compute_infer"]["count"]) for v in s),
        "compute_ns": sum(int(v["inference_stats"]["compute_infer"]["ns"]) for v in s),
        "batch_count": sum(int(b["count"]) for b in batches),
        "batch_ns": sum(int(b["ns"]) for b in batches),
    }


def avg_batch(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Average formed batch (rows per model execution) between two stats snapshots."""
    ex = after["execution_count"] - before["execution_count"]
    return round((after["inference_count"] - before["inference_count"]) / ex, 2) if ex > 0 else None
