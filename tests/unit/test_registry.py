"""Model registry: rolling swaps, drain before close, failures that keep the old version."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turnout.model_store.errors import LoadError, ModelNotFoundError, VersionNotFoundError
from turnout.model_store.registry import READY, UNAVAILABLE, ModelRegistry
from turnout.model_store.repository import LocalRepository
from turnout.model_store.session import ModelSession, SessionOptions

DEMO = Path(__file__).resolve().parents[2] / "model_store" / "demo" / "repository"


class GatedRunner:
    """Runs the real session, but only when the test opens the gate."""

    def __init__(self, session: ModelSession) -> None:
        self.session = session
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await self.gate.wait()
        assert not self.session.closed
        return self.session.run(feeds)

    async def close(self) -> None:
        self.closed = True


def make_registry(repo: Path) -> tuple[ModelRegistry, list[GatedRunner]]:
    runners: list[GatedRunner] = []
    failures: list[tuple[str, str, str]] = []

    async def attach(session: ModelSession) -> Any:
        r = GatedRunner(session)
        runners.append(r)
        return r

    async def detach(runner: Any) -> None:
        await runner.close()

    reg = ModelRegistry(
        LocalRepository(repo),
        SessionOptions(),
        attach=attach,
        detach=detach,
        on_load_failure=lambda *a: failures.append(a),
    )
    reg.failures = failures  # type: ignore[attr-defined]
    return reg, runners


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "mlp").mkdir(parents=True)
    shutil.copytree(DEMO / "mlp" / "1", root / "mlp" / "1")
    (root / "mlp" / "config.pbtxt").write_text((DEMO / "mlp" / "config.pbtxt").read_text())
    return root


X = {"input": np.ones((1, 32), np.float32)}


async def test_retired_version_closes_only_after_in_flight_requests(repo: Path) -> None:
    reg, runners = make_registry(repo)
    await reg.load("mlp")
    sv1 = reg.resolve("mlp")
    runners[0].gate.clear()
    sv1.acquire()
    pending = asyncio.ensure_future(sv1.runner.run(X))
    await asyncio.sleep(0)

    shutil.copytree(DEMO / "mlp" / "2", repo / "mlp" / "2")
    (repo / "mlp" / "config.pbtxt").write_text(
        (DEMO / "mlp" / "config.pbtxt").read_text().replace("all {}", "latest { num_versions: 1 }")
    )
    await reg.load("mlp")
    assert reg.resolve("mlp").version == "2"
    with pytest.raises(VersionNotFoundError):
        reg.resolve("mlp", "1")
    await asyncio.sleep(0.05)
    assert sv1.retiring and not sv1.session.closed and not runners[0].closed  # still in flight

    runners[0].gate.set()
    out = await pending
    sv1.release()
    assert out["output"].shape == (1, 8)
    await asyncio.sleep(0.05)
    assert sv1.session.closed and runners[0].closed
    await reg.close()


async def test_unchanged_files_are_not_reloaded(repo: Path) -> None:
    reg, runners = make_registry(repo)
    await reg.load("mlp")
    sv = reg.resolve("mlp")
    await reg.load("mlp")
    assert reg.resolve("mlp") is sv and len(runners) == 1
    # same bytes rewritten (new mtime/ctime): the digest says nothing changed
    path = repo / "mlp" / "1" / "model.onnx"
    path.write_bytes(path.read_bytes())
    await reg.load("mlp")
    assert reg.resolve("mlp") is sv and len(runners) == 1
    # different bytes: a new session takes over
    shutil.copyfile(DEMO / "mlp" / "2" / "model.onnx", path)
    await reg.load("mlp")
    assert reg.resolve("mlp") is not sv and len(runners) == 2
    await reg.close()


async def test_corrupt_new_version_keeps_old_serving(repo: Path) -> None:
    reg, _ = make_registry(repo)
    (repo / "mlp" / "config.pbtxt").write_text(
        (DEMO / "mlp" / "config.pbtxt").read_text().replace("all {}", "latest { num_versions: 1 }")
    )
    await reg.load("mlp")
    (repo / "mlp" / "3").mkdir()
    (repo / "mlp" / "3" / "model.onnx").write_bytes(b"garbage")
    await reg.load("mlp")
    assert reg.resolve("mlp").version == "1"
    idx = {(e.name, e.version): e for e in reg.index()}
    assert idx[("mlp", "1")].state == READY
    assert idx[("mlp", "3")].state == UNAVAILABLE and "cannot load" in idx[("mlp", "3")].reason
    assert reg.failures and reg.failures[-1][:2] == ("mlp", "3")  # type: ignore[attr-defined]
    # a good file at version 3 loads normally afterwards
    shutil.copyfile(DEMO / "mlp" / "2" / "model.onnx", repo / "mlp" / "3" / "model.onnx")
    await reg.load("mlp")
    assert reg.resolve("mlp").version == "3"
    await asyncio.sleep(0.05)
    await reg.close()


async def test_incompatible_signature_is_flagged(repo: Path) -> None:
    reg, _ = make_registry(repo)
    (repo / "mlp" / "config.pbtxt").unlink()
    (repo / "mlp" / "2").mkdir()
    shutil.copyfile(DEMO / "iris" / "1" / "model.onnx", repo / "mlp" / "2" / "model.onnx")
    (repo / "mlp" / "config.pbtxt").write_text("version_policy: { all {} }\n")
    await reg.load("mlp")
    assert reg.resolve("mlp", "1").incompatible  # differs from the latest (2)
    assert not reg.resolve("mlp", "2").incompatible
    entry = next(e for e in reg.index() if e.version == "1")
    assert "signature differs" in entry.reason
    await reg.close()


async def test_unknown_and_failed_models(repo: Path) -> None:
    reg, _ = make_registry(repo)
    with pytest.raises(LoadError):
        await reg.load("missing")
    with pytest.raises(ModelNotFoundError):
        reg.resolve("nothing")
    (repo / "empty").mkdir()
    with pytest.raises(LoadError):
        await reg.load("empty")
    await reg.close()


async def test_settle_holds_back_changing_files(repo: Path) -> None:
    reg, _ = make_registry(repo)
    reg.settle_secs = 3600.0  # every file counts as "still being written"
    await reg.load("mlp")  # explicit loads do not wait
    shutil.copytree(DEMO / "mlp" / "2", repo / "mlp" / "2")
    await reg.poll()
    assert reg.get_state("mlp").order == ("1",)  # type: ignore[union-attr]
    assert any(e.version == "2" and e.state == "LOADING" for e in reg.index())
    reg.settle_secs = 0.0
    await reg.poll()
    assert reg.get_state("mlp").order == ("1", "2")  # type: ignore[union-attr]
    await reg.close()


def test_paced_hashing_gives_the_same_digest(tmp_path: Path) -> None:
    from turnout.model_store.repository import digest

    repo = tmp_path / "repo"
    shutil.copytree(DEMO / "mlp", repo / "mlp")
    (repo / "mlp" / "2" / "weights.bin").write_bytes(
        np.arange(600_000, dtype=np.int32).tobytes()
    )  # > 2 chunks
    source = LocalRepository(repo).read("mlp")
    assert digest(source, "2", pause=2.0) == digest(source, "2") != digest(source, "1")


async def test_loads_of_names_the_repository_lacks_leave_no_entry(repo: Path) -> None:
    reg, _ = make_registry(repo)
    await reg.load("mlp")
    before = reg.index()
    for i in range(200):
        with pytest.raises(
            LoadError, match=f"failed to load 'nosuch{i}', failed to poll from model repository"
        ):
            await reg.load(f"nosuch{i}")
    assert reg.index() == before
    assert reg.model_names() == ["mlp"]
    # concurrent loads of one made-up name: all refused, none leaves an entry
    results = await asyncio.gather(*(reg.load("ghost") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, LoadError) for r in results)
    assert reg.get_state("ghost") is None and reg.index() == before
    # a model that exists but fails to load keeps its UNAVAILABLE entry with the reason
    (repo / "bad" / "1").mkdir(parents=True)
    (repo / "bad" / "1" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(LoadError, match="cannot load"):
        await reg.load("bad")
    entry = next(e for e in reg.index() if e.name == "bad")
    assert entry.state == UNAVAILABLE and "cannot load" in entry.reason
    await reg.close()


async def test_a_model_removed_from_the_repository_leaves_the_index(repo: Path) -> None:
    reg, _ = make_registry(repo)
    await reg.poll()
    assert reg.resolve("mlp").version == "1"
    shutil.rmtree(repo / "mlp")
    await reg.poll()
    assert reg.get_state("mlp") is None and reg.index() == []
    with pytest.raises(ModelNotFoundError):
        reg.resolve("mlp")
    await asyncio.sleep(0.05)
    await reg.close()
