"""Drift across a fleet: a replica's mergeable counts, their exact merge, and the report on them.

Every replica of a model version that shares the same reference (shipped ``reference.npz``, or
one persisted in a shared state directory) bins its rows into the same bins, so the integer
counts of their windows add up to the counts of all rows. :func:`window_counts` is what a replica
exposes (``GET /v2/models/{m}/versions/{v}/drift/counts``), :func:`merge_counts` adds them, and
:func:`counts_report` tests one set of counts against the reference; the report on the merge of
several replicas' counts equals the report on one replica that saw all their rows, exactly.

All three are pure functions of JSON-able dicts. The report tests one window (like the sliding
view): a column's status is its test's verdict on these counts alone, without the streak of
``confirm_windows`` that the live detector keeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from turnout.drift.config import DriftConfig
from turnout.drift.evaluation import evaluate_window
from turnout.drift.histogram import HistogramSet
from turnout.drift.reference import Reference
from turnout.drift.report import columns_report, histogram_list
from turnout.drift.status import status_of, worst
from turnout.drift.windows import Window

FORMAT = "turnout.drift.counts/1"


class NotMergeable(ValueError):
    """Counts of different references or test settings: adding them would mean nothing."""


def reference_id(reference: Reference) -> str:
    """A digest of the reference's bins and counts: replicas with equal ids bin rows alike."""
    h = hashlib.sha256()
    for key, array in sorted(reference.to_arrays().items()):
        if key == "metadata_json":
            continue  # who captured it and when does not change the bins
        a = np.ascontiguousarray(array)
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return h.hexdigest()


def window_counts(reference: Reference | None, window: Window | None, config: DriftConfig) -> dict[str, Any]:
    """What a replica exposes for merging: the reference (identity and histograms), the test
    settings, and the integer counts of the window being filled."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "test": {
            "alpha": config.alpha,
            "correction": config.correction,
            "min_js": config.min_js,
            "min_psi": config.min_psi,
        },
    }
    if reference is None or window is None:
        return {**out, "reference": None, "window": {"rows": 0, "features": [], "outputs": []}}
    out["reference"] = {
        "id": reference_id(reference),
        "rows": reference.n_rows,
        "features": histogram_list(reference.features),
        "outputs": histogram_list(reference.outputs) if reference.outputs is not None else [],
    }
    out["window"] = {
        "rows": window.rows,
        "features": histogram_list(window.features),
        "outputs": histogram_list(window.outputs) if window.outputs is not None else [],
    }
    return out


def _hist(columns: Sequence[Mapping[str, Any]], like: HistogramSet | None = None) -> HistogramSet | None:
    if not columns:
        return None
    return HistogramSet.from_dict({"columns": list(columns)}, like.binning if like is not None else None)


def merge_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts of all ``parts`` added up (same reference and test settings, else
    :class:`NotMergeable`). The result has the same shape, so merges compose."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for p in parts:
        if p.get("format") != FORMAT:
            raise NotMergeable(f"unknown counts format {p.get('format')!r}")
        if p.get("reference") is None:
            raise NotMergeable("a replica has no reference yet (still capturing)")
        if p["reference"]["id"] != first["reference"]["id"]:
            raise NotMergeable(
                "replicas have different references: share reference.npz or the state directory"
            )
        if p["test"] != first["test"]:
            raise NotMergeable(f"replicas test differently: {p['test']} vs {first['test']}")
    ref_f = _hist(first["reference"]["features"])
    ref_o = _hist(first["reference"]["outputs"])
    features = _hist(first["window"]["features"], ref_f)
    outputs = _hist(first["window"]["outputs"], ref_o)
    for p in parts[1:]:
        f = _hist(p["window"]["features"], ref_f)
        o = _hist(p["window"]["outputs"], ref_o)
        if features is not None and f is not None:
            features.merge(f)
        if outputs is not None and o is not None:
            outputs.merge(o)
    return {
        "format": FORMAT,
        "test": dict(first["test"]),
        "reference": first["reference"],
        "window": {
            "rows": sum(int(p["window"]["rows"]) for p in parts),
            "features": histogram_list(features) if features is not None else [],
            "outputs": histogram_list(outputs) if outputs is not None else [],
        },
    }


def counts_report(counts: Mapping[str, Any], histograms: bool = False) -> dict[str, Any]:
    """The drift report on ``counts`` (one replica's or a merge): every feature and output column
    tested against the reference, Benjamini-Hochberg (or Bonferroni) across them all."""
    reference = counts.get("reference")
    window = counts["window"]
    if reference is None:
        return {
            "status": "collecting",
            "window": {"rows": 0, "reference_ready": False},
            "features": [],
            "outputs": [],
        }
    test = counts["test"]
    ref_f = _hist(reference["features"])
    assert ref_f is not None
    ref_o = _hist(reference["outputs"])
    cur_f = _hist(window["features"], ref_f)
    cur_o = _hist(window["outputs"], ref_o)
    assert cur_f is not None
    with_outputs = ref_o is not None and cur_o is not None and cur_o.rows > 0
    evaluation = evaluate_window(
        ref_f,
        cur_f,
        ref_o if with_outputs else None,
        cur_o if with_outputs else None,
        alpha=test["alpha"],
        correction=test["correction"],
        min_js=test["min_js"],
        min_psi=test["min_psi"],
    )
    tested = int(window["rows"]) > 0
    f_status = [status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.features] if tested else None
    out: dict[str, Any] = {
        "window": {
            "rows": int(window["rows"]),
            "reference_ready": True,
            "reference_id": reference["id"],
            "reference_rows": int(reference["rows"]),
            "tests": evaluation.n_tests,
            **test,
        },
        "features": columns_report(
            ref_f, cur_f, evaluation.features if tested else None, f_status, histograms
        ),
        "outputs": [],
    }
    o_status: list[str] = []
    if ref_o is not None:
        if with_outputs:
            o_status = [status_of(c, 1 if c.alarm else 0, 1) for c in evaluation.outputs]
            out["outputs"] = columns_report(ref_o, cur_o, evaluation.outputs, o_status, histograms)
        else:
            out["outputs"] = columns_report(ref_o, cur_o, None, None, histograms)
    out["status"] = worst((f_status or []) + o_status)
    return {"status": out.pop("status"), **out}
