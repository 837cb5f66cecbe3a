"""A start that cannot succeed ends at once, non-zero, with one line that says why."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_proc import ROOT


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    return subprocess.run(
        [sys.executable, "-m", "turnout", "serve", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of standard error, after checking there is no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_missing_repository_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = _serve(str(missing), "--http-port", "0", "--grpc-port", "0")
    assert result.returncode == 2
    assert _reason(result) == f"turnout: model repository {missing} does not exist"


def test_a_file_is_not_a_repository(tmp_path: Path) -> None:
    file = tmp_path / "model.onnx"
    file.write_bytes(b"")
    result = _serve("--model-repository", str(file), "--http-port", "0", "--grpc-port", "0")
    assert result.returncode == 2
    assert _reason(result) == f"turnout: model repository {file} is not a directory"


@pytest.mark.parametrize(
    ("protocol", "flag", "other", "extra"),
    [
        ("HTTP", "--http-port", "--grpc-port", []),
        ("gRPC", "--grpc-port", "--http-port", []),
        ("gRPC", "--grpc-port", "--http-port", ["--grpc-transport", "grpcio"]),
    ],
)
def test_a_port_in_use_is_named(
    taken_port: int, protocol: str, flag: str, other: str, extra: list[str]
) -> None:
    result = _serve(flag, str(taken_port), other, "0", "--no-drift", *extra)
    assert result.returncode == 1
    reason = _reason(result)
    assert reason.startswith(f"turnout: cannot listen for {protocol} on 127.0.0.1:{taken_port}: "), reason
