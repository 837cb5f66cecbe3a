"""Small shared helpers: benchmark model specs, paths, loopback guard, JSON lines."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_DIR = Path(os.environ.get("PEERS_HARNESS", "/work/shared/peers"))
PYTHON = sys.executable

# model -> (input width, output width); tensors are "input"/"output", batch dim dynamic.
MODELS: dict[str, tuple[int, int]] = {"mlp_small": (32, 8), "mlp_large": (256, 16)}
# models of the demo repository (model_store/demo/repository) that the generator can also drive
DEMO_MODELS: dict[str, tuple[int, int]] = {"mlp": (32, 8)}

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def check_loopback(hostport: str) -> None:
    """Refuse anything but a loopback target (these tools generate load)."""
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 or hostport.startswith("[") else hostport
    if host not in LOOPBACK:
        raise SystemExit(f"load tests target loopback only, got {hostport!r}")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _shape(model: str) -> tuple[int, int]:
    known = MODELS | DEMO_MODELS
    try:  # a numbered copy (mlp_small_07, benchmarks.curves) has its original's shape
        return known[model] if model in known else known[re.sub(r"_\d+$", "", model)]
    except KeyError:
        raise SystemExit(f"unknown benchmark model {model!r}; known: {', '.join(known)}") from None


def width(model: str) -> int:
    """Input width (features per row) of a benchmark or demo model."""
    return _shape(model)[0]


def out_width(model: str) -> int:
    """Output width of a benchmark or demo model."""
    return _shape(model)[1]
