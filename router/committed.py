"""Each model's traffic policy and rollout as last committed, kept in step with the store.

Changes are computed by a caller-supplied builder on fresh state (see :mod:`router.changes`),
committed to the :class:`~router.store.ControlPlaneStore` (when there is one) with their
audit records, and only then applied locally. Commits use optimistic concurrency: if another
worker committed first, the change is rebuilt on the new state. Without a store the state
lives in this process only and audit records are kept in a bounded in-memory log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from turnout.router.audit import AuditRecord
from turnout.router.changes import Change
from turnout.router.policy import TrafficPolicy
from turnout.router.rollout import RolloutState
from turnout.router.store import ControlPlaneStore, StoreConflict

Builder = Callable[[TrafficPolicy | None, RolloutState | None], Change]
RolloutListener = Callable[[str, RolloutState | None], None]


class CommittedState:
    """Policies and rollouts of every model, the store generation they correspond to."""

    def __init__(
        self,
        store: ControlPlaneStore | None,
        *,
        on_rollout: RolloutListener,
        audit_capacity: int = 1000,
        max_commit_attempts: int = 5,
    ) -> None:
        """``on_rollout(model, state)`` is called whenever a model's rollout may have changed."""
        self._store = store
        self._on_rollout = on_rollout
        self._max_attempts = max(1, max_commit_attempts)
        self.policies: dict[str, TrafficPolicy] = {}
        self.rollouts: dict[str, RolloutState] = {}
        self._memory_audit: deque[AuditRecord] = deque(maxlen=audit_capacity)
        self.generation = 0
        if store is not None:
            self.reload()

    def audit(self, limit: int = 100, model: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` audit records (all workers' when there is a store), oldest first."""
        if self._store is not None:
            return self._store.read_audit(limit, model)
        records = [r for r in self._memory_audit if model is None or r.model == model]
        return records[-limit:] if limit > 0 else []

    def lead(self) -> bool:
        """Whether this process is the one that judges rollouts (always, without a store)."""
        return self._store is None or self._store.try_lead()

    def reload(self) -> bool:
        """Replace local state with what the store holds; True if its generation moved."""
        if self._store is None:
            return False
        snapshot = self._store.load()
        moved = snapshot.generation != self.generation
        models = set(self.rollouts) | set(snapshot.rollouts)
        self.policies = dict(snapshot.policies)
        self.rollouts = dict(snapshot.rollouts)
        for model in models:
            self._on_rollout(model, self.rollouts.get(model))
        self.generation = snapshot.generation
        return moved

    def refresh(self) -> None:
        """Reload when another process committed since."""
        if self._store is not None and self._store.changed_since(self.generation):
            self.reload()

    def close(self) -> None:
        """Release this process's store leadership."""
        if self._store is not None:
            self._store.close()

    def transact(self, model: str, build: Builder) -> Change:
        """Compute a change on fresh state, commit it (retrying on conflicts), apply it."""
        attempt = 0
        while True:
            self.refresh()
            change = build(self.policies.get(model), self.rollouts.get(model))
            if change.empty:
                return change
            if self._store is None:
                self._memory_audit.extend(change.audit)
            else:
                try:
                    self.generation = self._store.commit(
                        policies={model: change.policy} if change.set_policy else None,
                        rollouts={model: change.rollout} if change.set_rollout else None,
                        audit=change.audit,
                        expected_generation=self.generation,
                    )
                except StoreConflict:
                    attempt += 1
                    if attempt >= self._max_attempts:
                        raise
                    continue
            self._apply(model, change)
            return change

    def _apply(self, model: str, change: Change) -> None:
        if change.set_policy:
            if change.policy is None:
                self.policies.pop(model, None)
            else:
                self.policies[model] = change.policy
        if change.set_rollout:
            if change.rollout is None:
                self.rollouts.pop(model, None)
            else:
                self.rollouts[model] = change.rollout
            self._on_rollout(model, change.rollout)
