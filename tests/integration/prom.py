"""Reading Triton's nv_* samples out of a Prometheus text exposition, for tests."""

from __future__ import annotations


def parse_nv(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """nv_* samples of a text exposition: (name, labels) -> value."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line.startswith("nv_"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(
            (k, v.strip('"')) for k, v in (p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        )
        out[(name, labels)] = float(value)
    return out


def nv(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
