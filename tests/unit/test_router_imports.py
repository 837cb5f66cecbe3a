"""Dependency rule: the router package uses only the standard library, numpy and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[2] / "router"
ALLOWED = set(sys.stdlib_module_names) | {"numpy", "router"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_router_imports_only_stdlib_numpy_and_itself() -> None:
    modules = sorted(ROUTER.glob("*.py"))
    assert len(modules) >= 8
    offenders = {p.name: sorted(_imported_roots(p) - ALLOWED) for p in modules}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
