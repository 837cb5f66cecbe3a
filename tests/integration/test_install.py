"""Installed, Turnout is one top-level package, ``turnout``: a wheel built from this checkout and
installed into a fresh virtual environment beside another distribution's top-level ``server``
package leaves both importable, and the installed ``turnout`` command serves its built-in demo
repository."""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the turnout wheel and another package named ``server``; the
    dependencies come from the test environment's site-packages through a .pth file (no
    network), read after the venv's own packages."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        check=True,
        timeout=300,
    )  # fmt: skip
    wheel = next((tmp / "dist").glob("turnout-*.whl"))
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    py = env / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    other = purelib / "server"
    other.mkdir()
    (other / "__init__.py").write_text('WHOSE = "another distribution"\n')
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


def test_both_top_level_names_import(venv: Path) -> None:
    code = (
        "import server, turnout, turnout.server.cli, turnout.server.runtime, turnout.router.controller, "
        "turnout.model_store.registry, turnout.drift.detector\n"
        "from turnout.protos import inference_pb2\n"
        "assert server.WHOSE == 'another distribution', server.__file__\n"
        "assert 'site-packages/turnout/server/' in turnout.server.cli.__file__, turnout.server.cli.__file__\n"
        "print(inference_pb2.ModelInferRequest.__module__)"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120, cwd=venv
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "turnout.protos.inference_pb2"


def test_the_installed_command_serves_its_demo_repository(venv: Path, tmp_path: Path) -> None:
    ports = tmp_path / "ports.json"
    log = (tmp_path / "turnout.log").open("wb")
    cmd = [
        str(venv / "bin" / "turnout"),
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
    ]
    proc = subprocess.Popen(
        [*cmd, "--ports-file", str(ports), "--state-dir", str(tmp_path / "state")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,  # not the checkout: nothing of it is on the path
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    try:
        deadline = time.monotonic() + 90
        while not ports.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ports.exists(), (tmp_path / "turnout.log").read_text()
        http = json.loads(ports.read_text())["http"]
        body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}]}
        ).encode()
        answer = None
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{http}/v2/models/iris/infer",
                    body,
                    {"content-type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.3)
        assert answer is not None, (tmp_path / "turnout.log").read_text()
        assert answer["model_name"] == "iris"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
