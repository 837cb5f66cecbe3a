"""The rollout accuracy gate: a one-sided two-proportion z-test on ground-truth feedback."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from turnout.router.gates import Gates, Labelled, accuracy_drop_test, evaluate_gates
from turnout.router.rollout_signals import AccuracySince
from turnout.router.window import WindowSnapshot


def test_zero_margin_is_the_classic_pooled_test() -> None:
    stable, canary = Labelled(900, 1000), Labelled(860, 1000)
    z, p = accuracy_drop_test(stable, canary, 0.0)
    table = [[900, 100], [860, 140]]
    chi2, p_two, _, _ = sps.chi2_contingency(table, correction=False)
    assert z * z == pytest.approx(chi2, rel=1e-9)
    assert p == pytest.approx(p_two / 2, rel=1e-9)  # one-sided, in the direction observed


def test_margin_uses_unpooled_errors() -> None:
    stable, canary = Labelled(950, 1000), Labelled(900, 1000)
    z, p = accuracy_drop_test(stable, canary, 0.02)
    se = math.sqrt(0.95 * 0.05 / 1000 + 0.9 * 0.1 / 1000)
    assert z == pytest.approx((0.05 - 0.02) / se)
    assert p == pytest.approx(sps.norm.sf(z))


def test_degenerate_samples() -> None:
    assert accuracy_drop_test(Labelled(10, 10), Labelled(10, 10), 0.0) == (0.0, 0.5)
    z, p = accuracy_drop_test(Labelled(10, 10), Labelled(0, 10), 0.0)
    assert z > 0 and p < 1e-3
    with pytest.raises(ValueError):
        accuracy_drop_test(Labelled(0, 0), Labelled(1, 1), 0.0)


def gate(canary: Labelled, stable: Labelled, **kw: float) -> object:
    window = WindowSnapshot()
    results = evaluate_gates(window, window, None, None, Gates(**kw), (canary, stable))  # type: ignore[arg-type]
    assert [r.name for r in results][-1] == "accuracy"
    return results[-1]


def test_gate_verdicts() -> None:
    # a real drop of 8 points fails; 0.5 points within a 2-point allowance passes
    assert gate(Labelled(820, 1000), Labelled(900, 1000)).passed is False  # type: ignore[attr-defined]
    assert gate(Labelled(895, 1000), Labelled(900, 1000)).passed is True  # type: ignore[attr-defined]
    # too few labelled rows: no verdict, whatever the rates
    few = gate(Labelled(10, 100), Labelled(100, 100))
    assert few.passed is None and "need 200" in few.detail  # type: ignore[attr-defined]
    # no feedback at all: no verdict
    results = evaluate_gates(WindowSnapshot(), WindowSnapshot(), None, None, Gates())
    assert results[-1].passed is None


def test_gate_settings_are_validated_and_round_trip() -> None:
    g = Gates(max_accuracy_drop=0.05, accuracy_alpha=0.01, min_labelled=50)
    assert Gates.from_json(g.to_json()) == g
    for bad in ({"max_accuracy_drop": 2.0}, {"accuracy_alpha": -0.1}, {"min_labelled": -1}):
        with pytest.raises(ValueError):
            Gates(**bad)  # type: ignore[arg-type]


def test_accuracy_since_counts_from_the_rollout_start() -> None:
    counts = {("m", "1"): (90, 100), ("m", "2"): (5, 10)}
    since = AccuracySince(lambda m, v: counts.get((m, v)))
    since.begin("m", ("1", "2"))
    counts[("m", "1")] = (180, 200)
    counts[("m", "2")] = (50, 100)
    assert since.since("m", "1") == Labelled(90, 100)
    assert since.since("m", "2") == Labelled(45, 90)
    assert since.since("m", "3") == Labelled(0, 0)  # unknown: nothing labelled

    def broken(m: str, v: str) -> tuple[int, int] | None:
        raise RuntimeError("source down")

    assert AccuracySince(broken).since("m", "1") == Labelled(0, 0)
