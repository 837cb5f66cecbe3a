"""JSON-able per-column entries of a drift report."""

from __future__ import annotations

from typing import Any

from turnout.drift.evaluation import ColumnResult, result_dict
from turnout.drift.histogram import HistogramSet


def columns_report(
    ref: HistogramSet,
    cur: HistogramSet | None,
    results: list[ColumnResult] | None,
    statuses: list[str] | None,
    histograms: bool,
) -> list[dict[str, Any]]:
    """One entry a column of ``ref``: its test results and status (or an untested placeholder),
    with the reference and current histograms when ``histograms``."""
    entries: list[dict[str, Any]] = []
    for j, name in enumerate(ref.names):
        if results is not None and statuses is not None:
            entry = result_dict(results[j])
            entry["status"] = statuses[j]
        else:
            entry = {
                "name": name,
                "kind": ref.binning.specs[j].kind,
                "test": "none",
                "rows": 0,
                "score": None,
                "statistic": None,
                "p_value": None,
                "p_adjusted": None,
                "psi": None,
                "js": None,
                "status": "collecting" if statuses is None else statuses[j],
            }
        if histograms:
            entry["reference"] = ref.histogram_dict(j)
            entry["current"] = cur.histogram_dict(j) if cur is not None else None
        entries.append(entry)
    return entries


def histogram_list(hist: HistogramSet) -> list[dict[str, Any]]:
    """Every column's histogram dict."""
    return [hist.histogram_dict(j) for j in range(hist.binning.n_columns)]
