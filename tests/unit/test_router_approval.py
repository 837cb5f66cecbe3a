"""Approval steps of a rollout plan: pure state transitions driven by a fake clock."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from turnout.router.controller import TrafficController
from turnout.router.gates import GateResult, Gates
from turnout.router.rollout import (
    ApprovalStep,
    RolloutError,
    RolloutPlan,
    RolloutState,
    approve,
    evaluate,
    pause,
    policy_for,
    promote,
    reject,
    resume,
    start,
)
from turnout.router.store import ControlPlaneStore

PLAN = RolloutPlan(
    steps=(0.1, ApprovalStep(deadline_seconds=600), 0.5, 1.0, ApprovalStep()),
    hold_seconds=30,
    min_requests=10,
    gates=Gates(min_requests=10),
)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _controller(state_dir: Path, clock: Clock) -> TrafficController:
    return TrafficController(
        ControlPlaneStore(state_dir), clock=clock, rng=random.Random(1), validate=lambda m, v: None
    )


OK = [GateResult("error_rate", True, 0.0, 0.01, "fine")]
BAD = [GateResult("error_rate", False, 0.3, 0.01, "canary 30/100 errors")]


def _waiting(now: float = 1000.0) -> RolloutState:
    """A rollout that held its first step and now waits for approval (since ``now + 30``)."""
    state = start(PLAN, "iris", "1", "2", now, who="alice")
    state = evaluate(state, PLAN, OK, 50, now + 30)
    assert state.waiting_for_approval
    return state


def test_plan_json_round_trip_and_validation() -> None:
    body = PLAN.to_json()
    assert body["steps"] == [0.1, {"approval": {"deadline_seconds": 600}}, 0.5, 1.0, {"approval": {}}]
    assert RolloutPlan.from_json(body) == PLAN
    assert PLAN.weights == (0.1, 0.1, 0.5, 1.0, 1.0)
    bad: list[object] = [
        [{"approval": {}}, 0.5],  # nothing to hold
        [0.1, {"approval": {"deadline_seconds": 0}}],
        [0.1, {"approval": {"deadline_seconds": "soon"}}],
        [0.1, {"approval": {"deadlin": 3}}],
        [0.1, {"approval": {}, "x": 1}],
        [0.5, {"approval": {}}, 0.2],  # weights still increase across approvals
    ]
    for steps in bad:
        with pytest.raises(RolloutError):
            RolloutPlan.from_json({"steps": steps})


def test_waits_at_approval_holding_previous_weight() -> None:
    state = _waiting()
    assert (state.status, state.step_index, state.weight) == ("running", 1, 0.1)
    assert state.approval_deadline == 1030.0 + 600
    # never advances by itself, however long it holds with passing gates
    assert evaluate(state, PLAN, OK, 10_000, 1500.0) is state
    status = state.to_json()["approval"]
    assert status["since"] == 1030.0 and status["deadline"] == 1630.0
    assert status["summary"] == (
        "waiting for approval since 1970-01-01T00:17:10Z, deadline 1970-01-01T00:27:10Z"
    )
    assert RolloutState.from_json(state.to_json()) == state  # survives a restart
    assert policy_for(state).canaries[0].weight == 0.1


def test_approve_moves_on_and_records_who() -> None:
    state = approve(_waiting(), 1100.0, "ops-admin", "looks good")
    assert (state.step_index, state.weight, state.step_started_at, state.status) == (
        2,
        0.5,
        1100.0,
        "running",
    )
    last = state.history[-1]
    assert (last.action, last.who, last.at, last.reason) == ("approve", "ops-admin", 1100.0, "looks good")
    assert state.to_json()["approval"] is None
    # the final approval (no deadline) succeeds the rollout when approved
    state = evaluate(state, PLAN, OK, 50, 1130.0)
    state = evaluate(state, PLAN, OK, 50, 1160.0)
    assert state.waiting_for_approval and state.approval_deadline is None
    assert evaluate(state, PLAN, OK, 50, 1e9) is state  # no deadline: waits forever
    assert approve(state, 1200.0, "ops-admin").status == "succeeded"


def test_deadline_rolls_back_even_without_traffic() -> None:
    state = _waiting()
    assert evaluate(state, PLAN, OK, 0, 1629.9) is state
    over = evaluate(state, PLAN, OK, 0, 1630.0)
    assert over.status == "rolled_back" and over.weight == 0.0
    assert over.history[-1].who == "controller"
    assert "no approval within 600s" in over.reason
    with pytest.raises(RolloutError):
        approve(over, 1631.0, "late")


def test_failed_gate_rolls_back_while_waiting() -> None:
    assert evaluate(_waiting(), PLAN, BAD, 50, 1100.0).status == "rolled_back"


def test_reject_rolls_back() -> None:
    state = reject(_waiting(), 1100.0, "ops-admin", "not this week")
    assert state.status == "rolled_back"
    assert (state.history[-1].action, state.history[-1].who) == ("reject", "ops-admin")


def test_approve_or_reject_only_while_waiting() -> None:
    running = start(PLAN, "iris", "1", "2", 1000.0)
    for action in (approve, reject):
        with pytest.raises(RolloutError, match="not waiting for approval"):
            action(running, 1001.0, "ops-admin")
    paused = pause(_waiting(), 1040.0, "bob")
    with pytest.raises(RolloutError, match="paused"):
        approve(paused, 1041.0, "ops-admin")
    # a paused rollout does not time out; resuming restarts the step and so the deadline
    assert evaluate(paused, PLAN, OK, 0, 5000.0) is paused
    resumed = resume(paused, 5000.0, "bob")
    assert resumed.approval_deadline == 5600.0


def test_promote_skips_the_approval() -> None:
    state = promote(_waiting(), 1100.0, "ops-admin", full=False)
    assert (state.step_index, state.weight, state.waiting_for_approval) == (2, 0.5, False)


def test_controller_approval_shared_by_workers_survives_restart_and_times_out(tmp_path: Path) -> None:
    clock = Clock()
    plan = RolloutPlan(
        steps=(0.2, ApprovalStep(60), 1.0), hold_seconds=10, min_requests=0, gates=Gates(min_requests=0)
    )
    leader = _controller(tmp_path, clock)
    follower = _controller(tmp_path, clock)
    leader.start_rollout("iris", "2", plan, "alice", stable="1")
    assert leader.tick() == []  # leader lock taken; nothing to judge yet
    clock.now += 11
    (waiting,) = leader.tick()
    assert waiting.waiting_for_approval and waiting.approval_deadline == clock.now + 60
    # another worker approves; the decision goes through the shared store
    approved = follower.approve_rollout("iris", "ops-admin", "ship it")
    assert approved.step_index == 2
    leader.tick()
    assert leader.rollout("iris") == approved
    (record,) = leader.audit(1)
    assert (record.action, record.who, record.ts, record.reason) == (
        "rollout_approve",
        "ops-admin",
        clock.now,
        "ship it",
    )
    # a second rollout: restart while waiting, then the deadline passes with nobody approving
    clock.now += 11
    leader.tick()
    assert leader.rollout("iris").status == "succeeded"  # type: ignore[union-attr]
    leader.start_rollout("iris", "3", plan, "alice")
    clock.now += 11
    leader.tick()
    leader.close()
    follower.close()
    restarted = _controller(tmp_path, clock)
    assert restarted.rollout("iris").waiting_for_approval  # type: ignore[union-attr]
    clock.now += 59
    assert restarted.tick() == []
    clock.now += 1
    (over,) = restarted.tick()
    assert over.status == "rolled_back" and restarted.get_policy("iris").stable == "2"  # type: ignore[union-attr]
    assert restarted.audit(1)[0].action == "rollout_rolled_back"
    with pytest.raises(RolloutError):
        restarted.reject_rollout("iris", "ops-admin")
