"""Run a real HAProxy (the Debian package) in front of Turnout replicas, for fleet tests.

HTTP and gRPC each get a frontend on a loopback port. gRPC goes over h2c end to end (``proto
h2`` on the bind line and on the backend servers); both backends check each replica's
``/v2/health/ready`` every 100 ms, so a replica taken down with SIGTERM (readiness false at once,
then a lame duck) leaves the rotation before it stops taking requests. Idempotent requests that
found a closing connection are retried on another replica (``retry-on``, ``option redispatch``),
as an operator would configure for inference, which has no side effects.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Backend:
    name: str
    http_port: int
    grpc_port: int


def config(http_port: int, grpc_port: int, backends: Sequence[Backend], stats_socket: Path) -> str:
    servers_http = "\n".join(f"  server {b.name} 127.0.0.1:{b.http_port} check" for b in backends)
    servers_grpc = "\n".join(
        f"  server {b.name} 127.0.0.1:{b.grpc_port} proto h2 check port {b.http_port} check-proto h1"
        for b in backends
    )
    return f"""global
  maxconn 2000
  stats socket {stats_socket} mode 600 level admin

defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout check 1s
  option httpchk GET /v2/health/ready
  http-check expect status 200
  default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1
  retries 3
  option redispatch 1
  # a connection that fails or closes before any answer is retried on another replica
  retry-on conn-failure empty-response response-timeout

frontend http_in
  bind 127.0.0.1:{http_port}
  default_backend turnout_http

frontend grpc_in
  bind 127.0.0.1:{grpc_port} proto h2
  default_backend turnout_grpc

backend turnout_http
  balance roundrobin
  http-reuse safe
{servers_http}

backend turnout_grpc
  balance roundrobin
{servers_grpc}
"""


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    stats_socket: Path
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status and last check (``UP L7OK``, ``DOWN L7STS``...), from ``show stat``."""
        text = self.command("show stat").lstrip("# ")
        return {
            (row["pxname"], row["svname"]): f"{row['status']} {row['check_status']}".strip()
            for row in csv.DictReader(io.StringIO(text))
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def retries(self) -> dict[str, tuple[int, int]]:
        """backend -> (requests retried, requests redispatched to another server)."""
        text = self.command("show stat").lstrip("# ")
        return {
            row["pxname"]: (int(row["wretr"] or 0), int(row["wredis"] or 0))
            for row in csv.DictReader(io.StringIO(text))
            if row["svname"] == "BACKEND"
        }

    def wait(self, server: str, state: str, timeout: float = 10.0) -> None:
        """Until ``server`` is ``state`` (UP or DOWN) in both backends; UP only once a health
        check passed (HAProxy starts servers UP before their first check)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            mine = [v for (_, name), v in st.items() if name == server]
            if all(v.startswith(state) and (state != "UP" or "L7OK" in v) for v in mine):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server} not {state} in HAProxy: {st}")
            time.sleep(0.05)


@contextlib.contextmanager
def running_haproxy(workdir: Path, backends: Sequence[Backend]) -> Iterator[HAProxy]:
    assert HAPROXY is not None
    http_port, grpc_port = free_port(), free_port()
    stats_socket = workdir / "haproxy.sock"
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(config(http_port, grpc_port, backends, stats_socket))
    log_path = workdir / "haproxy.log"
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    with log_path.open("wb") as log:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    hap = HAProxy(proc, http_port, grpc_port, stats_socket, log_path)
    try:
        deadline = time.monotonic() + 10
        while not stats_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield hap
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
