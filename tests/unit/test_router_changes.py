"""Control-plane decisions (router.changes) and rollout signals, as pure functions: no store,
no clock, no event loop."""

from __future__ import annotations

import pytest

from turnout.router import changes
from turnout.router.changes import Actor, NotConfigured, PolicyRefused, Verdict
from turnout.router.gates import GateResult, Gates
from turnout.router.policy import CanaryTarget, TrafficPolicy
from turnout.router.rollout import RolloutError, RolloutPlan, pause, start
from turnout.router.rollout_signals import RolloutWindows, shadow_disagreement
from turnout.router.shadow import Comparison, ShadowStats

PLAN = RolloutPlan(steps=(0.5, 1.0), hold_seconds=10, min_requests=10, gates=Gates(min_requests=10))
ALICE = Actor("alice", "because", 100.0)


def _servable(model: str, version: str) -> str | None:
    return "not loaded" if version == "broken" else None


def test_set_policy_records_before_and_after() -> None:
    change = changes.set_policy("iris", {"stable": "1"}, None, None, _servable, ALICE)
    assert change.set_policy and not change.set_rollout
    assert change.policy is not None
    assert change.policy == TrafficPolicy("iris", "1", generation=change.policy.generation)
    (record,) = change.audit
    assert (record.ts, record.who, record.action, record.reason) == (100.0, "alice", "set_policy", "because")
    assert record.detail["before"] is None


def test_set_policy_refuses_unservable_versions_and_active_rollouts() -> None:
    with pytest.raises(PolicyRefused, match="'broken' cannot serve: not loaded"):
        changes.set_policy("iris", {"stable": "broken"}, None, None, _servable, ALICE)
    rollout = start(PLAN, "iris", "1", "2", 0.0, "bob")
    with pytest.raises(PolicyRefused, match="a rollout of version '2' is running"):
        changes.set_policy("iris", {"stable": "1"}, None, rollout, _servable, ALICE)


def test_delete_policy_needs_a_policy() -> None:
    with pytest.raises(NotConfigured):
        changes.delete_policy("iris", None, None, ALICE)
    change = changes.delete_policy("iris", TrafficPolicy("iris", "1"), None, ALICE)
    assert change.set_policy and change.policy is None


def test_rollback_without_rollout() -> None:
    with_canary = TrafficPolicy("iris", "1", canaries=(CanaryTarget("2", 0.1),))
    dropped = changes.rollback("iris", with_canary, None, _servable, ALICE)
    assert dropped.policy is not None and dropped.policy.stable == "1" and not dropped.policy.canaries
    assert dropped.audit[0].detail["dropped_canaries"] == ["2"]
    back = changes.rollback("iris", TrafficPolicy("iris", "2", previous_stable="1"), None, _servable, ALICE)
    assert back.policy is not None
    assert (back.policy.stable, back.policy.previous_stable) == ("1", "2")
    with pytest.raises(PolicyRefused, match="no previous stable"):
        changes.rollback("iris", TrafficPolicy("iris", "1"), None, _servable, ALICE)


def test_rollback_stops_an_active_rollout() -> None:
    rollout = start(PLAN, "iris", "1", "2", 0.0, "bob")
    change = changes.rollback("iris", None, rollout, _servable, ALICE)
    assert change.rollout is not None and change.rollout.status == "rolled_back"
    assert change.policy is not None and change.policy.stable == "1" and not change.policy.canaries


def test_start_rollout_needs_a_stable_version_and_no_active_rollout() -> None:
    with pytest.raises(PolicyRefused, match="give the stable version"):
        changes.start_rollout("iris", "2", PLAN, None, None, None, _servable, ALICE)
    change = changes.start_rollout("iris", "2", PLAN, "1", None, None, _servable, ALICE)
    assert change.rollout is not None and change.rollout.started_at == 100.0
    with pytest.raises(RolloutError, match="already has a running rollout"):
        changes.start_rollout("iris", "3", PLAN, "1", change.policy, change.rollout, _servable, ALICE)


def test_operate_rollout_keeps_an_unchanged_policy() -> None:
    with pytest.raises(NotConfigured):
        changes.operate_rollout(
            "iris", "rollout_pause", lambda s, now: pause(s, now, "alice"), None, None, ALICE
        )
    started = changes.start_rollout("iris", "2", PLAN, "1", None, None, _servable, ALICE)
    paused = changes.operate_rollout(
        "iris", "rollout_pause", lambda s, now: pause(s, now, "alice"), started.policy, started.rollout, ALICE
    )
    assert paused.rollout is not None and paused.rollout.status == "paused"
    assert not paused.set_policy


def test_judgement_is_void_when_the_rollout_moved() -> None:
    started = changes.start_rollout("iris", "2", PLAN, "1", None, None, _servable, ALICE)
    judged = started.rollout
    assert judged is not None
    failed = [GateResult("error_rate", False, 0.5, 0.01, "bad")]
    moved = pause(judged, 1.0, "bob")
    assert changes.judgement(Verdict("iris", judged, failed, 20, {}, 50.0), started.policy, moved, 51.0).empty
    change = changes.judgement(Verdict("iris", judged, failed, 20, {}, 50.0), started.policy, judged, 51.0)
    assert change.rollout is not None and change.rollout.status == "rolled_back"
    (record,) = change.audit
    assert (record.who, record.action, record.ts) == ("controller", "rollout_rolled_back", 51.0)


def test_rollout_windows_follow_steps_and_rollouts() -> None:
    windows = RolloutWindows()
    state = start(PLAN, "iris", "1", "2", 0.0, "bob")
    assert windows.sync("iris", state)
    windows.record("iris", "2", 0.01, True)
    windows.record("iris", "1", 0.01, True)
    windows.record("iris", "3", 0.01, True)  # not part of the rollout: ignored
    assert windows.get("iris", "3") is None
    assert not windows.sync("iris", state)
    # no failed gate, enough requests, held long enough: the next step
    stepped = changes.judgement(Verdict("iris", state, [], 10, {}, 20.0), None, state, 20.0).rollout
    assert stepped is not None and stepped.step_index == 1
    assert not windows.sync("iris", stepped)
    canary, stable = windows.get("iris", "2"), windows.get("iris", "1")
    assert canary is not None and stable is not None
    assert (canary.requests, stable.requests) == (0, 1)
    windows.set_last_gates("iris", [GateResult("drift", None, None, "warning", "no verdict")])
    assert not windows.sync("iris", None)
    assert windows.get("iris", "1") is None and windows.last_gates("iris") == []


def test_shadow_disagreement_needs_enough_rows_in_both_directions() -> None:
    stats = ShadowStats()
    state = start(PLAN, "iris", "1", "2", 0.0, "bob")
    assert shadow_disagreement(stats, "iris", state) is None
    stats.pair("iris", "1", "2").add(Comparison(6, 6, 5, 0, 0.0, 0.0), 0.01, 0.01)
    assert shadow_disagreement(stats, "iris", state) is None  # 6 rows < 10 needed
    stats.pair("iris", "2", "1").add(Comparison(4, 4, 3, 0, 0.0, 0.0), 0.01, 0.01)
    assert shadow_disagreement(stats, "iris", state) == pytest.approx(0.2)
