"""What the registry holds: a live version with what the server attached to it
(:class:`ServingVersion`), a model's versions and load state (:class:`ModelState`), and the
repository index's entries."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from turnout.model_store.repository import Fingerprint
from turnout.model_store.session import Session

__all__ = ["LOADING", "READY", "UNAVAILABLE", "UNLOADING", "IndexEntry", "ModelState", "ServingVersion"]

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"


class ServingVersion:
    """A loaded version and whatever the server attached to it (its batcher)."""

    __slots__ = (
        "_drained",
        "fingerprint",
        "in_flight",
        "incompatible",
        "loaded_at",
        "retiring",
        "runner",
        "session",
    )

    def __init__(self, session: Session, runner: Any, fp: Fingerprint = ()) -> None:
        self.session = session
        self.runner = runner
        self.fingerprint = fp
        self.in_flight = 0
        self.retiring = False
        self.incompatible = ""  # why its signature differs from the model's latest version
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
    failed_fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # versions waiting for their files to settle
    reason: str = ""
    loading: bool = False
    unloaded: bool = False
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
    sha256: str = ""
