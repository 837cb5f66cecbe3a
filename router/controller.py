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

Rollout statistics: while a rollout is active the controller keeps a
:class:`~router.window.VersionWindow` for its canary (reset at every step, so each step is
judged on its own traffic) and one for its stable version (kept for the whole rollout, so a
baseline exists even at a 100% step). Only the leader's own traffic is judged; with N
workers behind a fair load balancer that is a 1/N sample.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from router.audit import AuditRecord
from router.decide import RouteDecision, decide
from router.gates import GateResult, evaluate_gates
from router.policy import TrafficPolicy
from router.rollout import (
    RolloutError,
    RolloutPlan,
    RolloutState,
    abort,
    evaluate,
    pause,
    policy_for,
    promote,
    resume,
    roll_back,
    start,
)
from router.shadow import Comparison, PairStats, ShadowStats, Task, compare_outputs
from router.store import ControlPlaneStore, StoreConflict
from router.window import VersionWindow

Validator = Callable[[str, str], str | None]
DriftSource = Callable[[str, str], str | None]

_CONTROLLER = "controller"


class PolicyRefused(ValueError):
    """A policy change names a version that cannot serve, or conflicts with a rollout."""


class NotConfigured(LookupError):
    """The model has no traffic policy / no rollout to act on."""


@dataclass(slots=True)
class _Change:
    """What one control-plane operation changes for one model."""

    set_policy: bool = False
    policy: TrafficPolicy | None = None
    set_rollout: bool = False
    rollout: RolloutState | None = None
    audit: list[AuditRecord] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.set_policy or self.set_rollout or self.audit)


_ChangeBuilder = Callable[[TrafficPolicy | None, RolloutState | None], _Change]


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
        audit_capacity: int = 1000,
        max_commit_attempts: int = 5,
    ) -> None:
        """``validate(model, version)`` returns None when the version can serve, else why not.
        ``drift(model, version)`` (optional) returns the version's drift status
        (``ok``/``warning``/``drift``) or None when unknown.
        """
        self._store = store
        self._clock = clock
        self._random = rng.random
        self._validate = validate
        self._drift = drift
        self._max_attempts = max(1, max_commit_attempts)
        self._policies: dict[str, TrafficPolicy] = {}
        self._rollouts: dict[str, RolloutState] = {}
        self._windows: dict[tuple[str, str], VersionWindow] = {}
        self._window_epochs: dict[str, tuple[tuple[float, str, str], tuple[int, float]]] = {}
        self._last_gates: dict[str, list[GateResult]] = {}
        self._memory_audit: deque[AuditRecord] = deque(maxlen=audit_capacity)
        self._generation = 0
        self.shadow_stats = ShadowStats()
        if store is not None:
            self.reload_from_store()

    # -- hot path ----------------------------------------------------------------------------

    def route(self, model: str, routing_key: str | None = None) -> RouteDecision | None:
        """Where a request for ``model`` goes; None when the model has no traffic policy."""
        policy = self._policies.get(model)
        if policy is None:
            return None
        if routing_key is not None:
            return decide(policy, routing_key, 0.0, 0.0)
        rand = self._random
        return decide(policy, None, rand() if policy.canaries else 0.0, rand() if policy.shadows else 0.0)

    def record(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Count one answered request (feeds rollout gates; a no-op for other versions)."""
        window = self._windows.get((model, version))
        if window is not None:
            window.record(latency_s, ok)

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
        return self._generation

    def get_policy(self, model: str) -> TrafficPolicy | None:
        return self._policies.get(model)

    def policies(self) -> dict[str, TrafficPolicy]:
        return dict(self._policies)

    def rollout(self, model: str) -> RolloutState | None:
        """The model's current or most recent rollout."""
        return self._rollouts.get(model)

    def rollout_status(self, model: str) -> dict[str, Any] | None:
        """JSON-ready view of the model's rollout with live windows and latest gate verdicts."""
        state = self._rollouts.get(model)
        if state is None:
            return None
        status: dict[str, Any] = {"rollout": state.to_json()}
        policy = self._policies.get(model)
        status["policy"] = policy.to_json() if policy is not None else None
        canary = self._windows.get((model, state.canary))
        stable = self._windows.get((model, state.stable))
        status["canary_window"] = canary.snapshot().to_json() if canary is not None else None
        status["stable_window"] = stable.snapshot().to_json() if stable is not None else None
        status["gates"] = [g.to_json() for g in self._last_gates.get(model, [])]
        status["shadow"] = [
            p.to_json()
            for p in self.shadow_stats.pairs(model)
            if {p.primary_version, p.shadow_version} == {state.stable, state.canary}
        ]
        return status

    def audit(self, limit: int = 100, model: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` audit records (all workers' when there is a store), oldest first."""
        if self._store is not None:
            return self._store.read_audit(limit, model)
        records = [r for r in self._memory_audit if model is None or r.model == model]
        return records[-limit:] if limit > 0 else []

    # -- policy operations -------------------------------------------------------------------

    def set_policy(self, model: str, body: Mapping[str, Any], who: str, reason: str = "") -> TrafficPolicy:
        """Replace the model's policy with the one ``body`` describes (see TrafficPolicy.from_json).

        Raises PolicyError for a malformed body, PolicyRefused when a version cannot serve
        or a rollout of the model is in progress.
        """

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> _Change:
            self._refuse_during_rollout(model, rollout, "set a traffic policy")
            policy = TrafficPolicy.from_json(model, body, current)
            self._check_servable(model, policy.versions())
            detail = {"before": _policy_json(current), "after": policy.to_json()}
            return _Change(
                set_policy=True,
                policy=policy,
                audit=[self._audit_record(who, "set_policy", model, detail, reason)],
            )

        change = self._transact(model, build)
        assert change.policy is not None
        return change.policy

    def delete_policy(self, model: str, who: str, reason: str = "") -> None:
        """Remove the model's policy: its traffic goes back to the default version."""

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> _Change:
            self._refuse_during_rollout(model, rollout, "delete the traffic policy")
            if current is None:
                raise NotConfigured(f"model {model!r} has no traffic policy")
            detail = {"before": current.to_json(), "after": None}
            return _Change(
                set_policy=True,
                policy=None,
                audit=[self._audit_record(who, "delete_policy", model, detail, reason)],
            )

        self._transact(model, build)

    def rollback(self, model: str, who: str, reason: str = "") -> TrafficPolicy:
        """Instantly send all traffic back to the last good version.

        During a rollout: stop it (status ``rolled_back``) and route everything to its stable
        version. Otherwise: the stable version becomes ``previous_stable`` and canaries and
        shadows are cleared; the replaced version becomes the new ``previous_stable``. A policy
        with canaries but no previous stable version drops its canaries instead.
        """

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> _Change:
            now = self._clock()
            if rollout is not None and rollout.active:
                stopped = roll_back(rollout, now, who, reason or "manual rollback")
                policy = policy_for(stopped, current)
                detail = {
                    "canary": rollout.canary,
                    "to": rollout.stable,
                    "weight_was": rollout.weight,
                    "before": _policy_json(current),
                    "after": policy.to_json(),
                }
                return _Change(
                    set_policy=True,
                    policy=policy,
                    set_rollout=True,
                    rollout=stopped,
                    audit=[self._audit_record(who, "rollback", model, detail, reason)],
                )
            if current is None:
                raise NotConfigured(f"model {model!r} has no traffic policy to roll back")
            if current.previous_stable is None and current.canaries:
                policy = TrafficPolicy(
                    model=model,
                    stable=current.stable,
                    previous_stable=current.previous_stable,
                    generation=current.generation + 1,
                )
                detail = {
                    "dropped_canaries": [c.version for c in current.canaries],
                    "to": current.stable,
                    "before": current.to_json(),
                    "after": policy.to_json(),
                }
                return _Change(
                    set_policy=True,
                    policy=policy,
                    audit=[self._audit_record(who, "rollback", model, detail, reason)],
                )
            target = current.previous_stable
            if target is None:
                raise PolicyRefused(f"model {model!r} has no previous stable version to roll back to")
            self._check_servable(model, (target,))
            policy = TrafficPolicy(
                model=model, stable=target, previous_stable=current.stable, generation=current.generation + 1
            )
            detail = {
                "from": current.stable,
                "to": target,
                "before": current.to_json(),
                "after": policy.to_json(),
            }
            return _Change(
                set_policy=True,
                policy=policy,
                audit=[self._audit_record(who, "rollback", model, detail, reason)],
            )

        change = self._transact(model, build)
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

        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> _Change:
            if rollout is not None and rollout.active:
                raise RolloutError(
                    f"model {model!r} already has a {rollout.status} rollout of version {rollout.canary!r}"
                )
            base_stable = stable if stable is not None else (current.stable if current is not None else None)
            if base_stable is None:
                raise PolicyRefused(
                    f"model {model!r} has no traffic policy; give the stable version to roll out from"
                )
            self._check_servable(model, (base_stable, canary))
            state = start(rollout_plan, model, base_stable, canary, self._clock(), who, reason)
            policy = policy_for(state, current)
            detail = {
                "canary": canary,
                "stable": base_stable,
                "plan": rollout_plan.to_json(),
                "before": _policy_json(current),
                "after": policy.to_json(),
            }
            return _Change(
                set_policy=True,
                policy=policy,
                set_rollout=True,
                rollout=state,
                audit=[self._audit_record(who, "rollout_start", model, detail, reason)],
            )

        change = self._transact(model, build)
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

    def _operate(
        self,
        model: str,
        who: str,
        reason: str,
        action: str,
        transition: Callable[[RolloutState, float], RolloutState],
    ) -> RolloutState:
        def build(current: TrafficPolicy | None, rollout: RolloutState | None) -> _Change:
            if rollout is None:
                raise NotConfigured(f"model {model!r} has no rollout")
            new_state = transition(rollout, self._clock())
            policy = policy_for(new_state, current)
            detail = {
                "canary": new_state.canary,
                "stable": new_state.stable,
                "status": new_state.status,
                "step_index": new_state.step_index,
                "weight": new_state.weight,
                "before": _policy_json(current),
                "after": policy.to_json(),
            }
            return _Change(
                set_policy=_differs(policy, current),
                policy=policy,
                set_rollout=True,
                rollout=new_state,
                audit=[self._audit_record(who, action, model, detail, reason)],
            )

        change = self._transact(model, build)
        assert change.rollout is not None
        return change.rollout

    # -- periodic work -----------------------------------------------------------------------

    def tick(self) -> list[RolloutState]:
        """Adopt other workers' changes; in the leader, judge running rollouts.

        Returns the rollouts whose state this call changed (stepped, succeeded, rolled back).
        May raise StoreError if the shared files are unreadable; the caller should log it and
        keep ticking.
        """
        self._refresh()
        if self._store is not None and not self._store.try_lead():
            return []
        now = self._clock()
        changed: list[RolloutState] = []
        for model, state in list(self._rollouts.items()):
            if state.status != "running":
                continue
            canary_window = self._windows.get((model, state.canary))
            stable_window = self._windows.get((model, state.stable))
            if canary_window is None or stable_window is None:
                continue
            canary = canary_window.snapshot()
            stable = stable_window.snapshot()
            gates = evaluate_gates(
                canary,
                stable,
                self._disagreement(model, state),
                self._drift_status(model, state),
                state.plan.gates,
            )
            self._last_gates[model] = gates
            if evaluate(state, state.plan, gates, canary.requests, now) is state:
                continue
            windows = {"canary": canary.to_json(), "stable": stable.to_json()}
            build = self._judgement(model, state, gates, canary.requests, windows, now)
            change = self._transact(model, build)
            if change.rollout is not None:
                changed.append(change.rollout)
        return changed

    def _judgement(
        self,
        model: str,
        judged: RolloutState,
        gates: list[GateResult],
        requests: int,
        windows: dict[str, Any],
        now: float,
    ) -> _ChangeBuilder:
        """The change a tick's verdict on ``judged`` makes, unless the rollout moved meanwhile."""

        def build(current: TrafficPolicy | None, latest: RolloutState | None) -> _Change:
            if latest != judged:  # changed by an operator or another worker: judge again next tick
                return _Change()
            new_state = evaluate(judged, judged.plan, gates, requests, now)
            policy = policy_for(new_state, current)
            detail = {
                "canary": new_state.canary,
                "stable": new_state.stable,
                "status": new_state.status,
                "step_index": new_state.step_index,
                "weight": new_state.weight,
                "gates": [g.to_json() for g in gates],
                "windows": windows,
                "after": policy.to_json(),
            }
            action = f"rollout_{new_state.history[-1].action}"
            return _Change(
                set_policy=True,
                policy=policy,
                set_rollout=True,
                rollout=new_state,
                audit=[self._audit_record(_CONTROLLER, action, model, detail, new_state.reason)],
            )

        return build

    def reload_from_store(self) -> bool:
        """Replace local state with what the store holds; True if its generation moved."""
        if self._store is None:
            return False
        snapshot = self._store.load()
        moved = snapshot.generation != self._generation
        models = set(self._rollouts) | set(snapshot.rollouts)
        self._policies = dict(snapshot.policies)
        self._rollouts = dict(snapshot.rollouts)
        for model in models:
            self._sync_windows(model, self._rollouts.get(model))
        self._generation = snapshot.generation
        return moved

    def close(self) -> None:
        """Release this process's store leadership (call on shutdown); routing keeps working."""
        if self._store is not None:
            self._store.close()

    # -- internals ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._store is not None and self._store.changed_since(self._generation):
            self.reload_from_store()

    def _transact(self, model: str, build: _ChangeBuilder) -> _Change:
        """Compute a change on fresh state, commit it (retrying on conflicts), apply it."""
        attempt = 0
        while True:
            self._refresh()
            change = build(self._policies.get(model), self._rollouts.get(model))
            if change.empty:
                return change
            if self._store is None:
                self._memory_audit.extend(change.audit)
            else:
                try:
                    self._generation = self._store.commit(
                        policies={model: change.policy} if change.set_policy else None,
                        rollouts={model: change.rollout} if change.set_rollout else None,
                        audit=change.audit,
                        expected_generation=self._generation,
                    )
                except StoreConflict:
                    attempt += 1
                    if attempt >= self._max_attempts:
                        raise
                    continue
            self._apply(model, change)
            return change

    def _apply(self, model: str, change: _Change) -> None:
        if change.set_policy:
            if change.policy is None:
                self._policies.pop(model, None)
            else:
                self._policies[model] = change.policy
        if change.set_rollout:
            if change.rollout is None:
                self._rollouts.pop(model, None)
            else:
                self._rollouts[model] = change.rollout
            self._sync_windows(model, change.rollout)

    def _sync_windows(self, model: str, state: RolloutState | None) -> None:
        """Keep the model's windows in step with its rollout (new rollout, new step, over)."""
        if state is None or not state.active:
            for key in [k for k in self._windows if k[0] == model]:
                del self._windows[key]
            self._window_epochs.pop(model, None)
            if state is None:
                self._last_gates.pop(model, None)
            return
        rollout_epoch = (state.started_at, state.stable, state.canary)
        step_epoch = (state.step_index, state.step_started_at)
        known = self._window_epochs.get(model)
        if known is None or known[0] != rollout_epoch:
            for key in [k for k in self._windows if k[0] == model]:
                del self._windows[key]
            self._windows[(model, state.stable)] = VersionWindow()
            self._windows[(model, state.canary)] = VersionWindow()
            self._last_gates.pop(model, None)
            self.shadow_stats.reset(model, frozenset({state.stable, state.canary}))
        elif known[1] != step_epoch:
            self._windows[(model, state.canary)].reset()
        self._window_epochs[model] = (rollout_epoch, step_epoch)

    def _disagreement(self, model: str, state: RolloutState) -> float | None:
        """Share of shadow-compared rows (canary vs stable, both directions) that disagree."""
        rows = agreements = 0
        for primary, shadow in ((state.stable, state.canary), (state.canary, state.stable)):
            stats = self.shadow_stats.get(model, primary, shadow)
            if stats is not None:
                rows += stats.classified_rows
                agreements += stats.agreements
        if rows == 0 or rows < state.plan.gates.min_requests:
            return None
        return 1.0 - agreements / rows

    def _drift_status(self, model: str, state: RolloutState) -> str | None:
        if self._drift is None:
            return None
        try:
            return self._drift(model, state.canary)
        except Exception:  # a broken drift source must not stop rollouts; the gate has no verdict
            return None

    def _check_servable(self, model: str, versions: tuple[str, ...]) -> None:
        problems = []
        for version in versions:
            why = self._validate(model, version)
            if why is not None:
                problems.append(f"version {version!r} cannot serve: {why}")
        if problems:
            raise PolicyRefused(f"refused for model {model!r}: " + "; ".join(problems))

    @staticmethod
    def _refuse_during_rollout(model: str, rollout: RolloutState | None, action: str) -> None:
        if rollout is not None and rollout.active:
            raise PolicyRefused(
                f"cannot {action} for model {model!r}: a rollout of version {rollout.canary!r} is "
                f"{rollout.status} at {rollout.weight:.0%}; abort, roll back or promote it first"
            )

    def _audit_record(
        self, who: str, action: str, model: str, detail: Mapping[str, Any], reason: str
    ) -> AuditRecord:
        return AuditRecord(
            ts=self._clock(), who=who, action=action, model=model, detail=dict(detail), reason=reason
        )


def _policy_json(policy: TrafficPolicy | None) -> dict[str, Any] | None:
    return policy.to_json() if policy is not None else None


def _differs(policy: TrafficPolicy, current: TrafficPolicy | None) -> bool:
    """Whether ``policy`` routes differently from ``current`` (generation aside)."""
    return current is None or replace(policy, generation=current.generation) != current
