"""DriftDetector: windows, statuses, false alarms, detection, capture, merging, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from turnout.drift import DriftConfig, DriftDetector, Reference


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reference(rng: np.random.Generator, rows: int = 10_000, features: int = 6) -> Reference:
    return Reference.from_arrays(
        rng.normal(size=(rows, features)), feature_names=[f"f{i}" for i in range(features)]
    )


def test_no_shift_false_alarm_rate_is_at_most_alpha() -> None:
    rng = np.random.default_rng(0)
    features, window, windows = 8, 200, 800
    reference = Reference.from_arrays(rng.normal(size=(5000, features)))
    detector = DriftDetector(reference, DriftConfig(window_rows=window, sliding_windows=0))
    alarms = 0
    for _ in range(windows):
        detector.observe(rng.normal(size=(window, features)))
        alarms += detector.status == "drift"
    assert detector.windows_completed == windows
    # alpha = 1 %; allow binomial noise (99.9 % quantile of Binomial(800, 0.01) is 18).
    assert alarms <= sps.binom.ppf(0.999, windows, 0.01)


def test_clear_mean_shift_is_detected_on_that_feature_only() -> None:
    rng = np.random.default_rng(1)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=500))
    shifted = rng.normal(size=(500, 6))
    shifted[:, 2] += 0.5
    detector.observe(shifted)
    report = detector.report()
    assert report["status"] == "drift"
    statuses = {f["name"]: f["status"] for f in report["features"]}
    assert statuses["f2"] == "drift"
    assert sum(s == "drift" for s in statuses.values()) == 1
    f2 = next(f for f in report["features"] if f["name"] == "f2")
    assert f2["p_value"] < 1e-8 and f2["js"] > 0.1 and f2["psi"] > 0.1 and f2["score"] > 0.15


def test_missing_values_are_detected() -> None:
    rng = np.random.default_rng(2)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=500))
    batch = rng.normal(size=(500, 6))
    batch[rng.random(500) < 0.1, 4] = np.nan
    detector.observe(batch)
    f4 = detector.report()["features"][4]
    assert f4["status"] == "drift" and f4["test"] == "ks+missing"
    assert f4["current"]["counts"][-1] == int(np.isnan(batch[:, 4]).sum())


def test_unseen_category_is_detected_but_one_stray_value_is_not() -> None:
    rng = np.random.default_rng(3)
    colours = np.array(["red", "green", "blue"], dtype=object)
    X = np.empty((10_000, 2), dtype=object)
    X[:, 0] = rng.normal(size=10_000)
    X[:, 1] = rng.choice(colours, size=10_000, p=[0.5, 0.3, 0.2])
    reference = Reference.from_arrays(X, feature_names=["x", "colour"], categorical=[False, True])
    detector = DriftDetector(reference, DriftConfig(window_rows=1000))

    def window(p_new: float) -> np.ndarray:
        W = np.empty((1000, 2), dtype=object)
        W[:, 0] = rng.normal(size=1000)
        W[:, 1] = rng.choice(colours, size=1000, p=[0.5, 0.3, 0.2])
        W[rng.random(1000) < p_new, 1] = "purple"
        return W

    stray = window(0.0)
    stray[0, 1] = "purple"
    detector.observe(stray)
    assert detector.report()["features"][1]["status"] == "ok"
    detector.observe(window(0.15))
    colour = detector.report()["features"][1]
    assert colour["status"] == "drift" and colour["test"] == "chi2"
    assert colour["current"]["categories"] == ["red", "green", "blue"]
    assert colour["current"]["counts"][3] > 100  # the "other" (unseen) bin


def test_output_drift_is_a_first_class_signal() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(10_000, 3))

    def model(inputs: np.ndarray, bias: float = 0.0) -> np.ndarray:
        logits = np.column_stack((inputs[:, 0], -inputs[:, 0], np.full(len(inputs), bias)))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    reference = Reference.from_arrays(X, outputs=model(X), output_prefix="probs")
    detector = DriftDetector(reference, DriftConfig(window_rows=500))
    batch = rng.normal(size=(500, 3))
    detector.observe(batch, model(batch))
    assert detector.report()["status"] == "ok"
    detector.observe(batch, model(batch, bias=1.5))  # same inputs, the model now favours class 2
    report = detector.report()
    assert report["status"] == "drift"
    assert all(f["status"] == "ok" for f in report["features"])
    outputs = {o["name"]: o for o in report["outputs"]}
    assert outputs["probs.argmax"]["status"] == "drift" and outputs["probs.argmax"]["test"] == "chi2"
    assert outputs["probs[2]"]["status"] == "drift"
    assert report["window"]["tests"] == 3 + 4  # features and outputs form one family


def test_effect_floor_turns_a_trivial_but_significant_shift_into_a_warning() -> None:
    rng = np.random.default_rng(5)
    reference = Reference.from_arrays(rng.normal(size=(200_000, 1)))
    detector = DriftDetector(reference, DriftConfig(window_rows=400_000, min_js=0.05))
    detector.observe(rng.normal(0.03, 1.0, size=(400_000, 1)))
    feature = detector.report()["features"][0]
    assert feature["p_value"] < 1e-6  # statistically significant...
    assert feature["js"] < 0.05  # ...but tiny
    assert feature["status"] == "warning" and detector.status == "warning"


def test_confirm_windows_escalates_from_warning_to_drift() -> None:
    rng = np.random.default_rng(6)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=300, confirm_windows=2))
    for expected in ("warning", "drift", "drift"):
        batch = rng.normal(size=(300, 6))
        batch[:, 0] += 1.0
        detector.observe(batch)
        assert detector.status == expected
    detector.observe(rng.normal(size=(300, 6)))
    assert detector.status == "ok"


def test_count_windows_split_batches_exactly() -> None:
    rng = np.random.default_rng(7)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=500))
    detector.observe(rng.normal(size=(1250, 6)))
    assert detector.windows_completed == 2
    assert detector.current_histograms()["rows"] == 250
    report = detector.report()
    assert report["window"]["rows"] == 500 and report["window"]["index"] == 2
    assert report["features"][0]["current"]["total"] == 500


def test_time_windows_with_an_injected_clock() -> None:
    rng = np.random.default_rng(8)
    clock = FakeClock()
    config = DriftConfig(window_rows=None, window_seconds=60.0, min_window_rows=50)
    detector = DriftDetector(_reference(rng), config, clock=clock)
    detector.observe(rng.normal(size=(30, 6)))
    clock.now += 61
    assert not detector.tick()  # 30 rows < min_window_rows: the window is extended
    detector.observe(rng.normal(size=(40, 6)))
    assert detector.windows_completed == 1  # closed as soon as it had enough rows
    assert detector.report()["window"]["rows"] == 70
    detector.observe(rng.normal(size=(100, 6)))
    clock.now += 59
    assert not detector.tick()
    clock.now += 2
    assert detector.tick() and detector.windows_completed == 2


def test_capture_then_freeze_and_persist(tmp_path) -> None:
    rng = np.random.default_rng(9)
    frozen: list[Reference] = []

    def persist(reference: Reference) -> None:
        frozen.append(reference)
        reference.save(tmp_path / "reference.npz")

    config = DriftConfig(window_rows=200, reference_rows=1000, feature_names=("a", "b", "c"))
    detector = DriftDetector(None, config, on_reference_frozen=persist)
    detector.observe(rng.normal(size=(700, 3)))
    report = detector.report()
    assert report["status"] == "collecting" and not report["window"]["reference_ready"]
    assert report["window"]["capture_rows"] == 700
    detector.observe(rng.normal(size=(450, 3)))
    assert detector.ready and len(frozen) == 1
    assert frozen[0].n_rows == 1000 and frozen[0].feature_names == ["a", "b", "c"]
    assert detector.current_histograms()["rows"] == 150  # the rest of the batch went to the first window
    assert detector.report()["status"] == "collecting"  # no window closed yet
    detector.observe(rng.normal(size=(50, 3)))
    assert detector.report()["status"] == "ok"
    restored = DriftDetector(Reference.load(tmp_path / "reference.npz"), config)
    assert restored.reference is not None and restored.reference.features == frozen[0].features


def test_merge_from_adds_other_process_counts_exactly() -> None:
    rng = np.random.default_rng(10)
    reference = _reference(rng)
    config = DriftConfig(window_rows=1000)
    a, b, both = (DriftDetector(reference, config) for _ in range(3))
    x1, x2 = rng.normal(size=(300, 6)), rng.normal(size=(400, 6))
    x2[:5] = np.nan
    a.observe(x1)
    b.observe(x2)
    both.observe(np.concatenate([x1, x2]))
    a.merge_from(json.loads(json.dumps(b.take_current_histograms())))
    assert a.current_histograms() == both.current_histograms()
    assert b.current_histograms()["rows"] == 0
    extra = rng.normal(size=(300, 6))
    b.observe(extra)
    a.merge_from(b.current_histograms())
    assert a.windows_completed == 1


def test_sliding_view_merges_the_last_windows() -> None:
    rng = np.random.default_rng(11)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=100, sliding_windows=3))
    assert detector.report("sliding")["status"] == "collecting"
    for _ in range(5):
        detector.observe(rng.normal(size=(100, 6)))
    sliding = detector.report("sliding")
    assert sliding["window"]["rows"] == 300 and sliding["window"]["view"] == "sliding"
    assert sliding["features"][0]["current"]["total"] == 300


def test_report_is_plain_json() -> None:
    rng = np.random.default_rng(12)
    X = rng.normal(size=(2000, 3))
    reference = Reference.from_arrays(X, outputs=rng.random((2000, 2)))
    detector = DriftDetector(reference, DriftConfig(window_rows=100))
    before = detector.report()
    assert before["status"] == "collecting" and before["features"][0]["p_value"] is None
    detector.observe(rng.normal(size=(100, 3)))  # no outputs: outputs stay "collecting"
    report = detector.report()
    text = json.dumps(report, allow_nan=False)
    assert set(report) == {"status", "window", "features", "outputs"}
    for entry in report["features"]:
        assert {"name", "status", "score", "p_value", "psi", "js", "reference", "current"} <= set(entry)
        assert all(type(entry[k]) is float for k in ("score", "p_value", "psi", "js"))
    assert all(o["status"] == "collecting" for o in report["outputs"])
    assert report["window"]["tests"] == 3
    assert "reference" not in json.loads(json.dumps(detector.report(histograms=False)))["features"][0]
    assert len(text) > 0


def test_inputs_are_validated() -> None:
    rng = np.random.default_rng(13)
    detector = DriftDetector(_reference(rng), DriftConfig(window_rows=100))
    with pytest.raises(ValueError):
        detector.observe(np.zeros((10, 5)))
    with pytest.raises(ValueError):
        detector.observe(np.zeros((10, 6)), np.zeros((9, 2)))
    with pytest.raises(ValueError):
        DriftConfig(window_rows=None, window_seconds=None)
    with pytest.raises(ValueError):
        DriftConfig(window_rows=10, min_window_rows=20)
