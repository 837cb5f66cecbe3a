"""Dependency rule: ``turnout.router``, ``turnout.model_store`` and ``turnout.drift`` never
import the server.

Each package may use the standard library, its own modules and the third-party libraries
listed for it here; in particular nothing from ``turnout.server``. Turnout's own packages are
named by their part after ``turnout.``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)
THIRD_PARTY: dict[str, set[str]] = {
    "router": {"numpy"},
    "model_store": {"numpy", "onnxruntime", "google", "turnout.protos", "s3fs"},
    "drift": {"numpy", "scipy"},
}


def _root(module: str) -> str:
    """``numpy`` for numpy.linalg, ``turnout.server`` for turnout.server.core."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "turnout" and len(parts) > 1 else parts[0]


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(_root(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(_root(node.module))
    return roots


@pytest.mark.parametrize("package", sorted(THIRD_PARTY))
def test_package_imports_only_stdlib_its_libraries_and_itself(package: str) -> None:
    modules = sorted((ROOT / package).glob("*.py"))
    assert len(modules) >= 8
    allowed = STDLIB | THIRD_PARTY[package] | {f"turnout.{package}"}
    offenders = {p.name: sorted(_imported_roots(p) - allowed) for p in modules}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
