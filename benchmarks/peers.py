"""Start one peer server of the team harness (``../shared/peers``) for a curve, the way its
``run_peer.sh`` starts it: same venvs, same wrappers, same options, on 127.0.0.1:8000 (HTTP)
and :8001 (gRPC), in its own process group so that its CPU can be measured and it can be stopped.

Only the peers whose wrapper serves the two benchmark MLPs are here: ``kserve`` (KServe's Python
ModelServer) and ``triton`` / ``triton-nodelay`` (tritonserver with a PyTriton-bound onnxruntime
function, dynamic batching with a 2 ms / 0 µs queue delay).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PEERS_DIR
from benchmarks.server import http_status, stop_group

PEERS = ("kserve", "triton", "triton-nodelay")
HTTP, GRPC = "127.0.0.1:8000", "127.0.0.1:8001"


def available(root: Path, name: str) -> bool:
    venv = "kserve" if name == "kserve" else "pytriton"
    return (root / f"{venv}-venv" / "bin" / "python").exists() and (PEERS_DIR / "run_peer.sh").exists()


@dataclass
class Peer:
    name: str
    root: Path  # $PEERS: the harness's venvs
    model_dir: Path  # mlp_small.onnx, mlp_large.onnx
    log: Path
    extra_args: tuple[str, ...] = ()
    token: str = f"bench-{os.getpid()}"  # PyTriton's access token for its restricted APIs
    proc: subprocess.Popen[bytes] | None = None
    http: str = HTTP
    grpc: str = GRPC

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until both models are ready; returns the seconds that took."""
        if http_status(f"http://{HTTP}/v2/health/live", timeout=1) != 0:
            raise RuntimeError(f"something already listens on {HTTP}")
        env = dict(os.environ, PYTRITON_ACCESS_TOKEN=self.token)
        if self.name == "kserve":
            cmd = [str(self.root / "kserve-venv/bin/python"), str(PEERS_DIR / "kserve/server.py"),
                   "--model_dir", str(self.model_dir), "--http_port", "8000", "--grpc_port", "8001"]  # fmt: skip
        elif self.name in ("triton", "triton-nodelay"):
            py = self.root / "pytriton-venv/bin/python"
            libdir = subprocess.run(
                [str(py), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
            cmd = [str(py), str(PEERS_DIR / "pytriton/server.py"), "--model-dir", str(self.model_dir)]
            if self.name == "triton-nodelay":
                cmd += ["--max-queue-delay-us", "0"]
        else:
            raise ValueError(f"unknown peer {self.name!r}; known: {', '.join(PEERS)}")
        cmd += self.extra_args
        t0 = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer {self.name} exited; see {self.log}")
            if all(
                http_status(f"http://{HTTP}/v2/models/{m}/ready") == 200 for m in ("mlp_small", "mlp_large")
            ):
                return time.monotonic() - t0
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"peer {self.name} not ready after {timeout:.0f} s; see {self.log}")

    def headers(self, proto: str) -> tuple[str, ...]:
        """What perf_analyzer must send to read a Triton peer's configuration and statistics."""
        if not self.name.startswith("triton"):
            return ()
        key = "triton-grpc-protocol-triton-access-token" if proto == "grpc" else "triton-access-token"
        return (f"{key}:{self.token}",)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc)
        deadline = time.monotonic() + 20  # the port is free again before the next server starts
        while http_status(f"http://{HTTP}/v2/health/live", timeout=1) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
