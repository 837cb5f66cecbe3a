"""The live set of model versions.

Changes are serialized per model by a lock; a new version is loaded and warmed off the
event loop, then swapped in with one assignment, so a request sees either the old set of
versions or the new one. A retired version is closed only after its last in-flight request
finished. A failed load leaves what was serving untouched and is reported in the index.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model_store.errors import LoadError, ModelNotFoundError, ModelUnavailableError, VersionNotFoundError
from model_store.repository import LocalRepository, ModelSource
from model_store.session import ModelSession, SessionOptions

log = logging.getLogger("turnout.model_store")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"

Attach = Callable[[ModelSession], Awaitable[Any]]
Detach = Callable[[Any], Awaitable[None]]


class ServingVersion:
    """A loaded version and whatever the server attached to it (its batcher)."""

    __slots__ = ("_drained", "in_flight", "loaded_at", "retiring", "runner", "session")

    def __init__(self, session: ModelSession, runner: Any) -> None:
        self.session = session
        self.runner = runner
        self.in_flight = 0
        self.retiring = False
        self.loaded_at = time.time()
        self._drained: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self.session.name

    @property
    def version(self) -> str:
        return self.session.version

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def drained(self) -> None:
        if self.in_flight == 0:
            return
        self._drained = asyncio.Event()
        await self._drained.wait()


@dataclass(slots=True)
class ModelState:
    name: str
    versions: dict[str, ServingVersion] = field(default_factory=dict)  # replaced, never mutated
    order: tuple[str, ...] = ()  # serving versions ascending
    failures: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    loading: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def latest(self) -> ServingVersion | None:
        return self.versions[self.order[-1]] if self.order else None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class ModelRegistry:
    def __init__(
        self,
        repository: LocalRepository,
        options: SessionOptions,
        *,
        attach: Attach,
        detach: Detach,
        load_threads: int = 1,
    ) -> None:
        self.repository = repository
        self.options = options
        self._attach = attach
        self._detach = detach
        self._models: dict[str, ModelState] = {}
        self._pool = ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="turnout-load")
        self._retiring: set[asyncio.Task[None]] = set()

    # ---- hot path -------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> ServingVersion:
        state = self._models.get(name)
        if state is None:
            raise ModelNotFoundError(f"unknown model '{name}'")
        if version:
            sv = state.versions.get(version)
            if sv is None:
                served = ", ".join(state.order) or "none"
                raise VersionNotFoundError(
                    f"model '{name}' has no version '{version}' being served (serving: {served})"
                )
            return sv
        latest = state.latest
        if latest is None:
            raise ModelUnavailableError(
                f"model '{name}' has no version ready to serve"
                + (f": {state.reason}" if state.reason else "")
            )
        return latest

    def get_state(self, name: str) -> ModelState | None:
        return self._models.get(name)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except (ModelNotFoundError, VersionNotFoundError, ModelUnavailableError):
            return False
        return True

    # ---- changes --------------------------------------------------------------------

    async def load(self, name: str) -> ModelState:
        """Bring ``name`` in line with the repository: load new or changed versions, retire
        versions that left. Raises LoadError when nothing could be loaded."""
        state = self._models.get(name)
        if state is None:
            state = self._models[name] = ModelState(name)
        async with state.lock:
            state.loading = True
            try:
                await self._sync(state)
            finally:
                state.loading = False
        if not state.order:
            raise LoadError(f"failed to load '{name}': {state.reason or 'no version could be loaded'}")
        return state

    async def _sync(self, state: ModelState) -> None:
        loop = asyncio.get_running_loop()
        name = state.name
        try:
            source: ModelSource = await loop.run_in_executor(self._pool, self.repository.read, name)
        except (LoadError, ModelNotFoundError) as exc:
            state.reason = str(exc)
            log.error("model %s: %s", name, exc)
            if isinstance(exc, ModelNotFoundError):
                await self._retire_all(state)
            return
        if not source.selected:
            state.reason = f"no version directory with {source.config.default_model_filename or 'model.onnx'} found by the version policy"
            log.error("model %s: %s", name, state.reason)
            return
        new_versions: dict[str, ServingVersion] = {}
        failures: dict[str, str] = {}
        for version in source.selected:
            old = state.versions.get(version)
            try:
                session = await loop.run_in_executor(self._pool, self._load_session, source, version)
            except LoadError as exc:
                failures[version] = str(exc)
                log.error("model %s version %s failed to load: %s", name, version, exc)
                if old is not None:
                    new_versions[version] = old  # keep serving what worked
                continue
            if old is not None and old.session.sha256 == session.sha256:
                session.close()
                new_versions[version] = old
                continue
            runner = await self._attach(session)
            new_versions[version] = ServingVersion(session, runner)
            log.info("model %s version %s loaded (sha256 %s)", name, version, session.sha256[:12])
        retired = [sv for v, sv in state.versions.items() if new_versions.get(v) is not sv]
        state.versions = new_versions
        state.order = tuple(sorted(new_versions, key=int))
        state.failures = failures
        state.reason = "; ".join(failures.values()) if not state.order else ""
        for sv in retired:
            self._retire(sv)

    def _load_session(self, source: ModelSource, version: str) -> ModelSession:
        session = ModelSession(source.name, version, source.versions[version], source.config, self.options)
        sizes = tuple(
            sorted({1, *(s for s in session.config.dynamic_batching.preferred_batch_size if s > 0)})
        )
        session.warmup(sizes)
        return session

    async def unload(self, name: str) -> None:
        state = self._models.get(name)
        if state is None:
            raise ModelNotFoundError(f"unknown model '{name}'")
        async with state.lock:
            await self._retire_all(state)
            state.reason = "unloaded"

    async def _retire_all(self, state: ModelState) -> None:
        retired = list(state.versions.values())
        state.versions = {}
        state.order = ()
        for sv in retired:
            self._retire(sv)

    def _retire(self, sv: ServingVersion) -> None:
        sv.retiring = True
        task = asyncio.get_running_loop().create_task(self._close_when_drained(sv))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_drained(self, sv: ServingVersion) -> None:
        await sv.drained()
        try:
            await self._detach(sv.runner)
        finally:
            sv.session.close()
            log.info("model %s version %s retired", sv.name, sv.version)

    # ---- views ----------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries: list[IndexEntry] = []
        names = sorted(set(self.repository.model_names()) | set(self._models))
        for name in names:
            state = self._models.get(name)
            if state is None:
                if not ready_only:
                    entries.append(IndexEntry(name, "", UNAVAILABLE, "not loaded"))
                continue
            for v in state.order:
                entries.append(IndexEntry(name, v, READY, state.failures.get(v, "")))
            if ready_only:
                continue
            for v, why in sorted(state.failures.items()):
                if v not in state.versions:
                    entries.append(IndexEntry(name, v, UNAVAILABLE, why))
            if state.loading and not state.order:
                entries.append(IndexEntry(name, "", LOADING, ""))
            elif not state.order and not state.failures:
                entries.append(IndexEntry(name, "", UNAVAILABLE, state.reason or "not loaded"))
        return entries

    async def close(self) -> None:
        for state in self._models.values():
            await self._retire_all(state)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
