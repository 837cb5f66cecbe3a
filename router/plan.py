"""What a rollout plan holds: the canary weights and approval steps to go through, how long
to hold each step, the canary requests a step needs and the gates to pass.

A step is a weight in (0, 1] (weights increase) or an :class:`ApprovalStep`, which holds the
weight of the step before it until an operator approves (see :func:`router.rollout.approve`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.router.gates import Gates


class RolloutError(ValueError):
    """An invalid plan, or an action that does not apply to the rollout's current status."""


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """A plan step that waits for an operator's approval, at most ``deadline_seconds`` if set."""

    deadline_seconds: float | None = None

    def __post_init__(self) -> None:
        d = self.deadline_seconds
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0
        ):
            raise RolloutError(f"an approval's deadline_seconds must be a positive number, got {d!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "approval": {} if self.deadline_seconds is None else {"deadline_seconds": self.deadline_seconds}
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ApprovalStep:
        if set(obj) != {"approval"} or not isinstance(obj["approval"], Mapping):
            raise RolloutError(f'an approval step is {{"approval": {{"deadline_seconds": N}}}}, got {obj!r}')
        body = obj["approval"]
        unknown = sorted(str(k) for k in body if k != "deadline_seconds")
        if unknown:
            raise RolloutError(f"unknown key(s) in approval step: {', '.join(unknown)}")
        return cls(body.get("deadline_seconds"))


Step = float | ApprovalStep


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """Canary weights (and approvals) to step through, how long to hold each, and the gates."""

    steps: tuple[Step, ...] = (0.05, 0.25, 0.5, 1.0)
    hold_seconds: float = 30
    min_requests: int = 100
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise RolloutError("a rollout plan needs at least one step")
        previous = 0.0
        if isinstance(steps[0], ApprovalStep):
            raise RolloutError(
                "a rollout plan cannot begin with an approval step (it needs a weight to hold)"
            )
        for step in steps:
            if isinstance(step, ApprovalStep):
                continue
            if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
                raise RolloutError(f"rollout steps must be numbers, got {step!r}")
            if not 0.0 < step <= 1.0:
                raise RolloutError(f"rollout steps must be in (0, 1], got {step!r}")
            if step <= previous:
                raise RolloutError(f"rollout steps must increase, got {list(steps)!r}")
            previous = step
        object.__setattr__(
            self, "steps", tuple(s if isinstance(s, ApprovalStep) else float(s) for s in steps)
        )
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
    def weights(self) -> tuple[float, ...]:
        """The canary's weight at each step (an approval step holds the step before it)."""
        out: list[float] = []
        for step in self.steps:
            out.append(out[-1] if isinstance(step, ApprovalStep) else step)
        return tuple(out)

    def approval_at(self, index: int) -> ApprovalStep | None:
        step = self.steps[index]
        return step if isinstance(step, ApprovalStep) else None

    @property
    def required_requests(self) -> int:
        """Canary requests a step needs before the rollout acts on gates."""
        return max(self.min_requests, self.gates.min_requests)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [s.to_json() if isinstance(s, ApprovalStep) else s for s in self.steps],
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
            steps=tuple(ApprovalStep.from_json(s) if isinstance(s, Mapping) else s for s in steps),
            hold_seconds=obj.get("hold_seconds", defaults.hold_seconds),
            min_requests=obj.get("min_requests", defaults.min_requests),
            gates=gates,
        )
