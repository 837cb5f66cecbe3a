"""turnout export's pure parts: --since, the join, the label column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turnout.server.export import _label_column, joined_rows, parse_since


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
