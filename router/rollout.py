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

``succeeded``, ``rolled_back`` and ``aborted`` are final.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from router.gates import GateResult, Gates
from router.policy import CanaryTarget, TrafficPolicy

RolloutStatus = Literal["running", "paused", "succeeded", "rolled_back", "aborted"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "paused"})
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "rolled_back", "aborted"})
_STATUSES = ACTIVE_STATUSES | FINAL_STATUSES


class RolloutError(ValueError):
    """An invalid plan, or an action that does not apply to the rollout's current status."""


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """Canary weights to step through, how long to hold each, and the gates to pass."""

    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    hold_seconds: float = 30
    min_requests: int = 100
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise RolloutError("a rollout plan needs at least one step")
        previous = 0.0
        for step in steps:
            if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
                raise RolloutError(f"rollout steps must be numbers, got {step!r}")
            if not 0.0 < step <= 1.0:
                raise RolloutError(f"rollout steps must be in (0, 1], got {step!r}")
            if step <= previous:
                raise RolloutError(f"rollout steps must increase, got {list(steps)!r}")
            previous = step
        object.__setattr__(self, "steps", tuple(float(s) for s in steps))
        hold = self.hold_seconds
        if isinstance(hold, bool) or not isinstance(hold, int | float) or not math.isfinite(hold) or hold < 0:
            raise RolloutError(f"hold_seconds must be a non-negative number, got {hold!r}")
        if (
            isinstance(self.min_requests, bool)
            or not isinstance(self.min_requests, int)
            or self.min_requests < 0
        ):
            raise RolloutError(f"min_requests must be a non-negative integer, got {self.min_requests!r}")
        if not isinstance(self.gates, Gates):
            raise RolloutError(f"gates must be a Gates value, got {self.gates!r}")

    @property
    def required_requests(self) -> int:
        """Canary requests a step needs before the rollout acts on gates."""
        return max(self.min_requests, self.gates.min_requests)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "hold_seconds": self.hold_seconds,
            "min_requests": self.min_requests,
            "gates": self.gates.to_json(),
        }

    @classmethod
    def from_json(cls, obj: object) -> RolloutPlan:
        """Read a plan; every key is optional (``{}`` is the default plan)."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise RolloutError(f"a rollout plan must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in ("steps", "hold_seconds", "min_requests", "gates"))
        if unknown:
            raise RolloutError(f"unknown key(s) in rollout plan: {', '.join(unknown)}")
        defaults = cls()
        steps = obj.get("steps", defaults.steps)
        if not isinstance(steps, list | tuple):
            raise RolloutError(f"rollout steps must be a list, got {steps!r}")
        try:
            gates = Gates.from_json(obj.get("gates"))
        except (TypeError, ValueError) as exc:
            raise RolloutError(str(exc)) from exc
        return cls(
            steps=tuple(steps),
            hold_seconds=obj.get("hold_seconds", defaults.hold_seconds),
            min_requests=obj.get("min_requests", defaults.min_requests),
            gates=gates,
        )


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
        return self.plan.steps[self.step_index] if self.active else 0.0

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


def _event(state: RolloutState, now: float, action: str, who: str, reason: str) -> RolloutEvent:
    return RolloutEvent(now, action, who, state.step_index, state.plan.steps[state.step_index], reason)


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
    """
    if state.status != "running" or canary_requests < plan.required_requests:
        return state
    if any(g.passed is False for g in gate_results):
        return _move(
            state, now, "rolled_back", "controller", describe_failures(gate_results), status="rolled_back"
        )
    if now - state.step_started_at < plan.hold_seconds:
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
