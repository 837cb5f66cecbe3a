"""The traffic controller: per-model policies and rollouts, with routing on the hot path.

One :class:`TrafficController` lives in each worker process. The server calls

* :meth:`TrafficController.route` for every request (a dict lookup, and for a policy with
  canaries or shadows one keyed hash or random draw); ``None`` means "no policy, use the
  model's default version";
* :meth:`TrafficController.record` after every request with the version that answered;
* :meth:`TrafficController.tick` about twice a second: it adopts changes other workers
  committed to the shared store, and — in the one worker holding the store's leader lock —
  judges running rollouts and applies the resulting policies;
* the operator methods (``set_policy``, ``rollback``, ``start_rollout`` …) from the
  control-plane API. Every change is committed to the store (when there is one) before it
  takes effect locally, with an audit record of who did what and why. Commits use optimistic
  concurrency: if another worker committed first, the change is recomputed on fresh state.

``clock`` must be wall-clock seconds (``time.time``): rollout timestamps are persisted and
compared across processes and restarts.

What each operation changes is decided by the pure functions of :mod:`router.changes`; the
controller hands them to :class:`~router.committed.CommittedState`, which builds them on
fresh state, commits and applies them. Rollout statistics are kept in
:class:`~router.rollout_signals.RolloutWindows`. Only the leader's own traffic is judged;
with N workers behind a fair load balancer that is a 1/N sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from turnout.router import changes
from turnout.router.audit import AuditRecord
from turnout.router.changes import Actor, Change, NotConfigured, PolicyRefused, Transition, Validator, Verdict
from turnout.router.committed import Builder, CommittedState
from turnout.router.decide import RouteDecision, decide
from turnout.router.gates import evaluate_gates
from turnout.router.policy import TrafficPolicy
from turnout.router.rollout import (
    RolloutPlan,
    RolloutState,
    abort,
    approve,
    evaluate,
    pause,
    promote,
    reject,
    resume,
)
from turnout.router.rollout_signals import AccuracySince, AccuracySource, RolloutWindows, shadow_disagreement
from turnout.router.shadow import Comparison, PairStats, ShadowStats, Task, compare_outputs
from turnout.router.store import ControlPlaneStore

DriftSource = Callable[[str, str], str | None]

__all__ = ["DriftSource", "NotConfigured", "PolicyRefused", "TrafficController", "Validator"]


class TrafficController:
    """Policies, rollouts and shadow statistics of every model served by this process."""

    def __init__(
        self,
        store: ControlPlaneStore | None,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        validate: Validator,
        drift: DriftSource | None = None,
        accuracy: AccuracySource | None = None,
        audit_capacity: int = 1000,
        max_commit_attempts: int = 5,
    ) -> None:
        """``validate(model, version)`` returns None when the version can serve, else why not.
        ``drift(model, version)`` (optional) returns the version's drift status
        (``ok``/``warning``/``drift``) or None when unknown. ``accuracy(model, version)``
        (optional) returns a version's (correct, labelled) rows from ground-truth feedback.
        """
        self._clock = clock
        self._random = rng.random
        self._validate = validate
        self._drift = drift
        self._windows = RolloutWindows()
        self._accuracy = AccuracySince(accuracy) if accuracy is not None else None
        self.shadow_stats = ShadowStats()
        self._state = CommittedState(
            store,
            on_rollout=self._sync_windows,
            audit_capacity=audit_capacity,
            max_commit_attempts=max_commit_attempts,
        )

    # -- hot path ----------------------------------------------------------------------------

    def route(self, model: str, routing_key: str | None = None) -> RouteDecision | None:
        """Where a request for ``model`` goes; None when the model has no traffic policy."""
        policy = self._state.policies.get(model)
        if policy is None:
            return None
        if routing_key is not None:
            return decide(policy, routing_key, 0.0, 0.0)
        rand = self._random
        return decide(policy, None, rand() if policy.canaries else 0.0, rand() if policy.shadows else 0.0)

    def record(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Count one answered request (feeds rollout gates; a no-op for other versions)."""
        self._windows.record(model, version, latency_s, ok)

    # -- shadows -----------------------------------------------------------------------------

    def record_shadow(
        self,
        model: str,
        primary_version: str,
        shadow_version: str,
        primary_outputs: Mapping[str, np.ndarray],
        shadow_outputs: Mapping[str, np.ndarray],
        primary_latency_s: float,
        shadow_latency_s: float,
        task: Task = "auto",
    ) -> Comparison:
        """Compare and record one mirrored request (for callers not using ShadowMirror)."""
        comparison = compare_outputs(primary_outputs, shadow_outputs, task)
        self.shadow_stats.pair(model, primary_version, shadow_version).add(
            comparison, primary_latency_s, shadow_latency_s
        )
        return comparison

    def record_shadow_error(self, model: str, primary_version: str, shadow_version: str) -> None:
        self.shadow_stats.pair(model, primary_version, shadow_version).shadow_errors += 1

    def pair_stats(self, model: str | None = None) -> list[PairStats]:
        return self.shadow_stats.pairs(model)

    # -- queries -----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The store generation this controller's state corresponds to (0 without a store)."""
        return self._state.generation

    def get_policy(self, model: str) -> TrafficPolicy | None:
        return self._state.policies.get(model)

    def policies(self) -> dict[str, TrafficPolicy]:
        return dict(self._state.policies)

    def rollout(self, model: str) -> RolloutState | None:
        """The model's current or most recent rollout."""
        return self._state.rollouts.get(model)

    def rollout_status(self, model: str) -> dict[str, Any] | None:
        """JSON-ready view of the model's rollout with live windows and latest gate verdicts."""
        state = self._state.rollouts.get(model)
        if state is None:
            return None
        status: dict[str, Any] = {"rollout": state.to_json()}
        policy = self._state.policies.get(model)
        status["policy"] = policy.to_json() if policy is not None else None
        canary = self._windows.get(model, state.canary)
        stable = self._windows.get(model, state.stable)
        status["canary_window"] = canary.snapshot().to_json() if canary is not None else None
        status["stable_window"] = stable.snapshot().to_json() if stable is not None else None
        status["gates"] = [g.to_json() for g in self._windows.last_gates(model)]
        status["shadow"] = [
            p.to_json()
            for p in self.shadow_stats.pairs(model)
            if {p.primary_version, p.shadow_version} == {state.stable, state.canary}
        ]
        return status

    def audit(self, limit: int = 100, model: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` audit records (all workers' when there is a store), oldest first."""
        return self._state.audit(limit, model)

    # -- policy operations -------------------------------------------------------------------

    def set_policy(self, model: str, body: Mapping[str, Any], who: str, reason: str = "") -> TrafficPolicy:
        """Replace the model's policy with the one ``body`` describes (see TrafficPolicy.from_json).

        Raises PolicyError for a malformed body, PolicyRefused when a version cannot serve
        or a rollout of the model is in progress.
        """

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> Change:
            return changes.set_policy(model, body, current, rollout, self._validate, self._actor(who, reason))

        change = self._state.transact(model, build)
        assert change.policy is not None
        return change.policy

    def delete_policy(self, model: str, who: str, reason: str = "") -> None:
        """Remove the model's policy: its traffic goes back to the default version."""

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> Change:
            return changes.delete_policy(model, current, rollout, self._actor(who, reason))

        self._state.transact(model, build)

    def rollback(self, model: str, who: str, reason: str = "") -> TrafficPolicy:
        """Instantly send all traffic back to the last good version.

        During a rollout: stop it (status ``rolled_back``) and route everything to its stable
        version. Otherwise: the stable version becomes ``previous_stable`` and canaries and
        shadows are cleared; the replaced version becomes the new ``previous_stable``. A policy
        with canaries but no previous stable version drops its canaries instead.
        """

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> Change:
            return changes.rollback(model, current, rollout, self._validate, self._actor(who, reason))

        change = self._state.transact(model, build)
        assert change.policy is not None
        return change.policy

    # -- rollout operations ------------------------------------------------------------------

    def start_rollout(
        self,
        model: str,
        canary: str,
        plan: RolloutPlan | Mapping[str, Any] | None = None,
        who: str = "operator",
        reason: str = "",
        stable: str | None = None,
    ) -> RolloutState:
        """Start moving traffic to ``canary`` step by step.

        The rollout replaces the policy's stable version (or ``stable`` if given, required
        when the model has no policy yet). Any manual canaries are replaced; shadows are kept.
        Raises RolloutError if a rollout is already active, PolicyRefused if a version cannot
        serve.
        """
        rollout_plan = plan if isinstance(plan, RolloutPlan) else RolloutPlan.from_json(plan)

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> Change:
            actor = self._actor(who, reason)
            return changes.start_rollout(
                model, canary, rollout_plan, stable, current, rollout, self._validate, actor
            )

        change = self._state.transact(model, build)
        assert change.rollout is not None
        return change.rollout

    def abort_rollout(self, model: str, who: str, reason: str = "") -> RolloutState:
        """Stop the rollout; all traffic to its stable version."""
        return self._operate(model, who, reason, "rollout_abort", lambda s, now: abort(s, now, who, reason))

    def pause_rollout(self, model: str, who: str, reason: str = "") -> RolloutState:
        """Hold the canary at its current weight; gates are not acted on until resumed."""
        return self._operate(model, who, reason, "rollout_pause", lambda s, now: pause(s, now, who, reason))

    def resume_rollout(self, model: str, who: str, reason: str = "") -> RolloutState:
        """Continue a paused rollout; the step's hold time and canary window start afresh."""
        return self._operate(model, who, reason, "rollout_resume", lambda s, now: resume(s, now, who, reason))

    def promote_rollout(self, model: str, who: str, reason: str = "", full: bool = True) -> RolloutState:
        """Make the canary stable now, or (``full=False``) skip to the next step."""
        return self._operate(
            model, who, reason, "rollout_promote", lambda s, now: promote(s, now, who, reason, full=full)
        )

    def approve_rollout(self, model: str, who: str, reason: str = "") -> RolloutState:
        """Approve the approval step the rollout waits at: it goes on to its next step."""
        return self._operate(
            model, who, reason, "rollout_approve", lambda s, now: approve(s, now, who, reason)
        )

    def reject_rollout(self, model: str, who: str, reason: str = "") -> RolloutState:
        """Reject the approval the rollout waits for: it rolls back to its stable version."""
        return self._operate(model, who, reason, "rollout_reject", lambda s, now: reject(s, now, who, reason))

    def _operate(
        self, model: str, who: str, reason: str, action: str, transition: Transition
    ) -> RolloutState:
        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> Change:
            return changes.operate_rollout(
                model, action, transition, current, rollout, self._actor(who, reason)
            )

        change = self._state.transact(model, build)
        assert change.rollout is not None
        return change.rollout

    # -- periodic work -----------------------------------------------------------------------

    def tick(self) -> list[RolloutState]:
        """Adopt other workers' changes; in the leader, judge running rollouts.

        Returns the rollouts whose state this call changed (stepped, succeeded, rolled back).
        May raise StoreError if the shared files are unreadable; the caller should log it and
        keep ticking.
        """
        self._state.refresh()
        if not self._state.lead():
            return []
        now = self._clock()
        changed: list[RolloutState] = []
        for model, state in list(self._state.rollouts.items()):
            if state.status != "running":
                continue
            canary_window = self._windows.get(model, state.canary)
            stable_window = self._windows.get(model, state.stable)
            if canary_window is None or stable_window is None:
                continue
            canary = canary_window.snapshot()
            stable = stable_window.snapshot()
            gates = evaluate_gates(
                canary,
                stable,
                shadow_disagreement(self.shadow_stats, model, state),
                self._drift_status(model, state),
                state.plan.gates,
                self._accuracy.pair(model, state) if self._accuracy is not None else None,
            )
            self._windows.set_last_gates(model, gates)
            if evaluate(state, state.plan, gates, canary.requests, now) is state:
                continue
            windows = {"canary": canary.to_json(), "stable": stable.to_json()}
            verdict = Verdict(model, state, gates, canary.requests, windows, now)
            change = self._state.transact(model, self._judgement(verdict))
            if change.rollout is not None:
                changed.append(change.rollout)
        return changed

    def _judgement(self, verdict: Verdict) -> Builder:
        """The change a tick's verdict makes, unless the rollout moved meanwhile."""

        def build(current: TrafficPolicy | None, latest: RolloutState | None) -> Change:
            return changes.judgement(verdict, current, latest, self._clock())

        return build

    def reload_from_store(self) -> bool:
        """Replace local state with what the store holds; True if its generation moved."""
        return self._state.reload()

    def close(self) -> None:
        """Release this process's store leadership (call on shutdown); routing keeps working."""
        self._state.close()

    # -- internals ---------------------------------------------------------------------------

    def _sync_windows(self, model: str, state: RolloutState | None) -> None:
        """Keep the model's windows (and on a new rollout, its shadow pair) in step with its rollout."""
        if self._windows.sync(model, state):
            assert state is not None
            self.shadow_stats.reset(model, frozenset({state.stable, state.canary}))
            if self._accuracy is not None:
                self._accuracy.begin(model, (state.stable, state.canary))

    def _drift_status(self, model: str, state: RolloutState) -> str | None:
        if self._drift is None:
            return None
        try:
            return self._drift(model, state.canary)
        except Exception:  # a broken drift source must not stop rollouts; the gate has no verdict
            return None

    def _actor(self, who: str, reason: str) -> Actor:
        return Actor(who, reason, self._clock())
