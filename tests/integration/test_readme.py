"""The README's client snippet runs as written, against the demo server."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.server_proc import ROOT, ServerProc

README = (ROOT / "README.md").read_text()


def _python_block_after(heading: str) -> str:
    match = re.search(re.escape(heading) + r"\s*```python\n(.*?)```", README, re.S)
    assert match is not None, heading
    return match.group(1)


def test_the_tritonclient_snippet_runs_over_both_protocols(demo_server: ServerProc) -> None:
    code = _python_block_after("**tritonclient (Python)**")
    assert "tritonclient.http" in code and "tritonclient.grpc" in code
    code = code.replace("localhost:8001", demo_server.grpc_url).replace(
        "localhost:8000", demo_server.http_url
    )
    # a process of its own: tritonclient's protobuf stubs declare the names ours do
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    assert lines[0].startswith("[0]") and lines[1].startswith("[0]")  # gRPC and HTTP: the same label
    assert "'name': 'mlp'" in lines[2] and "'name': 'mlp'" in lines[3]


def test_the_perf_analyzer_note_names_the_debian_package() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("b64" in r for r in extras["dev"])  # not a Python package
    assert "apt-get install libb64-0d" in README
