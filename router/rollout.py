"""Progressive rollouts as a pure state machine.

A rollout moves a canary version through the plan's weight ``steps``. At each step it waits
until the step has lasted ``hold_seconds`` and the canary has served enough requests, then
advances if every gate passed (gates with no verdict do not block) — or, after the last step,
succeeds: the canary becomes the stable version. As soon as the canary has enough requests,
any failed gate rolls the rollout back to the stable version, with a reason that names the
failed gates and what they observed.

States are immutable; every function here returns a new state (or the same one when nothing
happens) and takes the current time as an argument, so the machine is deterministic and
needs no clock. Operator actions: :func:`pause`, :func:`resume`, :func:`abort`,
:func:`promote` (skip to success, or with ``full=False`` one step forward) and
:func:`roll_back`.

A plan step may instead be an **approval** (:class:`ApprovalStep`): the canary stays at the
previous step's weight and the rollout does not advance until an operator calls
:func:`approve` (or :func:`reject`, which rolls back). Gates still roll back while it waits;
an approval with ``deadline_seconds`` that does not come in time rolls back.

``succeeded``, ``rolled_back`` and ``aborted`` are final.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

from turnout.router.gates import GateResult
from turnout.router.plan import ApprovalStep as ApprovalStep  # the plan types are re-exported here
from turnout.router.plan import RolloutError as RolloutError
from turnout.router.plan import RolloutPlan as RolloutPlan
from turnout.router.plan import Step as Step
from turnout.router.policy import CanaryTarget, TrafficPolicy

RolloutStatus = Literal["running", "paused", "succeeded", "rolled_back", "aborted"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "paused"})
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "rolled_back", "aborted"})
_STATUSES = ACTIVE_STATUSES | FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One entry of a rollout's history."""

    at: float
    action: str
    who: str
    step_index: int
    weight: float
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "action": self.action,
            "who": self.who,
            "step_index": self.step_index,
            "weight": self.weight,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RolloutEvent:
        return cls(
            at=float(obj["at"]),
            action=str(obj["action"]),
            who=str(obj["who"]),
            step_index=int(obj["step_index"]),
            weight=float(obj["weight"]),
            reason=str(obj.get("reason", "")),
        )


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where a rollout of ``canary`` (replacing ``stable``) of ``model`` stands."""

    model: str
    stable: str
    canary: str
    step_index: int
    status: RolloutStatus
    step_started_at: float
    reason: str = ""
    history: tuple[RolloutEvent, ...] = ()
    plan: RolloutPlan = field(default_factory=RolloutPlan)
    started_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def weight(self) -> float:
        """The canary's current share of live traffic (0 once the rollout is over)."""
        return self.plan.weights[self.step_index] if self.active else 0.0

    @property
    def waiting_for_approval(self) -> bool:
        """Whether the rollout is active at an approval step (it advances only when approved)."""
        return self.active and self.plan.approval_at(self.step_index) is not None

    @property
    def approval_deadline(self) -> float | None:
        """When an unanswered approval rolls back (None: not waiting, or no deadline)."""
        step = self.plan.approval_at(self.step_index)
        if not self.active or step is None or step.deadline_seconds is None:
            return None
        return self.step_started_at + step.deadline_seconds

    def approval_json(self) -> dict[str, Any] | None:
        """``{"since", "deadline", "summary"}`` while waiting for approval, else None."""
        if not self.waiting_for_approval:
            return None
        deadline = self.approval_deadline
        summary = f"waiting for approval since {_iso(self.step_started_at)}, deadline " + (
            _iso(deadline) if deadline is not None else "none"
        )
        return {"since": self.step_started_at, "deadline": deadline, "summary": summary}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stable": self.stable,
            "canary": self.canary,
            "step_index": self.step_index,
            "weight": self.weight,
            "status": self.status,
            "step_started_at": self.step_started_at,
            "started_at": self.started_at,
            "reason": self.reason,
            "approval": self.approval_json(),
            "plan": self.plan.to_json(),
            "history": [e.to_json() for e in self.history],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RolloutState:
        status = obj["status"]
        if status not in _STATUSES:
            raise RolloutError(f"unknown rollout status {status!r}")
        plan = RolloutPlan.from_json(obj.get("plan"))
        step_index = int(obj["step_index"])
        if not 0 <= step_index < len(plan.steps):
            raise RolloutError(f"rollout step {step_index} is outside its plan of {len(plan.steps)} steps")
        return cls(
            model=str(obj["model"]),
            stable=str(obj["stable"]),
            canary=str(obj["canary"]),
            step_index=step_index,
            status=cast(RolloutStatus, status),
            step_started_at=float(obj["step_started_at"]),
            reason=str(obj.get("reason", "")),
            history=tuple(RolloutEvent.from_json(e) for e in obj.get("history", ())),
            plan=plan,
            started_at=float(obj.get("started_at", obj["step_started_at"])),
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(state: RolloutState, now: float, action: str, who: str, reason: str) -> RolloutEvent:
    return RolloutEvent(now, action, who, state.step_index, state.plan.weights[state.step_index], reason)


def _move(
    state: RolloutState, now: float, action: str, who: str, reason: str, **changes: Any
) -> RolloutState:
    moved = replace(state, reason=reason, **changes)
    return replace(moved, history=(*state.history, _event(moved, now, action, who, reason)))


def _require(state: RolloutState, allowed: frozenset[str], action: str) -> None:
    if state.status not in allowed:
        raise RolloutError(
            f"cannot {action} the rollout of model {state.model!r} (canary {state.canary!r}): it is {state.status}"
        )


def start(
    plan: RolloutPlan, model: str, stable: str, canary: str, now: float, who: str = "system", reason: str = ""
) -> RolloutState:
    """A new running rollout at the plan's first step."""
    if not model:
        raise RolloutError("a rollout needs a model name")
    if not stable or not canary:
        raise RolloutError("a rollout needs both a stable and a canary version")
    if stable == canary:
        raise RolloutError(f"canary version {canary!r} is already the stable version of model {model!r}")
    state = RolloutState(
        model=model,
        stable=stable,
        canary=canary,
        step_index=0,
        status="running",
        step_started_at=now,
        plan=plan,
        started_at=now,
    )
    return _move(state, now, "start", who, reason or f"rolling out {canary!r} to replace {stable!r}")


def describe_failures(results: Sequence[GateResult]) -> str:
    """``"gate error_rate failed: ...; gate drift failed: ..."`` for the failed gates."""
    return "; ".join(f"gate {g.name} failed: {g.detail}" for g in results if g.passed is False)


def evaluate(
    state: RolloutState,
    plan: RolloutPlan,
    gate_results: Sequence[GateResult],
    canary_requests: int,
    now: float,
) -> RolloutState:
    """Advance, finish or roll back a running rollout; any other status is returned as is.

    Nothing happens until the canary has ``plan.required_requests`` requests in this step.
    Then a failed gate rolls back at once; otherwise, when the step has been held for
    ``plan.hold_seconds``, the rollout moves to the next step, or succeeds after the last.
    At an approval step the rollout never advances by itself: it rolls back when the
    approval's deadline has passed (whatever the request count) or a gate fails.
    """
    if state.status != "running":
        return state
    deadline = state.approval_deadline
    if deadline is not None and now >= deadline:
        waited = f"no approval within {now - state.step_started_at:.0f}s (deadline {_iso(deadline)})"
        return _move(state, now, "rolled_back", "controller", waited, status="rolled_back")
    if canary_requests < plan.required_requests:
        return state
    if any(g.passed is False for g in gate_results):
        return _move(
            state, now, "rolled_back", "controller", describe_failures(gate_results), status="rolled_back"
        )
    if state.waiting_for_approval or now - state.step_started_at < plan.hold_seconds:
        return state
    judged = ", ".join(f"{g.name} ok" for g in gate_results if g.passed) or "no gate had a verdict"
    held = f"held {now - state.step_started_at:.0f}s with {canary_requests} canary requests; {judged}"
    if state.step_index + 1 >= len(plan.steps):
        return _move(state, now, "succeeded", "controller", held, status="succeeded")
    return _move(state, now, "step", "controller", held, step_index=state.step_index + 1, step_started_at=now)


def pause(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Freeze the rollout at its current weight; gates are not acted on while paused."""
    _require(state, frozenset({"running"}), "pause")
    return _move(state, now, "pause", who, reason or "paused", status="paused")


def resume(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Continue a paused rollout; the current step's hold time starts again."""
    _require(state, frozenset({"paused"}), "resume")
    return _move(state, now, "resume", who, reason or "resumed", status="running", step_started_at=now)


def abort(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Stop the rollout; traffic goes back to the stable version."""
    _require(state, ACTIVE_STATUSES, "abort")
    return _move(state, now, "abort", who, reason or "aborted", status="aborted")


def roll_back(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Operator rollback: like :func:`abort` but recorded as a rollback."""
    _require(state, ACTIVE_STATUSES, "roll back")
    return _move(state, now, "rolled_back", who, reason or "rolled back", status="rolled_back")


def promote(state: RolloutState, now: float, who: str, reason: str = "", full: bool = True) -> RolloutState:
    """Make the canary stable now (``full``), or move one step forward without waiting.

    A one-step promotion keeps a paused rollout paused; promoting past the last step succeeds.
    """
    _require(state, ACTIVE_STATUSES, "promote")
    if full or state.step_index + 1 >= len(state.plan.steps):
        return _move(state, now, "promote", who, reason or "promoted", status="succeeded")
    return _move(
        state,
        now,
        "promote_step",
        who,
        reason or "promoted one step",
        step_index=state.step_index + 1,
        step_started_at=now,
    )


def _require_waiting(state: RolloutState, action: str) -> None:
    _require(state, frozenset({"running"}), action)
    if not state.waiting_for_approval:
        raise RolloutError(
            f"cannot {action} the rollout of model {state.model!r} (canary {state.canary!r}): "
            f"it is not waiting for approval (step {state.step_index} of {len(state.plan.steps)})"
        )


def approve(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Let a rollout waiting at an approval step go on: to the next step, or succeed after the last."""
    _require_waiting(state, "approve")
    why = reason or "approved"
    if state.step_index + 1 >= len(state.plan.steps):
        return _move(state, now, "approve", who, why, status="succeeded")
    return _move(state, now, "approve", who, why, step_index=state.step_index + 1, step_started_at=now)


def reject(state: RolloutState, now: float, who: str, reason: str = "") -> RolloutState:
    """Refuse the approval a rollout waits for: it rolls back to the stable version."""
    _require_waiting(state, "reject")
    return _move(state, now, "reject", who, reason or "approval rejected", status="rolled_back")


def policy_for(state: RolloutState, base: TrafficPolicy | None = None) -> TrafficPolicy:
    """The traffic policy a rollout state implies.

    Running or paused: the canary at the current step's weight, the rest on stable. Succeeded:
    the canary is the stable version and the old stable becomes ``previous_stable``. Rolled
    back or aborted: stable only. Shadows of ``base`` (the policy in force) are kept, except
    those that mirror to the canary once the rollout is over. ``generation`` is one more than
    ``base``'s.
    """
    generation = base.generation + 1 if base is not None else 1
    shadows = base.shadows if base is not None else ()
    previous_stable = base.previous_stable if base is not None else None
    if state.active:
        return TrafficPolicy(
            model=state.model,
            stable=state.stable,
            canaries=(CanaryTarget(state.canary, state.weight),),
            shadows=shadows,
            previous_stable=previous_stable,
            generation=generation,
        )
    if state.status == "succeeded":
        return TrafficPolicy(
            model=state.model,
            stable=state.canary,
            shadows=tuple(s for s in shadows if s.version != state.canary),
            previous_stable=state.stable,
            generation=generation,
        )
    return TrafficPolicy(
        model=state.model,
        stable=state.stable,
        shadows=tuple(s for s in shadows if s.version != state.canary),
        previous_stable=previous_stable,
        generation=generation,
    )
