"""TrafficPolicy validation and JSON."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.router.policy import CanaryTarget, PolicyError, ShadowTarget, TrafficPolicy


def test_valid_policy_derives_cumulative_weights_and_versions() -> None:
    policy = TrafficPolicy(
        "iris",
        "1",
        canaries=(CanaryTarget("2", 0.1), CanaryTarget("3", 0.25)),
        shadows=(ShadowTarget("4", 0.5), ShadowTarget("2", 1.0)),
    )
    assert policy.cumulative == pytest.approx((0.1, 0.35))
    assert policy.canary_weight == pytest.approx(0.35)
    assert policy.versions() == ("1", "2", "3", "4")


def test_lists_are_stored_as_tuples_and_policy_is_hashable() -> None:
    policy = TrafficPolicy("m", "1", canaries=[CanaryTarget("2", 0.5)])  # type: ignore[arg-type]
    assert isinstance(policy.canaries, tuple)
    assert hash(policy) == hash(TrafficPolicy("m", "1", canaries=(CanaryTarget("2", 0.5),)))


def test_float_rounding_in_weight_sum_is_tolerated() -> None:
    policy = TrafficPolicy(
        "m", "1", canaries=(CanaryTarget("2", 0.1), CanaryTarget("3", 0.2), CanaryTarget("4", 0.7))
    )
    assert policy.cumulative[-1] == 1.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CanaryTarget("2", 1.5), "between 0 and 1"),
        (lambda: CanaryTarget("2", -0.1), "between 0 and 1"),
        (lambda: CanaryTarget("2", math.nan), "between 0 and 1"),
        (lambda: CanaryTarget("2", True), "number"),
        (lambda: CanaryTarget("", 0.1), "non-empty"),
        (lambda: ShadowTarget("3", 2.0), "between 0 and 1"),
        (
            lambda: TrafficPolicy("m", "1", canaries=(CanaryTarget("2", 0.6), CanaryTarget("3", 0.5))),
            "add up to 1.1",
        ),
        (
            lambda: TrafficPolicy("m", "1", canaries=(CanaryTarget("2", 0.1), CanaryTarget("2", 0.1))),
            "more than once",
        ),
        (
            lambda: TrafficPolicy("m", "1", shadows=(ShadowTarget("2", 0.1), ShadowTarget("2", 0.3))),
            "more than once",
        ),
        (
            lambda: TrafficPolicy("m", "1", canaries=(CanaryTarget("1", 0.1),)),
            "both the stable version and a canary",
        ),
        (lambda: TrafficPolicy("", "1"), "model"),
        (lambda: TrafficPolicy("m", ""), "stable version"),
        (lambda: TrafficPolicy("m", "1", generation=-1), "generation"),
    ],
)
def test_invalid_policies_are_refused_with_a_clear_message(build: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build()  # type: ignore[operator]


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_from_json_accepts_the_http_body() -> None:
    body = {
        "stable": "1",
        "canary": {"version": "2", "weight": 0.1},
        "shadow": {"version": "3", "fraction": 1.0},
    }
    policy = TrafficPolicy.from_json("iris", body, None)
    assert policy == TrafficPolicy(
        "iris", "1", (CanaryTarget("2", 0.1),), (ShadowTarget("3", 1.0),), previous_stable=None, generation=1
    )


def test_from_json_accepts_lists_and_integer_versions() -> None:
    body = {
        "stable": 1,
        "canaries": [{"version": 2, "weight": 0.1}, {"version": "3", "weight": 0}],
        "shadows": [{"version": "4", "fraction": 0.25}],
    }
    policy = TrafficPolicy.from_json("m", body)
    assert policy.stable == "1"
    assert [c.version for c in policy.canaries] == ["2", "3"]
    assert policy.shadows == (ShadowTarget("4", 0.25),)


def test_from_json_accepts_null_canary_and_shadow() -> None:
    policy = TrafficPolicy.from_json("m", {"stable": "1", "canary": None, "shadows": None})
    assert policy.canaries == () and policy.shadows == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "needs a 'stable'"),
        ({"stable": "1", "canarys": []}, "unknown key"),
        ({"stable": "1", "canary": {"version": "2"}}, "missing 'weight'"),
        ({"stable": "1", "canary": {"version": "2", "weight": 0.1, "extra": 1}}, "unknown key"),
        ({"stable": "1", "canary": {"version": "2", "fraction": 0.1}}, "unknown key"),
        ({"stable": "1", "canary": {"version": "2", "weight": "0.1"}}, "number"),
        ({"stable": "1", "canary": {"version": "2", "weight": 0.1}, "canaries": []}, "not both"),
        ({"stable": "1", "canaries": {"version": "2", "weight": 0.1}}, "must be a list"),
        ({"stable": "1", "canaries": ["2"]}, "must be an object"),
        ({"stable": "1", "shadow": {"version": "2", "fraction": 1.2}}, "between 0 and 1"),
        ({"stable": "1", "model": "other"}, "not 'm'"),
        ({"stable": None}, "version string"),
        ({"stable": " 1"}, "surrounding spaces"),
    ],
)
def test_from_json_refuses_bad_bodies(body: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        TrafficPolicy.from_json("m", body)


def test_from_json_tracks_previous_stable_and_generation() -> None:
    first = TrafficPolicy.from_json("m", {"stable": "1"})
    assert first.generation == 1 and first.previous_stable is None
    second = TrafficPolicy.from_json("m", {"stable": "2"}, first)
    assert second.generation == 2 and second.previous_stable == "1"
    # Changing only the canary keeps the remembered previous stable.
    third = TrafficPolicy.from_json("m", {"stable": "2", "canary": {"version": "3", "weight": 0.2}}, second)
    assert third.generation == 3 and third.previous_stable == "1"
    # With a previous policy, a generation in the body is ignored.
    fourth = TrafficPolicy.from_json("m", {"stable": "2", "generation": 99}, third)
    assert fourth.generation == 4


def test_json_round_trip() -> None:
    policy = TrafficPolicy(
        "m",
        "7",
        canaries=(CanaryTarget("8", 0.05), CanaryTarget("9", 0.15)),
        shadows=(ShadowTarget("10", 0.3),),
        previous_stable="6",
        generation=12,
    )
    assert TrafficPolicy.from_json("m", policy.to_json(), None) == policy


_versions = st.text(alphabet="abcdef0123456789.-", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    stable=_versions,
    canaries=st.lists(st.tuples(_versions, st.floats(0, 0.3)), max_size=3, unique_by=lambda t: t[0]),
    shadows=st.lists(st.tuples(_versions, st.floats(0, 1)), max_size=3, unique_by=lambda t: t[0]),
    generation=st.integers(0, 10**6),
)
def test_json_round_trip_property(
    stable: str, canaries: list[tuple[str, float]], shadows: list[tuple[str, float]], generation: int
) -> None:
    canaries = [c for c in canaries if c[0] != stable]
    policy = TrafficPolicy(
        "model",
        stable,
        canaries=tuple(CanaryTarget(v, w) for v, w in canaries),
        shadows=tuple(ShadowTarget(v, f) for v, f in shadows),
        generation=generation,
    )
    assert TrafficPolicy.from_json("model", policy.to_json(), None) == policy
