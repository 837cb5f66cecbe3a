"""``turnout serve --workers N``: N server processes sharing the same ports.

Each worker is a complete server (its own event loop, models and batchers) bound with
SO_REUSEPORT, so the kernel spreads connections across them and the work of the gRPC and
HTTP stacks uses every core. What must agree across workers lives in the state directory:
traffic policies and rollouts (router/store.py), explicit model loads and unloads
(server/model_ops.py); Prometheus metrics are aggregated through a shared directory.
The supervisor only resolves ports, starts workers, restarts one that dies, forwards
SIGTERM/SIGINT and writes the ports file once every worker serves."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from turnout.server.settings import Settings

log = logging.getLogger("turnout.supervisor")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.http_port = settings.http_port or _free_port(settings.host)
        self.grpc_port = settings.grpc_port or _free_port(settings.host)
        self.state_dir = settings.state_dir or Path(tempfile.mkdtemp(prefix="turnout-state-"))
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="turnout-metrics-"))
        self.run_dir = Path(tempfile.mkdtemp(prefix="turnout-run-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _spawn(self, worker: int) -> subprocess.Popen[bytes]:
        args = [
            *self.argv,
            "--workers",
            "1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--state-dir",
            str(self.state_dir),
            "--ports-file",
            str(self.run_dir / f"worker-{worker}.json"),
        ]
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir), TURNOUT_WORKER_ID=str(worker))
        return subprocess.Popen([sys.executable, "-m", "turnout", "serve", *args], env=env)

    def run(self) -> int:
        n = self.settings.workers
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop())
        for i in range(n):
            self.procs[i] = self._spawn(i)
        self._announce(n)
        restarts: list[float] = []
        while not self.stopping:
            time.sleep(0.2)
            for i, p in list(self.procs.items()):
                code = p.poll()
                if code is None or self.stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5 * n:
                    log.error("workers keep dying (%d restarts in a minute); giving up", len(restarts))
                    self._stop()
                    return 1
                log.error("worker %d exited with %s; restarting it", i, code)
                _mark_dead(p.pid)
                self.procs[i] = self._spawn(i)
        for p in self.procs.values():
            try:  # a worker drains for up to --exit-timeout-secs, then unloads its models
                p.wait(timeout=self.settings.exit_timeout_secs + 30)
            except subprocess.TimeoutExpired:
                p.kill()
        return 0

    def _announce(self, n: int) -> None:
        """Write the ports file once every worker is serving."""
        deadline = time.monotonic() + 300
        while not all((self.run_dir / f"worker-{i}.json").exists() for i in range(n)):
            if self.stopping or time.monotonic() > deadline:
                return
            time.sleep(0.05)
        log.info(
            "Turnout serving with %d workers: HTTP port %d, gRPC port %d", n, self.http_port, self.grpc_port
        )
        if self.settings.ports_file is not None:
            tmp = self.settings.ports_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"http": self.http_port, "grpc": self.grpc_port, "workers": n}))
            tmp.replace(self.settings.ports_file)

    def _stop(self) -> None:
        self.stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)


def _mark_dead(pid: int) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # metrics clean-up must not stop supervision
        log.exception("could not clear metrics of worker pid %d", pid)
