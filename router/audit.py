"""The audit log: who did what to which model, when and why, one JSON record per line.

The log is append-only; :func:`read_records` reads it backwards in blocks, so the cost of
reading the last records depends on how many are wanted, not on the log's length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout.router.files import append_line, json_safe, lines_backwards


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who did what to which model, when and why. ``detail`` is any JSON-ready mapping."""

    ts: float
    who: str
    action: str
    model: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "who": self.who,
            "action": self.action,
            "model": self.model,
            "detail": json_safe(dict(self.detail)),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AuditRecord:
        detail = obj.get("detail") or {}
        return cls(
            ts=float(obj["ts"]),
            who=str(obj["who"]),
            action=str(obj["action"]),
            model=str(obj["model"]),
            detail=detail if isinstance(detail, dict) else {"value": detail},
            reason=str(obj.get("reason", "")),
        )


def append_record(path: Path, record: AuditRecord) -> None:
    """Append one record to the log at ``path`` (fsynced); the caller serialises writers."""
    line = json.dumps(record.to_json(), allow_nan=False, separators=(",", ":")) + "\n"
    append_line(path, line.encode("utf-8"))


def read_records(path: Path, limit: int = 100, model: str | None = None) -> list[AuditRecord]:
    """The last ``limit`` records of the log at ``path`` (of ``model`` if given), oldest first.

    Unparseable lines are skipped; filtering by a rare model reads further back.
    """
    if limit <= 0:
        return []
    found: list[AuditRecord] = []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    with handle:
        for line in lines_backwards(handle):
            try:
                record = AuditRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            if model is not None and record.model != model:
                continue
            found.append(record)
            if len(found) >= limit:
                break
    found.reverse()
    return found
