"""Start the real Turnout server as a subprocess on ephemeral loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_REPO = ROOT / "model_store" / "demo" / "repository"


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(
    workdir: Path,
    repo: Path | None = DEMO_REPO,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 60.0,
) -> ServerProc:
    workdir.mkdir(parents=True, exist_ok=True)
    ports = workdir / f"ports-{time.monotonic_ns()}.json"
    log_path = workdir / f"server-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "turnout", "serve"]
    if repo is not None:
        cmd.append(str(repo))
    cmd += ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--ports-file", str(ports), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    full_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    p = json.loads(ports.read_text())
    server = ServerProc(proc, p["http"], p["grpc"], log_path)
    if wait_ready:
        while True:
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                with urllib.request.urlopen(f"{server.base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"server never became ready: {server.log()}")
            time.sleep(0.05)
    return server


@contextlib.contextmanager
def running_server(
    workdir: Path, repo: Path | None = DEMO_REPO, args: Sequence[str] = (), **kw: object
) -> Iterator[ServerProc]:
    server = start_server(workdir, repo, args, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def cuda_runtime_lib() -> str:
    """perf_analyzer links libcudart; the nvidia-cuda-runtime-cu12 wheel carries it."""
    try:
        import nvidia.cuda_runtime as cr

        return str(Path(next(iter(cr.__path__))) / "lib")
    except ImportError:
        return ""


def demo_or_variant(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, variant_args: list[str] | None
) -> Iterator[ServerProc]:
    """For a fixture parametrized over a default and a variant: the shared demo server when
    ``variant_args`` is None, else a demo server of its own started with those flags."""
    if variant_args is None:
        yield request.getfixturevalue("demo_server")
        return
    server = start_server(tmp_path_factory.mktemp("variant"), args=variant_args)
    yield server
    assert server.stop() == 0, server.log()
