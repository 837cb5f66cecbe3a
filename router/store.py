"""Durable control-plane state shared by the worker processes of one server.

Layout of ``state_dir``:

* ``policies.json`` — ``{"format": 1, "generation": N, "policies": {model: policy}}``
* ``rollouts.json`` — ``{"format": 1, "generation": N, "rollouts": {model: state}}``
* ``audit.jsonl`` — one JSON record per line, append-only
* ``generation`` — the current generation as decimal text
* ``.lock`` — ``flock`` target serialising writers (exclusive) against readers (shared)
* ``.leader`` — ``flock`` target held for life by the one process that runs rollouts

Both JSON files are replaced atomically (:func:`router.files.write_atomically`): a crash
leaves either the old or the new file, never a torn one. Audit records are
:class:`router.audit.AuditRecord`.

Every commit raises a store-wide *generation* counter by one. It is kept in both JSON files
and, for cheap polling, in the tiny file ``generation`` (also replaced atomically, last in a
commit). Workers poll :meth:`ControlPlaneStore.generation` — one small read — and reload
when it moved. (A stat-based check of inode/mtime/size was not used: inodes are reused
after ``os.replace`` and timestamps are coarse, so two states could look the same.)
:meth:`ControlPlaneStore.commit` merges per-model changes into the files under the exclusive lock and can refuse with
:class:`StoreConflict` when the generation is not the one the caller last saw, so two
workers never overwrite each other's changes unknowingly (optimistic concurrency).

POSIX only (``fcntl.flock``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.router.audit import AuditRecord, append_record, read_records
from turnout.router.files import json_safe, locked, try_lock, write_atomically
from turnout.router.policy import PolicyError, TrafficPolicy
from turnout.router.rollout import RolloutError, RolloutState

FORMAT = 1
POLICIES_FILE = "policies.json"
ROLLOUTS_FILE = "rollouts.json"
AUDIT_FILE = "audit.jsonl"
GENERATION_FILE = "generation"
LOCK_FILE = ".lock"
LEADER_FILE = ".leader"


class StoreError(RuntimeError):
    """A state file cannot be read or written (corrupt JSON, unknown format, I/O error)."""


class StoreConflict(RuntimeError):
    """Someone else committed since the generation the caller expected."""


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """Everything :meth:`ControlPlaneStore.load` read, at one generation."""

    generation: int
    policies: dict[str, TrafficPolicy]
    rollouts: dict[str, RolloutState]


class ControlPlaneStore:
    """Atomic JSON files plus an append-only audit log in ``state_dir``; safe across processes."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._policies_path = self.state_dir / POLICIES_FILE
        self._rollouts_path = self.state_dir / ROLLOUTS_FILE
        self._audit_path = self.state_dir / AUDIT_FILE
        self._lock_path = self.state_dir / LOCK_FILE
        self._leader_path = self.state_dir / LEADER_FILE
        self._generation_path = self.state_dir / GENERATION_FILE
        self._leader_fd: int | None = None
        self._repair_generation_file()

    # -- locking -----------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Become (or stay) the one process that evaluates rollouts; non-blocking.

        The lock is held until :meth:`close` or process exit, after which another process's
        next call takes over.
        """
        if self._leader_fd is None:
            self._leader_fd = try_lock(self._leader_path)
        return self._leader_fd is not None

    @property
    def is_leader(self) -> bool:
        return self._leader_fd is not None

    def close(self) -> None:
        """Give up leadership (if held)."""
        if self._leader_fd is not None:
            os.close(self._leader_fd)
            self._leader_fd = None

    # -- reading -----------------------------------------------------------------------------

    def _read_generation_file(self) -> int | None:
        try:
            text = self._generation_path.read_text("ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read {self._generation_path}: {exc}") from exc
        try:
            return int(text.strip())
        except ValueError:
            return None

    def _repair_generation_file(self) -> None:
        """Make ``generation`` agree with the JSON files (after a crash mid-commit)."""
        if not self._policies_path.exists() and not self._rollouts_path.exists():
            return
        with locked(self._lock_path, exclusive=True):
            generation, _, _ = self._read_all()
            if self._read_generation_file() != generation:
                write_atomically(self._generation_path, str(generation).encode("ascii"))

    def _read(self, path: Path, section: str) -> tuple[int, dict[str, Any]]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0, {}
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StoreError(f"{path} is not a format-{FORMAT} {section} file")
        generation = doc.get("generation")
        entries = doc.get(section)
        if not isinstance(generation, int) or not isinstance(entries, dict):
            raise StoreError(f"{path} lacks a valid 'generation' or '{section}'")
        return generation, entries

    def _read_all(self) -> tuple[int, dict[str, Any], dict[str, Any]]:
        policies_generation, policies = self._read(self._policies_path, "policies")
        rollouts_generation, rollouts = self._read(self._rollouts_path, "rollouts")
        return max(policies_generation, rollouts_generation), policies, rollouts

    def generation(self) -> int:
        """The store's generation (0 when empty); one small file read, no lock."""
        generation = self._read_generation_file()
        if generation is not None:
            return generation
        with locked(self._lock_path, exclusive=False):
            generation, _, _ = self._read_all()
        return generation

    def changed_since(self, generation: int) -> bool:
        """True when someone committed after ``generation``."""
        return self.generation() != generation

    def load(self) -> StoreSnapshot:
        """Everything saved, read consistently (no writer runs meanwhile)."""
        with locked(self._lock_path, exclusive=False):
            generation, raw_policies, raw_rollouts = self._read_all()
        try:
            policies = {
                model: TrafficPolicy.from_json(model, obj, None) for model, obj in raw_policies.items()
            }
            rollouts = {model: RolloutState.from_json(obj) for model, obj in raw_rollouts.items()}
        except (PolicyError, RolloutError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"invalid entry in {self.state_dir}: {exc}") from exc
        return StoreSnapshot(generation, policies, rollouts)

    def read_audit(self, limit: int = 100, model: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` audit records (of ``model`` if given), oldest first.

        Reads the file backwards in blocks, so the cost depends on ``limit``, not on the log's
        length (unless filtering by a rare model). Unparseable lines are skipped.
        """
        return read_records(self._audit_path, limit, model)

    # -- writing -----------------------------------------------------------------------------

    def commit(
        self,
        *,
        policies: Mapping[str, TrafficPolicy | None] | None = None,
        rollouts: Mapping[str, RolloutState | None] | None = None,
        audit: Sequence[AuditRecord] = (),
        expected_generation: int | None = None,
    ) -> int:
        """Apply per-model changes (None deletes an entry) and append audit records, atomically
        per file and serialised across processes. Returns the new generation.

        With ``expected_generation`` the commit is refused with :class:`StoreConflict` if the
        store has moved on since. Models not mentioned are left as they are on disk.
        """
        with locked(self._lock_path, exclusive=True):
            generation, raw_policies, raw_rollouts = self._read_all()
            if expected_generation is not None and generation != expected_generation:
                raise StoreConflict(
                    f"control-plane state changed (generation {generation}, expected {expected_generation})"
                )
            if not policies and not rollouts:
                for record in audit:
                    append_record(self._audit_path, record)
                return generation
            new_generation = generation + 1
            if policies:
                for model, policy in policies.items():
                    if policy is None:
                        raw_policies.pop(model, None)
                    else:
                        raw_policies[model] = policy.to_json()
                self._write_json(
                    self._policies_path,
                    {"format": FORMAT, "generation": new_generation, "policies": raw_policies},
                )
            if rollouts:
                for model, state in rollouts.items():
                    if state is None:
                        raw_rollouts.pop(model, None)
                    else:
                        raw_rollouts[model] = state.to_json()
                self._write_json(
                    self._rollouts_path,
                    {"format": FORMAT, "generation": new_generation, "rollouts": raw_rollouts},
                )
            write_atomically(self._generation_path, str(new_generation).encode("ascii"))
            for record in audit:
                append_record(self._audit_path, record)
        return new_generation

    def save(self, policies: Mapping[str, TrafficPolicy], rollouts: Mapping[str, RolloutState]) -> int:
        """Replace the whole saved state (both files) with ``policies`` and ``rollouts``."""
        with locked(self._lock_path, exclusive=True):
            generation, _, _ = self._read_all()
            new_generation = generation + 1
            self._write_json(
                self._policies_path,
                {
                    "format": FORMAT,
                    "generation": new_generation,
                    "policies": {m: p.to_json() for m, p in policies.items()},
                },
            )
            self._write_json(
                self._rollouts_path,
                {
                    "format": FORMAT,
                    "generation": new_generation,
                    "rollouts": {m: s.to_json() for m, s in rollouts.items()},
                },
            )
            write_atomically(self._generation_path, str(new_generation).encode("ascii"))
        return new_generation

    def append_audit(self, record: AuditRecord) -> None:
        with locked(self._lock_path, exclusive=True):
            append_record(self._audit_path, record)

    def _write_json(self, path: Path, doc: Mapping[str, Any]) -> None:
        write_atomically(path, json.dumps(json_safe(doc), allow_nan=False, indent=1, sort_keys=True).encode())
