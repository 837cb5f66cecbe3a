"""turnout export's pure parts: --since, the join, the label column."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from turnout.server.export import _label_column, joined_rows, parse_since, run_export


def test_parse_since() -> None:
    assert parse_since("1700000000.5") == 1700000000.5
    assert parse_since("2026-01-01T00:00:00") == parse_since("2026-01-01T00:00:00+00:00")
    assert parse_since("2026-01-01T01:00:00+01:00") == parse_since("2026-01-01T00:00:00")
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_label_column_keeps_uniform_kinds_and_encodes_mixed_ones() -> None:
    assert _label_column([1, 2.5, None]) == [1, 2.5, None]
    assert _label_column(["a", None]) == ["a", None]
    assert _label_column([1, "a", [0, 1], None]) == ["1", '"a"', "[0, 1]", None]


def test_join_first_label_wins_and_cut_lines_are_skipped(tmp_path: Path) -> None:
    v = tmp_path / "m" / "1"
    v.mkdir(parents=True)
    reqs = [{"ts": t, "id": f"r{t}", "inputs": {"x": [t]}, "outputs": {"y": [0]}} for t in (1, 2, 3)]
    (v / "requests-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs) + '{"ts": 4, "id"')
    fb = [{"id": "r2", "label": 1, "ts": 9}, {"id": "r2", "label": 0, "ts": 10}]
    (v / "feedback-1.jsonl").write_text("".join(json.dumps(f) + "\n" for f in fb))
    rows = joined_rows(tmp_path, "m", None, 2.0)
    assert [(r["id"], r["label"], r["input.x"]) for r in rows] == [("r2", 1, [2]), ("r3", None, [3])]
    assert joined_rows(tmp_path, "other", None, 0.0) == []


def test_lines_that_are_not_whole_records_are_skipped_with_their_place(tmp_path: Path) -> None:
    v = tmp_path / "m" / "1"
    v.mkdir(parents=True)
    good = {"ts": 1, "id": "ok", "inputs": {"x": {"datatype": "FP32", "shape": [1], "b64": "AACAPw=="}}}
    lines = [
        json.dumps(good),
        json.dumps({"ts": 2, "inputs": {"x": {"datatype": "FP99", "shape": [1], "b64": "AACAPw=="}}}),
        json.dumps({"ts": 3, "inputs": {"x": {"datatype": "FP32", "shape": [2], "b64": "AACAPw=="}}}),
        json.dumps({"ts": 4, "inputs": {"x": {"datatype": "FP32", "shape": [1], "b64": "not base64!"}}}),
        json.dumps({"ts": "soon", "id": "bad-ts"}),
        json.dumps([1, 2, 3]),
        '{"ts": 5, "id"',
    ]
    (v / "requests-1.jsonl").write_text("\n".join(lines) + "\n")
    (v / "feedback-1.jsonl").write_text('{"id": "ok", "label": 1, "ts": 9}\n"just a string"\n')
    skipped: list[str] = []
    rows = joined_rows(tmp_path, "m", None, 0.0, skipped)
    assert [(r["id"], r["label"], r["input.x"]) for r in rows] == [("ok", 1, [1.0])]
    assert sorted(skipped) == sorted(["feedback-1.jsonl:2", *(f"requests-1.jsonl:{n}" for n in range(2, 8))])


def export_args(tmp_path: Path, requests_text: str) -> argparse.Namespace:
    """``turnout export``'s arguments for a log of one version whose requests file holds the text."""
    v = tmp_path / "log" / "m" / "1"
    v.mkdir(parents=True)
    (v / "requests-1.jsonl").write_text(requests_text)
    return argparse.Namespace(
        log_dir=tmp_path / "log",
        model="m",
        version=None,
        since="0",
        labelled_only=False,
        out=tmp_path / "out.parquet",
    )


def test_export_reports_skipped_lines_and_writes_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    ns = export_args(
        tmp_path, json.dumps({"ts": 1, "id": "a", "inputs": {"x": [[1.0, 2.0]]}}) + "\n{not json\n"
    )
    assert run_export(ns) == 0
    err = capsys.readouterr().err
    assert "skipped 1 lines that are not whole records: requests-1.jsonl:2" in err
    assert pq.read_table(ns.out).column("id").to_pylist() == ["a"]


def test_export_refuses_columns_whose_values_disagree_in_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow")
    recs = [{"ts": 1, "id": "a", "inputs": {"x": [[1.0]]}}, {"ts": 2, "id": "b", "inputs": {"x": "text"}}]
    ns = export_args(tmp_path, "".join(json.dumps(r) + "\n" for r in recs))
    assert run_export(ns) == 1
    assert "cannot make a table of these records" in capsys.readouterr().err
    assert not ns.out.exists()
