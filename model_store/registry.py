"""The live set of model versions.

Changes are serialized per model by a lock; a new version is loaded and warmed off the
event loop, then swapped in with one assignment, so a request sees either the old set of
versions or the new one. A retired version is closed only after its last in-flight request
finished. A failed load leaves what was serving untouched and is reported in the index.
The index holds only models the repository holds (or that still serve): a load of a name the
repository lacks, or a model removed from it, leaves no entry, so the index stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from turnout.model_store.config import instance_count
from turnout.model_store.errors import (
    LoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    VersionNotFoundError,
)
from turnout.model_store.pacing import idle_is_reversible
from turnout.model_store.process_session import ProcessSession
from turnout.model_store.reconcile import Step, version_step
from turnout.model_store.repository import LocalRepository, ModelSource, digest, fingerprint
from turnout.model_store.serving import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADING,
    IndexEntry,
    ModelState,
    ServingVersion,
)
from turnout.model_store.session import ModelSession, Session, SessionOptions
from turnout.protos.model_config_pb2 import ModelConfig

__all__ = [
    "LOADING",
    "READY",
    "UNAVAILABLE",
    "UNLOADING",
    "IndexEntry",
    "ModelRegistry",
    "ModelState",
    "ServingVersion",
    "isolation_of",
]

log = logging.getLogger("turnout.model_store")

Attach = Callable[[Session], Awaitable[Any]]
Detach = Callable[[Any], Awaitable[None]]


LoadFailed = Callable[[str, str, str], None]

# hashing a version's files pauses twice as long as each 1 MiB chunk took (see digest)
HASH_PAUSE = 2.0


class ModelRegistry:
    def __init__(
        self,
        repository: LocalRepository,
        options: SessionOptions,
        *,
        attach: Attach,
        detach: Detach,
        load_threads: int = 1,
        settle_secs: float = 0.0,
        on_load_failure: LoadFailed | None = None,
    ) -> None:
        self.repository = repository
        self.options = options
        self.settle_secs = settle_secs
        self._attach = attach
        self._detach = detach
        self._on_failure = on_load_failure
        self._models: dict[str, ModelState] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=load_threads, thread_name_prefix="turnout-load", initializer=_lower_priority
        )
        self._retiring: set[asyncio.Task[None]] = set()
        # starts model processes from a thread at nice 0 (a child inherits its forking thread's
        # nice value, and the loader threads run at nice 10); created here, by the caller's thread
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-spawn")
        self._idle_children = idle_is_reversible()
        self._spawner.submit(lambda: None).result()

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
            sv = self.resolve(name, version)
        except (ModelNotFoundError, VersionNotFoundError, ModelUnavailableError):
            return False
        return sv.session.healthy

    # ---- changes --------------------------------------------------------------------

    async def load(self, name: str, *, settle: bool = False) -> ModelState:
        """Bring ``name`` in line with the repository: load new or changed versions, then
        retire versions that left. Raises LoadError when the model has nothing to serve.

        With ``settle`` (poll mode) a version whose files changed within ``settle_secs`` is
        left for a later pass: it may still be being copied.

        A name the repository does not hold leaves no entry behind (as in Triton: the index
        lists what the repository holds, so made-up names cannot grow it)."""
        while True:
            state = self._models.get(name)
            if state is None:
                state = self._models[name] = ModelState(name)
            async with state.lock:
                if self._models.get(name) is not state:
                    continue  # forgotten while this call waited for the lock: start afresh
                state.loading = True
                state.unloaded = False
                try:
                    in_repository = await self._sync(state, settle)
                finally:
                    state.loading = False
                if not in_repository and not state.order:
                    del self._models[name]
                    raise LoadError(
                        f"failed to load '{name}', failed to poll from model repository: {state.reason}"
                    )
            break
        if not state.order:
            raise LoadError(f"failed to load '{name}': {state.reason or 'no version could be loaded'}")
        return state

    async def poll(self) -> None:
        """One poll-mode pass: new models load, changed ones sync, vanished ones unload.
        A failure in one model never stops the pass."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.repository.refresh)
        names = set(await loop.run_in_executor(self._pool, self.repository.model_names))
        for name in sorted(names | set(self._models)):
            state = self._models.get(name)
            if state is not None and state.unloaded and name in names:
                continue  # explicitly unloaded: stays so until loaded again
            try:
                if name in names:
                    await self.load(name, settle=True)
                elif state is not None:  # left the repository: unloaded and forgotten
                    if state.order:
                        await self.unload(name)
                    await self._forget(state)
            except LoadError:
                pass  # recorded in the index and the log
            except Exception:
                log.exception("model %s: poll failed", name)

    async def _sync(self, state: ModelState, settle: bool) -> bool:
        """Load, keep or retire ``state``'s versions; False when the repository lacks the model."""
        loop = asyncio.get_running_loop()
        name = state.name
        try:
            source: ModelSource = await loop.run_in_executor(self._pool, self.repository.read, name)
        except (LoadError, ModelNotFoundError) as exc:
            state.reason = str(exc)
            if isinstance(exc, ModelNotFoundError):
                await self._retire_all(state)
                return False
            self._failed(name, "", str(exc))
            return True
        if not source.selected:
            state.reason = "no version directory found by the version policy"
            if not state.order:
                log.error("model %s: %s", name, state.reason)
            await self._retire_all(state)
            return True
        new_versions: dict[str, ServingVersion] = {}
        failures: dict[str, str] = {}
        pending: dict[str, str] = {}
        for version in source.selected:
            old = state.versions.get(version)
            fp = await loop.run_in_executor(self._pool, fingerprint, source, version)
            step = version_step(
                fp,
                None if old is None else (old.fingerprint, old.session.healthy),
                state.failed_fingerprints.get(version),
                self.settle_secs if settle else None,
                time.time(),
            )
            if step is Step.KNOWN_FAILURE:
                failures[version] = state.failures.get(version, "failed to load")
            elif step is Step.PENDING:
                pending[version] = (
                    "files changed less than the settle time ago; waiting for them to stay unchanged"
                )
            if step is not Step.HASH:
                if old is not None:
                    new_versions[version] = old
                continue
            sha = await loop.run_in_executor(self._pool, digest, source, version, HASH_PAUSE)
            if old is not None and old.session.sha256 == sha and old.session.healthy:
                old.fingerprint = fp
                new_versions[version] = old
                continue
            try:
                session = await loop.run_in_executor(self._pool, self._load_session, source, version, sha)
            except LoadError as exc:
                failures[version] = str(exc)
                state.failed_fingerprints[version] = fp
                self._failed(name, version, str(exc))
                if old is not None:
                    new_versions[version] = old  # keep serving what worked
                continue
            state.failed_fingerprints.pop(version, None)
            runner = await self._attach(session)
            new_versions[version] = ServingVersion(session, runner, fp)
            where = ""
            if isinstance(session, ProcessSession):
                where = f", serving from process{'es' if len(session.pids) > 1 else ''} "
                where += ", ".join(map(str, session.pids))
            log.info("model %s version %s loaded (sha256 %s%s)", name, version, sha[:12], where)
        if failures or pending:
            # a new version that could not load never takes the place of what serves now
            for v, sv in state.versions.items():
                new_versions.setdefault(v, sv)
        _mark_compatibility(new_versions)
        retired = [sv for v, sv in state.versions.items() if new_versions.get(v) is not sv]
        state.versions = new_versions
        state.order = tuple(sorted(new_versions, key=int))
        state.failures = failures
        state.pending = pending
        state.reason = "; ".join(failures.values()) if not state.order else ""
        for sv in retired:
            self._retire(sv)
        return True

    def _failed(self, name: str, version: str, reason: str) -> None:
        log.error("model %s%s failed to load: %s", name, f" version {version}" if version else "", reason)
        if self._on_failure is not None:
            self._on_failure(name, version, reason)

    def _load_session(self, source: ModelSource, version: str, sha: str) -> Session:
        args = (source.name, version, source.versions[version], source.config, self.options)
        if isolation_of(source.config, self.options) == "process":
            instances = instance_count(source.config)
            return ProcessSession(
                *args, sha256=sha, instances=instances, start=self._spawn, idle=self._idle_children
            )
        session = ModelSession(*args, sha256=sha)
        session.warmup()
        return session

    def _spawn(self, fn: Callable[[], None]) -> None:
        self._spawner.submit(fn).result()

    async def unload(self, name: str) -> None:
        state = self._models.get(name)
        if state is None:
            raise ModelNotFoundError(f"unknown model '{name}'")
        async with state.lock:
            await self._retire_all(state)
            state.unloaded = True
            state.failures = {}
            state.failed_fingerprints = {}
            state.reason = "unloaded"

    async def _forget(self, state: ModelState) -> None:
        """Drop a model that serves nothing from the registry (and so from the index)."""
        async with state.lock:
            if not state.order and self._models.get(state.name) is state:
                del self._models[state.name]

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
            # freeing a large session takes a while: do it in a loader thread, not on the loop
            await asyncio.get_running_loop().run_in_executor(self._pool, sv.session.close)
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
                sv = state.versions[v]
                notes = [
                    n
                    for n in (
                        state.failures.get(v, ""),
                        sv.incompatible and f"signature differs: {sv.incompatible}",
                    )
                    if n
                ]
                if not sv.session.healthy:
                    entries.append(IndexEntry(name, v, UNAVAILABLE, sv.session.failure, sv.session.sha256))
                    continue
                entries.append(IndexEntry(name, v, READY, "; ".join(notes), sv.session.sha256))
            if ready_only:
                continue
            for v, why in sorted(state.failures.items()):
                if v not in state.versions:
                    entries.append(IndexEntry(name, v, UNAVAILABLE, why))
            for v, why in sorted(state.pending.items()):
                if v not in state.versions:
                    entries.append(IndexEntry(name, v, LOADING, why))
            if state.loading and not state.order:
                entries.append(IndexEntry(name, "", LOADING, ""))
            elif not state.order and not state.failures and not state.pending:
                entries.append(IndexEntry(name, "", UNAVAILABLE, state.reason or "not loaded"))
        return entries

    async def close(self) -> None:
        for state in self._models.values():
            await self._retire_all(state)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._spawner.shutdown(wait=False, cancel_futures=True)


def isolation_of(config: ModelConfig, options: SessionOptions) -> str:
    """The model config's ``isolation`` parameter ("thread" or "process"), else the server's."""
    param = config.parameters.get("isolation")
    value = param.string_value.strip().lower() if param is not None else ""
    if value in ("thread", "process"):
        return value
    if value:
        raise LoadError(
            f"model '{config.name}': parameter isolation must be 'thread' or 'process', not '{value}'"
        )
    return options.isolation


def _mark_compatibility(versions: dict[str, ServingVersion]) -> None:
    """Flag versions whose signature differs from the latest one's (the router refuses them)."""
    if not versions:
        return
    latest = versions[max(versions, key=int)].session.signature
    for sv in versions.values():
        sv.incompatible = sv.session.signature.compatible_with(latest) or ""


def _lower_priority() -> None:
    """Loader threads run at a lower OS priority, so loading and warming a large model takes
    CPU from serving only when a core is idle (onnxruntime and hashing run without the GIL)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: load at normal priority
        pass
