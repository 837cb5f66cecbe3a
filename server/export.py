"""``turnout export``: a slice of the request log joined with its feedback, as a Parquet file.

Reads ``<log-dir>/<model>/<version>/requests-*.jsonl`` records at or after ``--since`` and
the version's ``feedback-*.jsonl``, joins them on the request id (the first accepted label of
an id wins) and writes one row per logged request: ``ts``, ``model``, ``version``, ``id``,
``routing_key``, ``input.<name>`` and ``output.<name>`` per tensor (as logged), ``label``
(numbers, text, or JSON text when labels mix kinds or are lists; null when none came) and
``feedback_ts``. Needs pyarrow (the ``log`` extra). Lines that are not a whole record (cut short
by a crash, or edited by hand into something that does not decode) are skipped and reported with
their file and line number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from turnout.server.observe.request_log import decode_tensor, path_component


def parse_since(text: str) -> float:
    """Seconds since the epoch, or an ISO-8601 time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: expected epoch seconds or an ISO-8601 time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _records(files: Iterable[Path], skipped: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each JSON object line with its place (``file:line``); other lines' places go to ``skipped``."""
    for path in files:
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if isinstance(rec, dict):
                    yield f"{path.name}:{n}", rec
                else:
                    skipped.append(f"{path.name}:{n}")


def version_dirs(log_dir: Path, model: str, version: str | None) -> list[Path]:
    base = log_dir / path_component(model)
    if version:
        return [base / path_component(version)]
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def joined_rows(
    log_dir: Path, model: str, version: str | None, since: float, skipped: list[str] | None = None
) -> list[dict[str, Any]]:
    """The logged requests of ``model`` (one version, or all) at or after ``since``, each with
    its label; ordered by time. The places of lines that are not whole records go to ``skipped``."""
    bad: list[str] = [] if skipped is None else skipped
    rows: list[dict[str, Any]] = []
    for vdir in version_dirs(log_dir, model, version):
        labels: dict[str, dict[str, Any]] = {}
        for _, fb in _records(sorted(vdir.glob("feedback-*.jsonl")), bad):
            rid = fb.get("id")
            if isinstance(rid, str):
                labels.setdefault(rid, fb)
        newer = [p for p in sorted(vdir.glob("requests-*.jsonl")) if p.stat().st_mtime >= since]
        for place, rec in _records(newer, bad):
            try:
                row = _row(rec, model, vdir.name, since)
            except (ValueError, TypeError, KeyError, AttributeError):  # a record edited out of shape
                bad.append(place)
                continue
            if row is None:
                continue
            found = labels.get(rec.get("id") or "")
            row["label"] = found.get("label") if found else None
            row["feedback_ts"] = found.get("ts") if found else None
            rows.append(row)
    rows.sort(key=lambda r: r["ts"] or 0.0)
    return rows


def _row(rec: dict[str, Any], model: str, version: str, since: float) -> dict[str, Any] | None:
    """One logged request as a row (without its label); None when it is older than ``since``."""
    ts = rec.get("ts")
    if ts is not None:
        ts = float(ts)
    if (ts or 0.0) < since:
        return None
    row: dict[str, Any] = {
        "ts": ts,
        "model": rec.get("model", model),
        "version": rec.get("version", version),
        "id": rec.get("id"),
        "routing_key": rec.get("routing_key"),
    }
    for part, prefix in (("inputs", "input."), ("outputs", "output.")):
        for name, value in (rec.get(part) or {}).items():
            row[prefix + name] = decode_tensor(value)
    return row


def _label_column(values: list[Any]) -> list[Any]:
    present = [v for v in values if v is not None]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    text = all(isinstance(v, str) for v in present)
    if numeric or text:
        return values
    return [None if v is None else json.dumps(v) for v in values]


def write_parquet(rows: list[dict[str, Any]], out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    data: dict[str, Any] = {c: [row.get(c) for row in rows] for c in columns}
    if "label" in data:
        data["label"] = _label_column(data["label"])
    table = pa.table(data) if rows else pa.table({"id": pa.array([], pa.string())})
    if "ts" in table.column_names:
        ts = pa.array([None if v is None else int(v * 1e6) for v in data["ts"]], pa.int64())
        table = table.set_column(table.column_names.index("ts"), "ts", ts.cast(pa.timestamp("us", tz="UTC")))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table.num_rows


def add_export_command(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="join a slice of the request log with its feedback into a Parquet file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log-dir", type=Path, help="the server's --request-log-dir (or TURNOUT_REQUEST_LOG_DIR)")
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="one version (default: all)")
    p.add_argument("--since", default="0", help="epoch seconds or ISO-8601 time (default: everything)")
    p.add_argument("--labelled-only", action="store_true", help="leave out requests without a label")
    p.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    p.set_defaults(func=run_export)


def run_export(ns: argparse.Namespace) -> int:
    import os

    log_dir = ns.log_dir or (
        Path(os.environ["TURNOUT_REQUEST_LOG_DIR"]) if os.environ.get("TURNOUT_REQUEST_LOG_DIR") else None
    )
    if log_dir is None:
        print("turnout export: give --log-dir (the server's --request-log-dir)", file=sys.stderr)
        return 2
    try:
        since = parse_since(ns.since)
    except ValueError as exc:
        print(f"turnout export: {exc}", file=sys.stderr)
        return 2
    try:
        import pyarrow as pa
    except ImportError:
        print("turnout export: needs pyarrow (pip install 'turnout[log]')", file=sys.stderr)
        return 2
    skipped: list[str] = []
    rows = joined_rows(log_dir, ns.model, ns.version, since, skipped)
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(
            f"turnout export: skipped {len(skipped)} lines that are not whole records:"
            f" {', '.join(skipped[:5])}{more}",
            file=sys.stderr,
        )
    if ns.labelled_only:
        rows = [r for r in rows if r["label"] is not None]
    try:
        n = write_parquet(rows, ns.out)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # a column whose values do not agree in kind
        print(f"turnout export: cannot make a table of these records: {exc}", file=sys.stderr)
        return 1
    labelled = sum(r["label"] is not None for r in rows)
    print(f"{n} rows ({labelled} labelled) -> {ns.out}")
    return 0
