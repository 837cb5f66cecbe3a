"""Fixed-edge histograms: edges, vectorised binning, exact merges, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.drift.binning import Binning
from turnout.drift.columns import CATEGORICAL, NUMERIC, ColumnSpec, SchemaMismatch, category_key
from turnout.drift.edges import BinningConfig, category_list, numeric_edges, specs_from_data
from turnout.drift.histogram import HistogramSet


def naive_numeric_bin(edges: tuple[float, ...], x: float) -> int:
    """Scalar restatement of the documented layout: under, regular..., over, NaN."""
    if math.isnan(x):
        return len(edges) + 1
    if x < edges[0]:
        return 0
    if x > edges[-1]:
        return len(edges)
    if x == edges[-1]:
        return len(edges) - 1
    for i in range(len(edges) - 1):
        if edges[i] <= x < edges[i + 1]:
            return i + 1
    raise AssertionError("unreachable")


def test_quantile_edges_span_the_reference() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    edges = numeric_edges(x, BinningConfig(max_bins=20))
    assert len(edges) == 21
    assert edges[0] == x.min() and edges[-1] == x.max()
    assert list(edges) == sorted(edges)


def test_small_reference_gets_fewer_bins() -> None:
    x = np.random.default_rng(0).normal(size=95)
    assert len(numeric_edges(x, BinningConfig(max_bins=20, min_rows_per_bin=10))) == 10


def test_discrete_column_gets_one_bin_per_value() -> None:
    x = np.array([0, 0, 0, 1, 1, 5, 5, 5, 5, 16] * 10, dtype=float)
    spec = ColumnSpec("pixel", NUMERIC, edges=numeric_edges(x))
    binning = Binning([spec])
    counts = binning.counts(x.reshape(-1, 1))
    # under, {0}, {1}, {5}, {16}, over, NaN
    assert counts.tolist() == [0, 30, 20, 40, 10, 0, 0]


def test_degenerate_columns() -> None:
    assert numeric_edges(np.full(10, 3.0)) == (3.0, 3.0)
    assert numeric_edges(np.full(10, np.nan)) == (0.0, 0.0)
    assert numeric_edges(np.array([1.0, np.inf, -np.inf, np.nan, 2.0])) == (1.0, 1.5, 2.0)
    binning = Binning([ColumnSpec("c", NUMERIC, edges=(3.0, 3.0))])
    counts = binning.counts(np.array([[2.0], [3.0], [3.0], [4.0], [np.nan]]))
    assert counts.tolist() == [1, 2, 1, 1]


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=12).map(sorted),
    values=st.lists(
        st.one_of(
            st.floats(-200, 200, allow_nan=False),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        ),
        min_size=0,
        max_size=40,
    ),
)
def test_vectorised_binning_matches_the_scalar_definition(edges: list[float], values: list[float]) -> None:
    values = values + edges  # exact edge hits are the interesting cases
    spec = ColumnSpec("x", NUMERIC, edges=tuple(edges))
    other = ColumnSpec("y", NUMERIC, edges=(-1.0, 0.0, 1.0))  # a second column with other edges
    binning = Binning([other, spec, ColumnSpec("z", NUMERIC, edges=(0.0, 0.5))])
    X = np.stack([np.asarray(values[::-1]), np.asarray(values), np.asarray(values)], axis=1).reshape(-1, 3)
    index = binning.bin_index(X)
    got = (index[:, 1] - binning.offsets[1]).tolist()
    assert got == [naive_numeric_bin(spec.edges, v) for v in values]
    assert (index[:, 0] - binning.offsets[0]).tolist() == [
        naive_numeric_bin(other.edges, v) for v in values[::-1]
    ]
    assert (index[:, 2] - binning.offsets[2]).tolist() == [naive_numeric_bin((0.0, 0.5), v) for v in values]


def test_multi_column_binning_uses_per_column_offsets() -> None:
    a = ColumnSpec("a", NUMERIC, edges=(0.0, 1.0))
    b = ColumnSpec("b", NUMERIC, edges=(0.0, 1.0, 2.0, 3.0))
    c = ColumnSpec("c", CATEGORICAL, categories=("x", "y"))
    binning = Binning([a, b, c])
    X = np.array([[0.5, 2.5, "y"], [5.0, np.nan, "zzz"], [-1.0, 0.0, None]], dtype=object)
    index = binning.bin_index(X)
    off = binning.offsets
    assert index[:, 0].tolist() == [off[0] + 1, off[0] + 2, off[0] + 0]
    assert index[:, 1].tolist() == [off[1] + 3, off[1] + 5, off[1] + 1]
    assert index[:, 2].tolist() == [off[2] + 1, off[2] + 2, off[2] + 3]


def test_category_keys_are_canonical() -> None:
    assert category_key(3) == category_key(3.0) == category_key(np.int8(3)) == "3"
    assert category_key(b"caf\xc3\xa9") == "café"
    assert category_key(True) == "1"
    assert category_key(float("nan")) is None and category_key(None) is None
    assert category_key(2.5) == "2.5"


def test_categorical_known_other_missing() -> None:
    spec = ColumnSpec("colour", CATEGORICAL, categories=("red", "green"))
    hist = HistogramSet(Binning([spec]))
    hist.update(np.array([[b"red"], [b"green"], [b"red"], [b"blue"], [None]], dtype=object))
    hist.update(np.array([["red"], ["purple"]]))
    assert hist.column_counts(0).tolist() == [3, 1, 2, 1]  # red, green, other, missing


def test_numeric_coded_categorical_and_top_k() -> None:
    column = np.array([1, 1, 1, 2, 2, 3, 4, 5], dtype=np.int64)
    cats = category_list(column, BinningConfig(max_categories=2))
    assert cats == ("1", "2")
    hist = HistogramSet(Binning([ColumnSpec("k", CATEGORICAL, categories=cats)]))
    hist.update(np.array([[1.0], [2.0], [3.0], [np.nan], [1.0]]))
    assert hist.column_counts(0).tolist() == [2, 1, 1, 1]


def _mixed_stream(rng: np.random.Generator, rows: int, scale: float = 3.0) -> np.ndarray:
    X = np.empty((rows, 3), dtype=object)
    numbers = rng.normal(size=(rows, 2)) * scale
    numbers[rng.random((rows, 2)) < 0.1] = np.nan
    X[:, :2] = numbers
    X[:, 2] = rng.choice(np.array([b"a", b"b", b"c", b"never-seen", None], dtype=object), size=rows)
    return X


def test_merge_of_two_halves_equals_the_whole_stream() -> None:
    rng = np.random.default_rng(1)
    reference = _mixed_stream(rng, 400)
    reference[:, 2] = rng.choice(np.array([b"a", b"b", b"c"], dtype=object), size=400)
    specs = specs_from_data(reference, ["u", "v", "w"], [False, False, True])
    stream = _mixed_stream(rng, 1001, scale=6.0)  # NaN, values outside the reference range, unseen categories
    whole, first, second = (HistogramSet(Binning(specs)) for _ in range(3))
    whole.update(stream)
    first.update(stream[:437])
    second.update(stream[437:])
    merged = first + second
    assert merged == whole
    assert merged.counts.dtype == np.int64
    assert int(merged.column_totals().min()) == 1001
    u = whole.column_counts(0)
    assert u[0] > 0 and u[-2] > 0 and u[-1] > 0  # underflow, overflow and NaN were exercised
    assert whole.column_counts(2)[-2] > 0 and whole.column_counts(2)[-1] > 0  # other and missing


def test_merge_refuses_different_bins() -> None:
    a = HistogramSet.from_specs([ColumnSpec("x", NUMERIC, edges=(0.0, 1.0))])
    b = HistogramSet.from_specs([ColumnSpec("x", NUMERIC, edges=(0.0, 2.0))])
    with pytest.raises(SchemaMismatch):
        a.merge(b)


def test_batch_shape_is_checked() -> None:
    hist = HistogramSet.from_specs(
        [ColumnSpec("x", NUMERIC, edges=(0.0, 1.0)), ColumnSpec("y", NUMERIC, edges=(0.0, 1.0))]
    )
    with pytest.raises(SchemaMismatch):
        hist.update(np.zeros((3, 3)))


def test_large_batches_are_chunked_consistently() -> None:
    rng = np.random.default_rng(2)
    specs = specs_from_data(rng.normal(size=(500, 40)), [f"f{i}" for i in range(40)], [False] * 40)
    X = rng.normal(size=(20_000, 40))
    whole = HistogramSet(Binning(specs))
    whole.update(X)
    pieces = HistogramSet(Binning(specs))
    for start in range(0, 20_000, 777):
        pieces.update(X[start : start + 777])
    assert whole == pieces


def test_json_and_npz_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(3)
    reference = _mixed_stream(rng, 300)
    specs = specs_from_data(reference, ["u", "v", "w"], [False, False, True])
    hist = HistogramSet(Binning(specs))
    hist.update(_mixed_stream(rng, 250))
    text = json.dumps(hist.to_dict(), allow_nan=False)
    assert HistogramSet.from_dict(json.loads(text)) == hist
    hist.save_npz(tmp_path / "h.npz")
    assert HistogramSet.load_npz(tmp_path / "h.npz") == hist
    assert [p.name for p in tmp_path.iterdir()] == ["h.npz"]  # no temp file left behind


def test_from_dict_checks_the_expected_binning() -> None:
    hist = HistogramSet.from_specs([ColumnSpec("x", NUMERIC, edges=(0.0, 1.0))])
    other = Binning([ColumnSpec("x", NUMERIC, edges=(0.0, 1.5))])
    with pytest.raises(SchemaMismatch):
        HistogramSet.from_dict(hist.to_dict(), other)


def test_histogram_dict_layout() -> None:
    spec = ColumnSpec("x", NUMERIC, edges=(0.0, 1.0, 2.0))
    hist = HistogramSet.from_specs([spec])
    hist.update(np.array([[-1.0], [0.5], [1.5], [2.0], [3.0], [np.nan]]))
    d = hist.histogram_dict(0)
    assert d == {
        "name": "x",
        "kind": "numeric",
        "edges": [0.0, 1.0, 2.0],
        "counts": [1, 1, 2, 1, 1],
        "total": 6,
    }
    assert len(spec.bin_labels()) == spec.n_bins


def test_memory_is_constant_in_the_number_of_rows() -> None:
    rng = np.random.default_rng(4)
    specs = specs_from_data(rng.normal(size=(1000, 5)), list("abcde"), [False] * 5)
    hist = HistogramSet(Binning(specs))
    before = hist.nbytes
    for _ in range(20):
        hist.update(rng.normal(size=(5000, 5)))
    assert hist.nbytes == before
