"""The rollout state machine, driven by a fake clock and synthetic gate verdicts."""

from __future__ import annotations

import pytest

from turnout.router.gates import GateResult, Gates
from turnout.router.policy import CanaryTarget, ShadowTarget, TrafficPolicy
from turnout.router.rollout import (
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

PLAN = RolloutPlan(steps=(0.1, 0.5, 1.0), hold_seconds=30, min_requests=50, gates=Gates(min_requests=50))


def _ok() -> list[GateResult]:
    return [
        GateResult("error_rate", True, 0.0, 0.01, "fine"),
        GateResult("p99_latency", True, 1.0, 1.5, "fine"),
        GateResult("disagreement", None, None, 0.05, "no verdict"),
    ]


def _bad() -> list[GateResult]:
    return [
        GateResult("error_rate", False, 0.2, 0.011, "canary 20/100 errors"),
        GateResult("p99_latency", True, 1.0, 1.5, "fine"),
        GateResult("drift", False, "drift", "warning", "drift status 'drift' is worse"),
    ]


def _started(now: float = 1000.0) -> RolloutState:
    return start(PLAN, "iris", "1", "2", now, who="alice", reason="new model")


def test_plan_validation_and_json() -> None:
    assert RolloutPlan.from_json(PLAN.to_json()) == PLAN
    assert RolloutPlan.from_json({}) == RolloutPlan()
    assert RolloutPlan.from_json(None) == RolloutPlan()
    assert RolloutPlan().steps == (0.05, 0.25, 0.5, 1.0)
    bad_plans: list[dict[str, object]] = [
        {"steps": []},
        {"steps": [0.5, 0.2]},
        {"steps": [0, 1]},
        {"steps": [1.5]},
        {"hold_seconds": -1},
        {"min_requests": 1.5},
        {"gates": {"min_requests": -3}},
        {"nope": 1},
    ]
    for bad in bad_plans:
        with pytest.raises(RolloutError):
            RolloutPlan.from_json(bad)


def test_start() -> None:
    state = _started()
    assert (state.status, state.step_index, state.weight, state.step_started_at) == (
        "running",
        0,
        0.1,
        1000.0,
    )
    assert state.history[-1].action == "start" and state.history[-1].who == "alice"
    with pytest.raises(RolloutError, match="already the stable"):
        start(PLAN, "iris", "1", "1", 0.0)


def test_good_canary_steps_through_every_step_and_succeeds() -> None:
    now = 1000.0
    state = _started(now)
    weights = [state.weight]
    while state.status == "running":
        assert len(weights) < 10
        # Not enough requests yet: nothing happens even after the hold.
        assert evaluate(state, PLAN, _ok(), 10, now + 100) is state
        # Enough requests but the hold has not elapsed.
        assert evaluate(state, PLAN, _ok(), 500, now + 29) is state
        now += 31
        state = evaluate(state, PLAN, _ok(), 500, now)
        if state.status == "running":
            assert state.step_started_at == now
            weights.append(state.weight)
    assert weights == [0.1, 0.5, 1.0]
    assert state.status == "succeeded"
    assert [e.action for e in state.history] == ["start", "step", "step", "succeeded"]
    assert policy_for(state) == TrafficPolicy("iris", "2", previous_stable="1", generation=1)


def test_gates_without_verdict_do_not_block() -> None:
    state = _started()
    no_verdicts = [GateResult("disagreement", None, None, 0.05, "none")]
    assert evaluate(state, PLAN, no_verdicts, 100, 2000.0).step_index == 1


def test_required_requests_uses_the_larger_minimum() -> None:
    plan = RolloutPlan(steps=(0.5, 1.0), hold_seconds=0, min_requests=10, gates=Gates(min_requests=200))
    state = start(plan, "m", "1", "2", 0.0)
    assert evaluate(state, plan, _ok(), 150, 1.0) is state
    assert evaluate(state, plan, _ok(), 200, 1.0).step_index == 1


def test_bad_canary_is_rolled_back_naming_the_failed_gates() -> None:
    state = evaluate(_started(), PLAN, _ok(), 500, 1031.0)
    assert state.step_index == 1
    # A failure with too few requests is not acted on.
    assert evaluate(state, PLAN, _bad(), 49, 1035.0) is state
    # With enough requests it rolls back at once, without waiting for the hold.
    rolled = evaluate(state, PLAN, _bad(), 50, 1035.0)
    assert rolled.status == "rolled_back"
    assert "gate error_rate failed: canary 20/100 errors" in rolled.reason
    assert "gate drift failed" in rolled.reason
    assert "p99_latency" not in rolled.reason
    assert rolled.history[-1].action == "rolled_back" and rolled.history[-1].who == "controller"
    assert policy_for(rolled) == TrafficPolicy("iris", "1", generation=1)
    # Final: further evaluation changes nothing.
    assert evaluate(rolled, PLAN, _ok(), 1000, 5000.0) is rolled


def test_pause_and_resume() -> None:
    state = _started(1000.0)
    paused = pause(state, 1010.0, "bob", "investigating")
    assert paused.status == "paused" and paused.reason == "investigating"
    assert evaluate(paused, PLAN, _bad(), 1000, 2000.0) is paused
    assert evaluate(paused, PLAN, _ok(), 1000, 2000.0) is paused
    assert policy_for(paused).canaries == (CanaryTarget("2", 0.1),)  # frozen at its weight
    resumed = resume(paused, 2000.0, "bob")
    assert resumed.status == "running" and resumed.step_started_at == 2000.0
    assert evaluate(resumed, PLAN, _ok(), 1000, 2010.0) is resumed  # hold restarted
    assert evaluate(resumed, PLAN, _ok(), 1000, 2031.0).step_index == 1
    with pytest.raises(RolloutError, match="it is running"):
        resume(resumed, 2040.0, "bob")
    with pytest.raises(RolloutError, match="it is paused"):
        pause(paused, 2040.0, "bob")


def test_abort() -> None:
    aborted = abort(_started(), 1005.0, "carol", "wrong build")
    assert aborted.status == "aborted" and aborted.reason == "wrong build"
    assert aborted.history[-1].who == "carol"
    assert policy_for(aborted).canaries == ()
    for action in (pause, resume, abort, promote, roll_back):
        with pytest.raises(RolloutError, match="it is aborted"):
            action(aborted, 1006.0, "carol")


def test_promote_full_and_one_step() -> None:
    state = _started()
    one = promote(state, 1001.0, "dave", full=False)
    assert one.status == "running" and one.step_index == 1 and one.step_started_at == 1001.0
    paused = pause(one, 1002.0, "dave")
    two = promote(paused, 1003.0, "dave", full=False)
    assert two.status == "paused" and two.step_index == 2
    assert promote(two, 1004.0, "dave", full=False).status == "succeeded"  # past the last step
    done = promote(state, 1001.0, "dave", "looks great")
    assert done.status == "succeeded" and done.history[-1].action == "promote"
    assert policy_for(done).stable == "2"


def test_manual_roll_back() -> None:
    rolled = roll_back(_started(), 1001.0, "erin", "pager")
    assert rolled.status == "rolled_back" and rolled.history[-1].who == "erin"


def test_policy_for_keeps_base_shadows_and_counts_generations() -> None:
    base = TrafficPolicy(
        "iris",
        "1",
        shadows=(ShadowTarget("2", 0.5), ShadowTarget("3", 0.1)),
        previous_stable="0",
        generation=7,
    )
    state = _started()
    running = policy_for(state, base)
    assert running.canaries == (CanaryTarget("2", 0.1),)
    assert running.shadows == base.shadows
    assert running.previous_stable == "0" and running.generation == 8
    rolled = policy_for(roll_back(state, 1.0, "x"), base)
    assert rolled.stable == "1" and rolled.canaries == () and rolled.shadows == (ShadowTarget("3", 0.1),)
    succeeded = policy_for(promote(state, 1.0, "x"), base)
    assert succeeded.stable == "2" and succeeded.previous_stable == "1"
    assert succeeded.shadows == (ShadowTarget("3", 0.1),)


def test_state_json_round_trip() -> None:
    state = evaluate(pause(_started(), 1001.0, "x", "why"), PLAN, _ok(), 0, 1002.0)
    assert RolloutState.from_json(state.to_json()) == state
    with pytest.raises(RolloutError):
        RolloutState.from_json({**state.to_json(), "status": "exploded"})
    with pytest.raises(RolloutError):
        RolloutState.from_json({**state.to_json(), "step_index": 3})
