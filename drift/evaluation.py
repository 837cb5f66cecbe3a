"""Testing one window of histograms against a reference.

Per column:

* numeric: binned two-sample KS on the non-missing bins (value order: underflow, regular bins,
  overflow). If either sample contains NaN, Fisher's exact test on the missing-value rate is run too
  and the column's p-value is ``min(1, 2 * min(p_ks, p_missing))`` (Bonferroni over the two). When
  neither sample has a NaN the missing-value test is skipped; that choice depends only on the total
  NaN count, on which both tests are conditionally valid, so the combined p-value stays valid.
* categorical: chi-square homogeneity test over ``[categories..., other, missing]``.

Then, over every tested column of the model - features *and* outputs together - p-values are
adjusted (Benjamini-Hochberg by default, or Bonferroni) and a column is *significant* when its
adjusted p-value is ``<= alpha``. A significant column is a *drift* candidate only if its effect size
also clears the floor (JS distance ``>= min_js``, and PSI ``>= min_psi`` if set); otherwise it is a
*warning*. Under no drift, the probability that a window raises any alarm is ``<= alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from turnout.drift.columns import NUMERIC
from turnout.drift.histogram import HistogramSet
from turnout.drift.stats import (
    Correction,
    adjust_pvalues,
    chi2_homogeneity,
    fisher_missing,
    js_distance,
    ks_binned,
    psi,
)


@dataclass
class ColumnResult:
    """Test outcome of one column for one window."""

    name: str
    kind: str
    test: str  # "ks", "ks+missing", "chi2", or "none" (no data in the window)
    rows: int
    statistic: float = 0.0  # KS D, or chi-square statistic
    score: float = 0.0  # KS D, or Cramer's V: a distance in [0, 1]
    p_value: float | None = None  # raw (per-column) p-value
    p_adjusted: float | None = None  # after the multiple-testing correction
    js: float | None = None
    psi: float | None = None
    significant: bool = False
    large_effect: bool = False

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def alarm(self) -> bool:
        return self.significant and self.large_effect


@dataclass
class WindowEvaluation:
    features: list[ColumnResult] = field(default_factory=list)
    outputs: list[ColumnResult] = field(default_factory=list)
    rows: int = 0
    n_tests: int = 0

    @property
    def columns(self) -> list[ColumnResult]:
        return self.features + self.outputs

    @property
    def alarm(self) -> bool:
        """Some column is significant *and* above the effect floor."""
        return any(c.alarm for c in self.columns)

    @property
    def significant(self) -> bool:
        return any(c.significant for c in self.columns)


def _clean(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


def column_results(
    reference: HistogramSet,
    current: HistogramSet,
    alpha: float = 0.01,
    *,
    n_tests: int | None = None,
    exact_grid: bool = True,
) -> list[ColumnResult]:
    """Raw (unadjusted) test results for every column of one histogram group.

    KS p-values are refined to their exact-grid value only where that can change a decision (see
    :func:`drift.stats.ks_binned`): not above ``alpha`` (no multiple-testing threshold exceeds it) and
    not below ``alpha / n_tests`` (rejected anyway). ``exact_grid=False`` keeps every KS p-value at the
    conservative continuum value - an ablation.
    """
    if not reference.binning.same_as(current.binning):
        raise ValueError("reference and current histograms use different bins")
    binning = reference.binning
    totals = current.column_totals()
    results: list[ColumnResult | None] = [None] * binning.n_columns
    num = binning.numeric_columns
    if num.size:
        ordered, missing = binning.numeric_gather()
        ref_ext = np.append(reference.counts, 0)
        cur_ext = np.append(current.counts, 0)
        r_ord, c_ord = ref_ext[ordered], cur_ext[ordered]
        decided = alpha / n_tests if n_tests else 0.0
        d, p_ks = ks_binned(r_ord, c_ord, refine_below=alpha if exact_grid else None, decided_below=decided)
        r_nan, c_nan = reference.counts[missing], current.counts[missing]
        r_all = np.column_stack((r_ord, r_nan))
        c_all = np.column_stack((c_ord, c_nan))
        js = js_distance(r_all, c_all)
        ps = psi(r_all, c_all)
        r_tot, c_tot = r_ord.sum(axis=1) + r_nan, c_ord.sum(axis=1) + c_nan
        for row, j in enumerate(num.tolist()):
            spec = binning.specs[j]
            rows = int(totals[j])
            if rows == 0 or r_tot[row] == 0:
                results[j] = ColumnResult(spec.name, NUMERIC, "none", rows)
                continue
            p = float(p_ks[row])
            test = "ks"
            if r_nan[row] + c_nan[row] > 0:
                p_missing = fisher_missing(int(r_nan[row]), int(r_tot[row]), int(c_nan[row]), int(c_tot[row]))
                p = min(1.0, 2.0 * min(p, p_missing))
                test = "ks+missing"
            results[j] = ColumnResult(
                spec.name,
                NUMERIC,
                test,
                rows,
                statistic=_clean(d[row]),
                score=_clean(d[row]),
                p_value=p,
                js=_clean(js[row]),
                psi=_clean(ps[row]),
            )
    for j, spec in enumerate(binning.specs):
        if spec.kind == NUMERIC:
            continue
        rows = int(totals[j])
        ref_counts = reference.column_counts(j)
        if rows == 0 or int(ref_counts.sum()) == 0:
            results[j] = ColumnResult(spec.name, spec.kind, "none", rows)
            continue
        cur_counts = current.column_counts(j)
        stat, p, _ = chi2_homogeneity(ref_counts, cur_counts)
        n = float(ref_counts.sum() + cur_counts.sum())
        results[j] = ColumnResult(
            spec.name,
            spec.kind,
            "chi2",
            rows,
            statistic=_clean(stat),
            score=_clean(min(1.0, float(np.sqrt(stat / n)))),
            p_value=p,
            js=_clean(float(js_distance(ref_counts, cur_counts)[0])),
            psi=_clean(float(psi(ref_counts, cur_counts)[0])),
        )
    return [r for r in results if r is not None]


def evaluate_window(
    reference_features: HistogramSet,
    current_features: HistogramSet,
    reference_outputs: HistogramSet | None = None,
    current_outputs: HistogramSet | None = None,
    *,
    alpha: float = 0.01,
    correction: Correction = "bh",
    min_js: float = 0.0,
    min_psi: float | None = None,
    exact_grid: bool = True,
) -> WindowEvaluation:
    """Test every feature and output column of a window; one multiple-testing family per window."""
    with_outputs = reference_outputs is not None and current_outputs is not None
    n_tests = int(np.count_nonzero(current_features.column_totals()))
    if with_outputs:
        assert current_outputs is not None
        n_tests += int(np.count_nonzero(current_outputs.column_totals()))
    features = column_results(
        reference_features, current_features, alpha, n_tests=n_tests, exact_grid=exact_grid
    )
    outputs: list[ColumnResult] = []
    if with_outputs:
        assert reference_outputs is not None and current_outputs is not None
        outputs = column_results(
            reference_outputs, current_outputs, alpha, n_tests=n_tests, exact_grid=exact_grid
        )
    tested = [c for c in features + outputs if c.tested]
    if tested:
        raw: npt.NDArray[np.float64] = np.asarray([c.p_value for c in tested], dtype=np.float64)
        adjusted = adjust_pvalues(raw, correction)
        for column, p_adj in zip(tested, adjusted.tolist(), strict=True):
            column.p_adjusted = float(p_adj)
            column.significant = p_adj <= alpha
            js_ok = (column.js or 0.0) >= min_js
            psi_ok = min_psi is None or (column.psi or 0.0) >= min_psi
            column.large_effect = js_ok and psi_ok
    return WindowEvaluation(features, outputs, current_features.rows, len(tested))


def result_dict(column: ColumnResult) -> dict[str, Any]:
    """The statistics part of a column's report entry (JSON-able, plain floats / None)."""
    return {
        "name": column.name,
        "kind": column.kind,
        "test": column.test,
        "rows": column.rows,
        "score": column.score,
        "statistic": column.statistic,
        "p_value": column.p_value,
        "p_adjusted": column.p_adjusted,
        "psi": column.psi,
        "js": column.js,
    }
