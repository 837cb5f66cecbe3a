"""drift/fleet.py: replicas' counts merge exactly; the report on the merge is the report on
all rows; counts of different references do not merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from turnout.drift import DriftConfig, DriftDetector, Reference
from turnout.drift.fleet import NotMergeable, counts_report, merge_counts, window_counts

CONFIG = DriftConfig(window_rows=None, window_seconds=3600.0)


def _reference(seed: int = 0) -> Reference:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, 4))
    logits = x[:, :3]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Reference.from_arrays(x, feature_names=["a", "b", "c", "d"], outputs=probs)


def _outputs(x: np.ndarray) -> np.ndarray:
    e = np.exp(x[:, :3])
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_report_of_merged_counts_equals_report_of_all_rows(shift: float) -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(1500, 4))
    rows[:, 1] += shift
    rows[::7, 2] = np.nan  # NaN bins merge too
    slices = [rows[:200], rows[200:900], rows[900:]]
    replicas = [DriftDetector(_reference(), CONFIG) for _ in slices]
    for detector, part in zip(replicas, slices, strict=True):
        for chunk in np.array_split(part, 3):  # several batches per replica
            detector.observe(chunk, _outputs(np.nan_to_num(chunk)))
    single = DriftDetector(_reference(), CONFIG)
    single.observe(rows, _outputs(np.nan_to_num(rows)))

    # through JSON, as the replicas send them
    parts = [json.loads(json.dumps(d.mergeable_counts())) for d in replicas]
    merged = merge_counts(parts)
    assert merged == single.mergeable_counts()
    report = counts_report(merged, histograms=True)
    assert report == counts_report(single.mergeable_counts(), histograms=True)
    assert report["window"]["rows"] == 1500
    assert merge_counts([merge_counts(parts[:2]), parts[2]]) == merged  # merges compose
    statuses = {f["name"]: f["status"] for f in report["features"]}
    assert statuses["b"] == ("drift" if shift else "ok")
    assert statuses["c"] == "drift"  # the NaN rate, absent from the reference


def test_counts_of_different_references_or_settings_do_not_merge() -> None:
    a = DriftDetector(_reference(0), CONFIG)
    b = DriftDetector(_reference(1), CONFIG)
    x = np.zeros((5, 4))
    a.observe(x, _outputs(x))
    b.observe(x, _outputs(x))
    with pytest.raises(NotMergeable, match="different references"):
        merge_counts([a.mergeable_counts(), b.mergeable_counts()])
    c = DriftDetector(_reference(0), DriftConfig(window_rows=None, window_seconds=3600.0, alpha=0.05))
    with pytest.raises(NotMergeable, match="test differently"):
        merge_counts([a.mergeable_counts(), c.mergeable_counts()])


def test_no_reference_yet_is_collecting_and_not_mergeable() -> None:
    capturing = DriftDetector(None, CONFIG)
    counts = capturing.mergeable_counts()
    assert counts == window_counts(None, None, CONFIG)
    assert counts_report(counts)["status"] == "collecting"
    with pytest.raises(NotMergeable):
        merge_counts([counts])


def test_empty_window_is_collecting() -> None:
    report = counts_report(DriftDetector(_reference(), CONFIG).mergeable_counts())
    assert report["status"] == "collecting"
    assert report["window"]["rows"] == 0


def test_fleet_report_fetches_each_replica_and_reports_on_the_merge() -> None:
    from turnout.server.fleet_cli import counts_url, fleet_report

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(400, 4))
    replicas = {f"http://r{i}:8000": DriftDetector(_reference(), CONFIG) for i in range(2)}
    for d, part in zip(replicas.values(), (rows[:100], rows[100:]), strict=True):
        d.observe(part, _outputs(part))
    single = DriftDetector(_reference(), CONFIG)
    single.observe(rows, _outputs(rows))
    asked: list[tuple[str, str | None]] = []

    def fetch(url: str, token: str | None) -> dict:
        asked.append((url, token))
        base = url.split("/v2/")[0]
        return {"model_name": "m", "model_version": "1", **replicas[base].mergeable_counts()}

    report = fleet_report(list(replicas), "m", "1", "tok", fetch)
    assert asked == [(f"{u}/v2/models/m/versions/1/drift/counts", "tok") for u in replicas]
    assert report.pop("replicas") == [
        {"url": u, "rows": n} for u, n in zip(replicas, (100, 300), strict=True)
    ]
    assert report == {"model_name": "m", "model_version": "1", **counts_report(single.mergeable_counts())}
    assert counts_url("http://h:1/v2/models/a/versions/2/drift/counts", "x", "y").endswith(
        "/a/versions/2/drift/counts"
    )
