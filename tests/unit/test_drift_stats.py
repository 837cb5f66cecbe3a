"""Binned two-sample statistics and multiple-testing corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from turnout.drift.stats import (
    adjust_pvalues,
    bridge_crossing_probability,
    chi2_homogeneity,
    fisher_missing,
    js_distance,
    kolmogorov_pvalue,
    ks_binned,
    psi,
)


def test_single_point_bridge_is_a_normal_tail() -> None:
    for t, lam in ((0.5, 1.5), (0.1, 0.6), (0.9, 0.9)):
        expected = 2 * special.ndtr(-lam / math.sqrt(t * (1 - t)))
        assert bridge_crossing_probability([t], lam) == pytest.approx(expected, rel=1e-9)


def test_bridge_on_a_grid_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    k = 20
    times = np.arange(1, k + 1) / (k + 1)
    steps = rng.normal(scale=math.sqrt(1 / (k + 1)), size=(200_000, k + 1))
    walk = np.cumsum(steps, axis=1)
    bridge = walk[:, :k] - times * walk[:, [k]]
    peak = np.abs(bridge).max(axis=1)
    for lam in (1.2, 1.5):
        mc = float((peak >= lam).mean())
        se = math.sqrt(mc * (1 - mc) / peak.size)
        assert abs(bridge_crossing_probability(times, lam) - mc) < 4 * se + 1e-4
    # A coarse grid crosses less often than the continuum (Kolmogorov's distribution).
    assert bridge_crossing_probability(times, 1.5) < 0.6 * special.kolmogorov(1.5)


def test_fine_grid_approaches_kolmogorov() -> None:
    times = np.linspace(0, 1, 502)[1:-1]
    for lam in (1.0, 1.4):
        p = bridge_crossing_probability(times, lam, grid=300)
        assert 0.85 * special.kolmogorov(lam) < p <= 1.02 * special.kolmogorov(lam)


def test_binned_ks_equals_scipy_when_every_value_has_its_bin() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 8, size=300)
    b = rng.integers(1, 9, size=200)
    values = np.arange(0, 9)
    ra = np.array([(a == v).sum() for v in values])
    rb = np.array([(b == v).sum() for v in values])
    d, _ = ks_binned(ra, rb)
    assert d[0] == pytest.approx(sps.ks_2samp(a, b).statistic)


def test_binned_ks_never_exceeds_the_full_statistic() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=400), rng.normal(0.2, 1.1, size=300)
    edges = np.quantile(a, np.linspace(0, 1, 11))
    ra, _ = np.histogram(a, np.r_[-np.inf, edges, np.inf])
    rb, _ = np.histogram(b, np.r_[-np.inf, edges, np.inf])
    d, p = ks_binned(ra, rb)
    full = sps.ks_2samp(a, b)
    assert d[0] <= full.statistic + 1e-12
    assert 0 <= p[0] <= 1


def test_binned_ks_pvalues_are_calibrated_under_the_null() -> None:
    """Fraction of p <= level over many null pairs stays at or below the level (binomial slack)."""
    rng = np.random.default_rng(3)
    edges = np.r_[-np.inf, np.quantile(rng.normal(size=2000), np.linspace(0, 1, 21)), np.inf]
    trials = 1500
    ref = np.stack([np.histogram(rng.normal(size=400), edges)[0] for _ in range(trials)])
    cur = np.stack([np.histogram(rng.normal(size=150), edges)[0] for _ in range(trials)])
    _, p = ks_binned(ref, cur, refine_below=0.05)
    for level in (0.05, 0.01):
        limit = sps.binom.ppf(0.999, trials, level) / trials
        assert (p <= level).mean() <= limit
    # ... and the refinement matters: the continuum p-values are far more conservative.
    _, p_cont = ks_binned(ref, cur, refine_below=None)
    assert (p <= 0.05).mean() > 1.3 * (p_cont <= 0.05).mean()


def test_small_skewed_windows_are_not_anticonservative() -> None:
    """A rare value in a small window: the exact per-edge floor keeps the p-value honest."""
    ref = np.array([0, 950, 50, 0])  # under, {0}, {rare}, over
    cur = np.array([0, 15, 5, 0])  # 5 rare values in 20 rows
    _, p = ks_binned(ref, cur)
    exact = sps.hypergeom.sf(4, 1020, 55, 20)  # P(at least 5 rare rows in the window)
    assert p[0] >= exact


def test_kolmogorov_pvalue_is_monotone() -> None:
    p = kolmogorov_pvalue(np.array([0.01, 0.05, 0.1, 0.2]), 400)
    assert np.all(np.diff(p) < 0)


def test_chi2_homogeneity() -> None:
    ref = np.array([5000, 3000, 2000, 0, 0])
    same = np.array([250, 150, 100, 0, 0])
    assert chi2_homogeneity(ref, same)[1] > 0.5
    one_unseen = np.array([250, 150, 99, 1, 0])  # a single never-seen row must not alarm
    assert chi2_homogeneity(ref, one_unseen)[1] > 0.01
    new_category = np.array([200, 120, 80, 100, 0])
    assert chi2_homogeneity(ref, new_category)[1] < 1e-10
    assert chi2_homogeneity(np.zeros(4), same[:4])[1] == 1.0


def test_fisher_missing() -> None:
    assert fisher_missing(0, 1000, 0, 500) == 1.0
    assert fisher_missing(10, 1000, 5, 500) > 0.5
    assert fisher_missing(0, 1000, 50, 500) < 1e-10


def test_js_distance_and_psi() -> None:
    p = np.array([10, 20, 30, 40])
    assert js_distance(p, p * 3)[0] == pytest.approx(0.0, abs=1e-12)
    assert js_distance([1, 0], [0, 1])[0] == pytest.approx(1.0)
    assert psi(p, p)[0] == pytest.approx(0.0, abs=1e-12)
    a, b = np.array([50, 50]), np.array([80, 20])
    pa, pb = (a + 0.5) / 101, (b + 0.5) / 101
    assert psi(a, b)[0] == pytest.approx(float(np.sum((pb - pa) * np.log(pb / pa))))
    assert js_distance(np.zeros(3), p[:3])[0] == 0.0


def test_adjust_pvalues() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    assert adjust_pvalues(p, "bonferroni").tolist() == pytest.approx([0.04, 0.16, 0.12, 1.0])
    # BH: sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.0533, 0.0533, 0.5
    assert adjust_pvalues(p, "bh").tolist() == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert adjust_pvalues([], "bh").size == 0
    with pytest.raises(ValueError):
        adjust_pvalues(p, "holm")  # type: ignore[arg-type]
