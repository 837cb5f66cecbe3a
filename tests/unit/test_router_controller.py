"""TrafficController: routing, policy changes, rollbacks, rollouts driven by tick(), shared store."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from turnout.router.controller import NotConfigured, PolicyRefused, TrafficController
from turnout.router.decide import RouteDecision
from turnout.router.gates import Gates
from turnout.router.policy import PolicyError, TrafficPolicy
from turnout.router.rollout import RolloutError, RolloutPlan
from turnout.router.store import ControlPlaneStore

PLAN = RolloutPlan(steps=(0.1, 0.5, 1.0), hold_seconds=10, min_requests=100, gates=Gates(min_requests=100))


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Servable:
    """Fake model registry: every version can serve unless listed as broken."""

    def __init__(self) -> None:
        self.broken: dict[str, str] = {}

    def __call__(self, model: str, version: str) -> str | None:
        return self.broken.get(version)


def _controller(
    state_dir: Path | None = None,
    clock: Clock | None = None,
    servable: Servable | None = None,
    **kwargs: object,
) -> TrafficController:
    store = ControlPlaneStore(state_dir) if state_dir is not None else None
    return TrafficController(
        store,
        clock=clock or Clock(),
        rng=random.Random(42),
        validate=servable or Servable(),
        **kwargs,  # type: ignore[arg-type]
    )


def _serve(
    controller: TrafficController, model: str, n: int, latency: dict[str, float], error_every: dict[str, int]
) -> Counter[str]:
    """Route ``n`` requests and report synthetic outcomes back, as the server would."""
    served: Counter[str] = Counter()
    for i in range(n):
        decision = controller.route(model)
        assert decision is not None
        version = decision.version
        served[version] += 1
        every = error_every.get(version, 0)
        ok = not (every and served[version] % every == 0)
        controller.record(model, version, latency.get(version, 0.01) * (1 + (i % 10) / 50), ok)
    return served


def test_no_policy_routes_to_default() -> None:
    assert _controller().route("iris", "alice") is None


def test_set_policy_then_route_split_and_stickiness() -> None:
    controller = _controller()
    body = {
        "stable": "1",
        "canary": {"version": "2", "weight": 0.25},
        "shadow": {"version": "3", "fraction": 1.0},
    }
    policy = controller.set_policy("iris", body, "alice", "try v2")
    assert controller.get_policy("iris") == policy and policy.generation == 1
    counts = Counter(d.version for d in (controller.route("iris") for _ in range(4000)) if d is not None)
    assert 0.2 < counts["2"] / 4000 < 0.3
    first = controller.route("iris", "user-7")
    assert first is not None and first.sticky
    assert all(controller.route("iris", "user-7") == first for _ in range(50))
    assert controller.route("iris", "user-7") == RouteDecision(first.version, ("3",), True)


def test_set_policy_refuses_unservable_versions_and_keeps_the_old_policy() -> None:
    servable = Servable()
    servable.broken["9"] = "version 9 is not loaded"
    controller = _controller(servable=servable)
    controller.set_policy("iris", {"stable": "1"}, "alice")
    with pytest.raises(PolicyRefused, match="version '9' cannot serve: version 9 is not loaded"):
        controller.set_policy("iris", {"stable": "1", "canary": {"version": "9", "weight": 0.1}}, "alice")
    with pytest.raises(PolicyError):
        controller.set_policy("iris", {"stable": "1", "canary": {"version": "2", "weight": 7}}, "alice")
    assert controller.get_policy("iris") == TrafficPolicy("iris", "1", generation=1)
    assert [r.action for r in controller.audit()] == ["set_policy"]


def test_rollback_restores_previous_stable_and_audits(tmp_path: Path) -> None:
    clock = Clock()
    controller = _controller(tmp_path, clock)
    controller.set_policy("iris", {"stable": "1"}, "alice", "initial")
    clock.now += 60
    controller.set_policy(
        "iris",
        {
            "stable": "2",
            "canary": {"version": "3", "weight": 0.1},
            "shadow": {"version": "4", "fraction": 0.5},
        },
        "bob",
        "ship v2",
    )
    clock.now += 60
    policy = controller.rollback("iris", "carol", "v2 returns garbage")
    assert policy == TrafficPolicy("iris", "1", previous_stable="2", generation=3)
    assert controller.route("iris", "anyone") == RouteDecision("1", (), True)

    last = controller.audit(1)[0]
    assert (last.who, last.action, last.model, last.reason) == (
        "carol",
        "rollback",
        "iris",
        "v2 returns garbage",
    )
    assert last.ts == clock.now
    assert (last.detail["from"], last.detail["to"]) == ("2", "1")
    assert [r.who for r in controller.audit()] == ["alice", "bob", "carol"]
    # Persisted: a new worker sees the rolled-back policy and the audit trail.
    fresh = _controller(tmp_path)
    assert fresh.get_policy("iris") == policy
    assert [r.action for r in fresh.audit(10, model="iris")] == ["set_policy", "set_policy", "rollback"]


def test_rollback_needs_somewhere_to_go() -> None:
    servable = Servable()
    controller = _controller(servable=servable)
    with pytest.raises(NotConfigured):
        controller.rollback("iris", "x")
    controller.set_policy("iris", {"stable": "1"}, "x")
    with pytest.raises(PolicyRefused, match="no previous stable"):
        controller.rollback("iris", "x")
    controller.set_policy("iris", {"stable": "2"}, "x")
    servable.broken["1"] = "deleted"
    with pytest.raises(PolicyRefused, match="deleted"):
        controller.rollback("iris", "x")


def test_delete_policy() -> None:
    controller = _controller()
    controller.set_policy("iris", {"stable": "1"}, "x")
    controller.delete_policy("iris", "x", "back to default")
    assert controller.route("iris") is None
    with pytest.raises(NotConfigured):
        controller.delete_policy("iris", "x")


def test_good_canary_rollout_succeeds_through_all_steps(tmp_path: Path) -> None:
    clock = Clock()
    controller = _controller(tmp_path, clock)
    controller.set_policy("iris", {"stable": "1"}, "alice")
    state = controller.start_rollout("iris", "2", PLAN, "alice", "v2 is faster")
    assert state.status == "running"
    assert controller.get_policy("iris").canary_weight == pytest.approx(0.1)  # type: ignore[union-attr]

    weights_seen = []
    rollout = None
    for _ in range(10):
        policy = controller.get_policy("iris")
        assert policy is not None
        weights_seen.append(policy.canary_weight)
        _serve(controller, "iris", 2000, {"1": 0.01, "2": 0.009}, {"1": 500, "2": 500})
        clock.now += 11
        controller.tick()
        rollout = controller.rollout("iris")
        assert rollout is not None
        if rollout.status != "running":
            break
    assert rollout is not None and rollout.status == "succeeded", rollout
    assert weights_seen == pytest.approx([0.1, 0.5, 1.0])
    assert controller.get_policy("iris") == TrafficPolicy("iris", "2", previous_stable="1", generation=5)
    actions = [r.action for r in controller.audit(20)]
    assert actions == ["set_policy", "rollout_start", "rollout_step", "rollout_step", "rollout_succeeded"]
    assert all(r.who == "controller" for r in controller.audit(3))
    # After success, rollback goes straight back to the old stable version.
    assert controller.rollback("iris", "bob", "regret").stable == "1"


def test_bad_canary_is_rolled_back_with_the_failed_gate_in_the_audit() -> None:
    clock = Clock()
    controller = _controller(clock=clock)
    controller.set_policy("iris", {"stable": "1"}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    # Too few canary requests: no verdict yet, even though every canary request fails.
    _serve(controller, "iris", 300, {}, {"2": 1})
    clock.now += 1
    assert controller.tick() == []
    status = controller.rollout_status("iris")
    assert status is not None and status["gates"][0]["passed"] is None
    _serve(controller, "iris", 3000, {}, {"2": 4})  # 25% canary errors
    clock.now += 1
    (changed,) = controller.tick()
    assert changed.status == "rolled_back"
    assert "gate error_rate failed" in changed.reason
    assert controller.get_policy("iris") == TrafficPolicy("iris", "1", generation=3)
    record = controller.audit(1)[0]
    assert (record.action, record.who) == ("rollout_rolled_back", "controller")
    assert "gate error_rate failed" in record.reason
    failed = [g for g in record.detail["gates"] if g["passed"] is False]
    assert [g["name"] for g in failed] == ["error_rate"] and failed[0]["observed"] > 0.2
    # The rollout is over: more traffic and ticks change nothing, and recording is a no-op.
    assert controller.tick() == []
    controller.record("iris", "2", 0.01, False)


def test_slow_canary_fails_the_latency_gate() -> None:
    clock = Clock()
    controller = _controller(clock=clock)
    controller.set_policy("iris", {"stable": "1"}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    _serve(controller, "iris", 3000, {"1": 0.01, "2": 0.05}, {})
    clock.now += 1
    (changed,) = controller.tick()
    assert changed.status == "rolled_back" and "gate p99_latency failed" in changed.reason


def test_disagreeing_shadow_comparisons_fail_the_rollout() -> None:
    clock = Clock()
    controller = _controller(clock=clock)
    controller.set_policy("iris", {"stable": "1"}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    _serve(controller, "iris", 2000, {}, {})
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    for _ in range(20):
        controller.record_shadow("iris", "1", "2", {"label": labels}, {"label": labels % 5}, 0.01, 0.01)
    assert controller.pair_stats("iris")[0].disagreement_rate == pytest.approx(0.5)
    clock.now += 1
    (changed,) = controller.tick()
    assert changed.status == "rolled_back" and "gate disagreement failed" in changed.reason


def test_drift_source_feeds_the_drift_gate() -> None:
    clock = Clock()
    controller = _controller(clock=clock, drift=lambda model, version: "drift" if version == "2" else "ok")
    controller.set_policy("iris", {"stable": "1"}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    _serve(controller, "iris", 2000, {}, {})
    clock.now += 1
    (changed,) = controller.tick()
    assert "gate drift failed" in changed.reason


def test_operator_rollout_actions() -> None:
    clock = Clock()
    controller = _controller(clock=clock)
    with pytest.raises(PolicyRefused, match="give the stable version"):
        controller.start_rollout("iris", "2", PLAN, "alice")
    controller.start_rollout("iris", "2", {"steps": [0.2, 1.0], "hold_seconds": 5}, "alice", stable="1")
    with pytest.raises(RolloutError, match="already has a running rollout"):
        controller.start_rollout("iris", "3", PLAN, "alice")
    with pytest.raises(PolicyRefused, match="rollout of version '2' is running at 20%"):
        controller.set_policy("iris", {"stable": "5"}, "bob")

    paused = controller.pause_rollout("iris", "bob", "investigating")
    assert paused.status == "paused"
    assert controller.get_policy("iris").canary_weight == pytest.approx(0.2)  # type: ignore[union-attr]
    _serve(controller, "iris", 2000, {}, {})
    clock.now += 100
    assert controller.tick() == []  # paused rollouts are not judged
    assert controller.resume_rollout("iris", "bob").status == "running"
    assert controller.promote_rollout("iris", "bob", full=False).step_index == 1
    assert controller.get_policy("iris").canary_weight == pytest.approx(1.0)  # type: ignore[union-attr]
    aborted = controller.abort_rollout("iris", "carol", "changed our minds")
    assert aborted.status == "aborted"
    assert controller.get_policy("iris").stable == "1"  # type: ignore[union-attr]
    assert controller.route("iris", "k") == RouteDecision("1", (), True)
    with pytest.raises(RolloutError, match="it is aborted"):
        controller.pause_rollout("iris", "bob")
    with pytest.raises(NotConfigured):
        controller.pause_rollout("mnist", "bob")
    actions = [(r.action, r.who) for r in controller.audit(10)]
    assert actions == [
        ("rollout_start", "alice"),
        ("rollout_pause", "bob"),
        ("rollout_resume", "bob"),
        ("rollout_promote", "bob"),
        ("rollout_abort", "carol"),
    ]
    # A new rollout may start once the previous one is over, and promotion makes it stable.
    # (Pause and resume did not change the routing, so they did not bump the generation.)
    controller.start_rollout("iris", "3", PLAN, "dave")
    assert controller.promote_rollout("iris", "dave").status == "succeeded"
    assert controller.get_policy("iris") == TrafficPolicy("iris", "3", previous_stable="1", generation=5)


def test_rollback_during_a_rollout_stops_it() -> None:
    controller = _controller()
    controller.set_policy("iris", {"stable": "1", "shadow": {"version": "4", "fraction": 0.5}}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    policy = controller.rollback("iris", "bob", "pager went off")
    assert policy.stable == "1" and policy.canaries == () and policy.shadows[0].version == "4"
    rollout = controller.rollout("iris")
    assert rollout is not None and rollout.status == "rolled_back" and rollout.reason == "pager went off"


def test_rollout_status_view() -> None:
    clock = Clock()
    controller = _controller(clock=clock)
    assert controller.rollout_status("iris") is None
    controller.start_rollout("iris", "2", PLAN, "alice", stable="1")
    _serve(controller, "iris", 500, {}, {})
    controller.record_shadow("iris", "2", "1", {"y": np.ones(3)}, {"y": np.ones(3)}, 0.01, 0.02)
    controller.tick()
    status = controller.rollout_status("iris")
    assert status is not None
    assert status["rollout"]["weight"] == 0.1
    assert status["canary_window"]["requests"] + status["stable_window"]["requests"] == 500
    assert [g["name"] for g in status["gates"]] == [
        "error_rate",
        "p99_latency",
        "disagreement",
        "drift",
        "accuracy",
    ]
    assert len(status["shadow"]) == 1


def test_workers_sharing_a_store_see_each_others_changes(tmp_path: Path) -> None:
    clock = Clock()
    a = _controller(tmp_path, clock)
    b = _controller(tmp_path, clock)
    a.set_policy("iris", {"stable": "1"}, "alice")
    assert b.route("iris") is None  # not yet polled
    b.tick()
    assert b.get_policy("iris") == a.get_policy("iris")
    # b is stale about nothing now; a is stale after b's change but its commit retries on fresh state.
    b.set_policy("iris", {"stable": "2"}, "bob")
    a.set_policy("mnist", {"stable": "7"}, "alice")
    c = _controller(tmp_path, clock)
    assert c.get_policy("iris") == TrafficPolicy("iris", "2", previous_stable="1", generation=2)
    assert c.get_policy("mnist") is not None
    assert a.get_policy("iris") == c.get_policy("iris")


def test_only_the_leader_judges_rollouts_and_others_follow(tmp_path: Path) -> None:
    clock = Clock()
    leader = _controller(tmp_path, clock)
    follower = _controller(tmp_path, clock)
    leader.start_rollout("iris", "2", PLAN, "alice", stable="1")
    assert leader.tick() == []  # takes the leader lock
    follower.tick()
    assert follower.rollout("iris") == leader.rollout("iris")
    # The follower's traffic is bad, but it is not the leader, so nothing happens.
    _serve(follower, "iris", 3000, {}, {"2": 2})
    clock.now += 1
    assert follower.tick() == []
    # The leader judges its own (good) traffic and steps forward; the follower adopts the step.
    _serve(leader, "iris", 3000, {}, {})
    clock.now += 11
    (stepped,) = leader.tick()
    assert stepped.step_index == 1
    follower.tick()
    assert follower.get_policy("iris") == leader.get_policy("iris")
    assert follower.rollout("iris") == stepped
    # An operator action on the follower wins over the leader's stale view.
    follower.abort_rollout("iris", "bob", "stop")
    _serve(leader, "iris", 3000, {}, {})
    clock.now += 11
    assert leader.tick() == []
    assert leader.rollout("iris").status == "aborted"  # type: ignore[union-attr]


def test_restart_resumes_a_rollout_from_disk(tmp_path: Path) -> None:
    clock = Clock()
    first = _controller(tmp_path, clock)
    first.start_rollout("iris", "2", PLAN, "alice", stable="1")
    assert first.tick() == []  # first is the leader...
    assert _controller(tmp_path, clock).tick() == []  # ...so nobody else judges
    first.close()  # the process shuts down, releasing leadership
    second = _controller(tmp_path, clock)
    assert second.rollout("iris") == first.rollout("iris")
    _serve(second, "iris", 3000, {}, {})
    clock.now += 11
    (stepped,) = second.tick()
    assert stepped.step_index == 1


def test_accuracy_source_feeds_the_accuracy_gate_from_the_rollout_start() -> None:
    clock = Clock()
    # before the rollout, version 2 looked perfect; only rows labelled since its start count
    counts = {"1": (100, 100), "2": (100, 100)}
    controller = _controller(clock=clock, accuracy=lambda model, version: counts.get(version))
    controller.set_policy("iris", {"stable": "1"}, "alice")
    controller.start_rollout("iris", "2", PLAN, "alice")
    _serve(controller, "iris", 2000, {}, {})
    counts["1"] = (100 + 930, 100 + 1000)
    counts["2"] = (100 + 400, 100 + 500)  # 80% since the start vs 93%
    clock.now += 1
    (changed,) = controller.tick()
    assert "gate accuracy failed" in changed.reason
    assert changed.status == "rolled_back"
