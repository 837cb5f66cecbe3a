"""What each control-plane operation changes for one model: pure decisions on its state.

Every function takes the model's current policy and rollout (as last committed), the
:class:`Actor` asking (who, why, when) and the operation's arguments, and returns a
:class:`Change`: the new policy and/or rollout and the audit record to commit with them, or
raises :class:`PolicyRefused`, :class:`NotConfigured`, ``PolicyError`` or ``RolloutError``.
Nothing here reads a clock, a file or shared state; :class:`router.controller.TrafficController`
computes a change on fresh state, commits it to the store and applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from turnout.router.audit import AuditRecord
from turnout.router.gates import GateResult
from turnout.router.policy import TrafficPolicy
from turnout.router.rollout import (
    RolloutError,
    RolloutPlan,
    RolloutState,
    evaluate,
    policy_for,
    roll_back,
    start,
)

Validator = Callable[[str, str], str | None]
Transition = Callable[[RolloutState, float], RolloutState]

CONTROLLER = "controller"


class PolicyRefused(ValueError):
    """A policy change names a version that cannot serve, or conflicts with a rollout."""


class NotConfigured(LookupError):
    """The model has no traffic policy / no rollout to act on."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change, why, and when (wall-clock seconds)."""

    who: str
    reason: str
    at: float

    def audit(self, action: str, model: str, detail: Mapping[str, Any]) -> AuditRecord:
        return AuditRecord(
            ts=self.at, who=self.who, action=action, model=model, detail=dict(detail), reason=self.reason
        )


@dataclass(slots=True)
class Change:
    """What one control-plane operation changes for one model."""

    set_policy: bool = False
    policy: TrafficPolicy | None = None
    set_rollout: bool = False
    rollout: RolloutState | None = None
    audit: list[AuditRecord] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.set_policy or self.set_rollout or self.audit)


def check_servable(validate: Validator, model: str, versions: Iterable[str]) -> None:
    """Raise PolicyRefused naming every version ``validate`` says cannot serve."""
    problems = []
    for version in versions:
        why = validate(model, version)
        if why is not None:
            problems.append(f"version {version!r} cannot serve: {why}")
    if problems:
        raise PolicyRefused(f"refused for model {model!r}: " + "; ".join(problems))


def refuse_during_rollout(model: str, rollout: RolloutState | None, action: str) -> None:
    if rollout is not None and rollout.active:
        raise PolicyRefused(
            f"cannot {action} for model {model!r}: a rollout of version {rollout.canary!r} is "
            f"{rollout.status} at {rollout.weight:.0%}; abort, roll back or promote it first"
        )


def set_policy(
    model: str,
    body: Mapping[str, Any],
    current: TrafficPolicy | None,
    rollout: RolloutState | None,
    validate: Validator,
    actor: Actor,
) -> Change:
    """Replace the model's policy with the one ``body`` describes."""
    refuse_during_rollout(model, rollout, "set a traffic policy")
    policy = TrafficPolicy.from_json(model, body, current)
    check_servable(validate, model, policy.versions())
    detail = {"before": _policy_json(current), "after": policy.to_json()}
    return _policy_change(policy, actor.audit("set_policy", model, detail))


def delete_policy(
    model: str, current: TrafficPolicy | None, rollout: RolloutState | None, actor: Actor
) -> Change:
    """Remove the model's policy."""
    refuse_during_rollout(model, rollout, "delete the traffic policy")
    if current is None:
        raise NotConfigured(f"model {model!r} has no traffic policy")
    detail = {"before": current.to_json(), "after": None}
    return _policy_change(None, actor.audit("delete_policy", model, detail))


def rollback(
    model: str,
    current: TrafficPolicy | None,
    rollout: RolloutState | None,
    validate: Validator,
    actor: Actor,
) -> Change:
    """Send all traffic back to the last good version (see ``TrafficController.rollback``)."""
    if rollout is not None and rollout.active:
        stopped = roll_back(rollout, actor.at, actor.who, actor.reason or "manual rollback")
        policy = policy_for(stopped, current)
        detail = {
            "canary": rollout.canary,
            "to": rollout.stable,
            "weight_was": rollout.weight,
            "before": _policy_json(current),
            "after": policy.to_json(),
        }
        return _rollout_change(policy, stopped, actor.audit("rollback", model, detail))
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
        return _policy_change(policy, actor.audit("rollback", model, detail))
    target = current.previous_stable
    if target is None:
        raise PolicyRefused(f"model {model!r} has no previous stable version to roll back to")
    check_servable(validate, model, (target,))
    policy = TrafficPolicy(
        model=model, stable=target, previous_stable=current.stable, generation=current.generation + 1
    )
    detail = {"from": current.stable, "to": target, "before": current.to_json(), "after": policy.to_json()}
    return _policy_change(policy, actor.audit("rollback", model, detail))


def start_rollout(
    model: str,
    canary: str,
    plan: RolloutPlan,
    stable: str | None,
    current: TrafficPolicy | None,
    rollout: RolloutState | None,
    validate: Validator,
    actor: Actor,
) -> Change:
    """Start moving traffic to ``canary`` (see ``TrafficController.start_rollout``)."""
    if rollout is not None and rollout.active:
        raise RolloutError(
            f"model {model!r} already has a {rollout.status} rollout of version {rollout.canary!r}"
        )
    base_stable = stable if stable is not None else (current.stable if current is not None else None)
    if base_stable is None:
        raise PolicyRefused(
            f"model {model!r} has no traffic policy; give the stable version to roll out from"
        )
    check_servable(validate, model, (base_stable, canary))
    state = start(plan, model, base_stable, canary, actor.at, actor.who, actor.reason)
    policy = policy_for(state, current)
    detail = {
        "canary": canary,
        "stable": base_stable,
        "plan": plan.to_json(),
        "before": _policy_json(current),
        "after": policy.to_json(),
    }
    return _rollout_change(policy, state, actor.audit("rollout_start", model, detail))


def operate_rollout(
    model: str,
    action: str,
    transition: Transition,
    current: TrafficPolicy | None,
    rollout: RolloutState | None,
    actor: Actor,
) -> Change:
    """An operator's ``transition`` (pause, resume, abort, promote) of the model's rollout."""
    if rollout is None:
        raise NotConfigured(f"model {model!r} has no rollout")
    new_state = transition(rollout, actor.at)
    policy = policy_for(new_state, current)
    detail = {**_rollout_detail(new_state), "before": _policy_json(current), "after": policy.to_json()}
    return _rollout_change(policy, new_state, actor.audit(action, model, detail), _differs(policy, current))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A tick's judgement of a running rollout: the state judged, the gates' results on the
    canary's ``requests``, the windows they read, and the time ``now`` of the judgement."""

    model: str
    judged: RolloutState
    gates: list[GateResult]
    requests: int
    windows: dict[str, Any]
    now: float


def judgement(
    verdict: Verdict, current: TrafficPolicy | None, latest: RolloutState | None, at: float
) -> Change:
    """The change ``verdict`` makes to the rollout; none if the rollout moved since it was judged."""
    if latest != verdict.judged:  # changed by an operator or another worker: judge again next tick
        return Change()
    new_state = evaluate(verdict.judged, verdict.judged.plan, verdict.gates, verdict.requests, verdict.now)
    policy = policy_for(new_state, current)
    detail = {
        **_rollout_detail(new_state),
        "gates": [g.to_json() for g in verdict.gates],
        "windows": verdict.windows,
        "after": policy.to_json(),
    }
    record = Actor(CONTROLLER, new_state.reason, at).audit(
        f"rollout_{new_state.history[-1].action}", verdict.model, detail
    )
    return _rollout_change(policy, new_state, record)


def _policy_change(policy: TrafficPolicy | None, record: AuditRecord) -> Change:
    return Change(set_policy=True, policy=policy, audit=[record])


def _rollout_change(
    policy: TrafficPolicy, rollout: RolloutState, record: AuditRecord, set_policy: bool = True
) -> Change:
    return Change(set_policy=set_policy, policy=policy, set_rollout=True, rollout=rollout, audit=[record])


def _rollout_detail(state: RolloutState) -> dict[str, Any]:
    return {
        "canary": state.canary,
        "stable": state.stable,
        "status": state.status,
        "step_index": state.step_index,
        "weight": state.weight,
    }


def _policy_json(policy: TrafficPolicy | None) -> dict[str, Any] | None:
    return policy.to_json() if policy is not None else None


def _differs(policy: TrafficPolicy, current: TrafficPolicy | None) -> bool:
    """Whether ``policy`` routes differently from ``current`` (generation aside)."""
    return current is None or replace(policy, generation=current.generation) != current
