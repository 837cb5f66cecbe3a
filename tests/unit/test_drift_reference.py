"""References: building, outputs layout, capture, atomic persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.drift.capture import ReferenceCapture
from turnout.drift.columns import CATEGORICAL, NUMERIC
from turnout.drift.layout import OutputLayout
from turnout.drift.reference import Reference


def _training(rng: np.random.Generator, rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(rows, 4))
    X[:, 3] = rng.integers(0, 3, size=rows)  # categorical code
    logits = X[:, :3] @ rng.normal(size=(3, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return X, probs


def test_from_arrays_keeps_bins_and_counts_only() -> None:
    rng = np.random.default_rng(0)
    X, probs = _training(rng, 50_000)
    ref = Reference.from_arrays(
        X, feature_names=["a", "b", "c", "kind"], categorical=["kind"], outputs=probs, output_prefix="probs"
    )
    assert ref.n_rows == 50_000
    assert ref.feature_names == ["a", "b", "c", "kind"]
    assert [s.kind for s in ref.features.binning.specs] == [NUMERIC, NUMERIC, NUMERIC, CATEGORICAL]
    assert ref.output_names == ["probs[0]", "probs[1]", "probs[2]", "probs.argmax"]
    assert ref.outputs is not None and ref.outputs.binning.specs[-1].kind == CATEGORICAL
    assert int(ref.outputs.column_counts(3).sum()) == 50_000
    assert ref.nbytes < 5_000  # far less than 50,000 rows x 4 floats


def test_output_layouts() -> None:
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [np.nan, 0.5]])
    layout = OutputLayout.infer(probs)
    assert layout.argmax and layout.names == ("output[0]", "output[1]", "output.argmax")
    expanded = layout.expand(probs)
    assert expanded[:2, 2].tolist() == [1.0, 0.0] and np.isnan(expanded[2, 2])
    labels = OutputLayout.infer(np.array([0, 2, 1]), prefix="label")
    assert not labels.argmax and labels.categorical == (True,) and labels.names == ("label[0]",)
    regression = OutputLayout.infer(np.array([[1.5], [2.5]]))
    assert regression.categorical == (False,)
    with pytest.raises(ValueError):
        layout.expand(np.zeros((2, 3)))


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(1)
    X, probs = _training(rng)
    ref = Reference.from_arrays(
        X, categorical=[False, False, False, True], outputs=probs, metadata={"model": "m"}
    )
    path = ref.save(tmp_path / "state" / "reference.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["reference.npz"]
    back = Reference.load(path)
    assert back.features == ref.features
    assert back.outputs == ref.outputs
    assert back.output_layout == ref.output_layout
    assert back.metadata["model"] == "m"
    with np.load(path, allow_pickle=False) as data:  # nothing pickled, no rows stored
        assert all(data[k].ndim <= 1 for k in data.files)
        assert "X" not in data.files


def test_save_replaces_atomically(tmp_path) -> None:
    rng = np.random.default_rng(2)
    first = Reference.from_arrays(rng.normal(size=(100, 2)))
    second = Reference.from_arrays(rng.normal(size=(300, 2)))
    path = tmp_path / "reference.npz"
    first.save(path)
    second.save(path)
    assert Reference.load(path).n_rows == 300
    assert [p.name for p in tmp_path.iterdir()] == ["reference.npz"]


def test_shipped_training_file(tmp_path) -> None:
    rng = np.random.default_rng(3)
    X, probs = _training(rng, 500)
    path = tmp_path / "reference.npz"
    np.savez(
        path,
        X=X,
        feature_names=np.array(["a", "b", "c", "kind"]),
        categorical=np.array([False, False, False, True]),
        outputs=probs,
    )
    ref = Reference.from_npz(path)
    assert ref.feature_names == ["a", "b", "c", "kind"]
    assert set(ref.features.binning.specs[3].categories) == {"0", "1", "2"}
    assert ref.output_names[-1] == "output.argmax"
    assert Reference.load(path).features == ref.features  # load() accepts training files too


def test_string_features_are_categorical(tmp_path) -> None:
    X = np.array([["red", "1.5"], ["blue", "2.5"], ["red", "0.5"]])
    ref = Reference.from_arrays(X, categorical=[True, False])
    assert ref.features.binning.specs[0].categories == ("red", "blue")
    assert ref.features.binning.specs[1].kind == NUMERIC
    ref.save(tmp_path / "r.npz")
    assert Reference.load(tmp_path / "r.npz").features == ref.features


def test_capture_then_freeze() -> None:
    rng = np.random.default_rng(4)
    capture = ReferenceCapture(1000, feature_names=["a", "b"])
    assert capture.add(rng.normal(size=(600, 2)), rng.random((600, 3))) == 600
    assert not capture.full
    assert capture.add(rng.normal(size=(600, 2)), rng.random((600, 3))) == 400
    assert capture.full and capture.add(rng.normal(size=(5, 2))) == 0
    ref = capture.freeze({"model": "m"})
    assert ref.n_rows == 1000 and ref.metadata["source"] == "capture"
    assert ref.outputs is not None and ref.output_names[-1] == "output.argmax"
    assert capture.rows == 0


def test_capture_drops_outputs_if_a_batch_lacks_them() -> None:
    capture = ReferenceCapture(10)
    capture.add(np.zeros((3, 2)), np.zeros((3, 2)))
    capture.add(np.ones((3, 2)))
    ref = capture.freeze()
    assert ref.outputs is None and ref.n_rows == 6
    with pytest.raises(ValueError):
        capture.freeze()


def test_metadata_is_json(tmp_path) -> None:
    ref = Reference.from_arrays(np.arange(20.0).reshape(10, 2), metadata={"version": "3"})
    ref.save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz", allow_pickle=False) as data:
        assert json.loads(str(data["metadata_json"]))["version"] == "3"


def test_wide_tensors_keep_every_kth_column() -> None:
    from turnout.drift.layout import column_step
    from turnout.drift.reference import thin

    assert column_step(256, 256) == 1 and column_step(257, 256) == 2 and column_step(262_144, 256) == 1024
    assert column_step(10**6, None) == 1
    x = np.arange(3 * 1000, dtype=np.float32).reshape(3, 1000)
    names = np.array([f"x{i}" for i in range(1000)])
    arrays = thin({"X": x, "feature_names": names, "outputs": np.ones((3, 4))}, 250)
    assert arrays["X"].shape == (3, 250) and list(arrays["X"][0, :3]) == [0, 4, 8]
    assert list(arrays["feature_names"][:3]) == ["x0", "x4", "x8"]
    assert arrays["outputs"].shape == (3, 4)  # narrow: untouched


def test_a_shipped_reference_is_thinned_as_the_request_path_is(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(200, 600)).astype(np.float32)
    np.savez(tmp_path / "reference.npz", X=x)
    ref = Reference.from_npz(tmp_path / "reference.npz", max_features=200)
    assert len(ref.feature_names) == 200  # every 3rd of 600
