from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_proc import ServerProc, start_server


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = start_server(tmp_path_factory.mktemp("demo"))
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.log()}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
