"""Shadow traffic: compare a shadow version's answers with the primary's, off the hot path.

:func:`compare_outputs` is pure. It compares the outputs both versions produced for the
same request, output by output (outputs present on only one side, or whose shapes differ,
are reported in ``Comparison.mismatched``). Each output is judged one of two ways:

* **classification** — a row agrees when the predicted class is the same. The class of a
  row is the argmax over the last axis for a float output with more than one column, the
  value itself for integer, boolean or string outputs (all elements of the row must be
  equal), and ``score >= 0.5`` for a float output with a single column (a binary
  probability). A request's row agrees only if it agrees in every classification output;
  an output with a shape mismatch makes every row disagree.
* **regression** — per row, the mean absolute difference and the mean symmetric relative
  difference ``|a - b| / max(|a|, |b|)`` (0 where both are 0; at most 2) over the row's
  elements. Elements equal on both sides (including NaN vs NaN) differ by 0; where exactly
  one side is NaN or infinite the element counts as relative difference 1 and is left out
  of the absolute difference.

With ``task="auto"`` each output picks its own rule: integer, boolean and string outputs
and float outputs of 2+ dimensions with more than one column in the last axis are
classification; everything else (1-D floats, single-column scores, scalars) is regression.
Explicit ``"classification"`` / ``"regression"`` apply to every output (float outputs are
also diffed under classification, as a diagnostic).

:class:`ShadowStats` keeps one :class:`PairStats` per (model, primary version, shadow
version). :class:`ShadowMirror` runs the shadow calls as background tasks with bounded
concurrency, compares, and records into a :class:`ShadowStats`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Task = Literal["auto", "classification", "regression"]
_TASKS = ("auto", "classification", "regression")

ShadowCall = Callable[[], Awaitable[tuple[Mapping[str, np.ndarray], float]]]


@dataclass(frozen=True, slots=True)
class Comparison:
    """Result of comparing one request's primary and shadow outputs."""

    rows: int
    classified_rows: int
    agreements: int
    diffed_rows: int
    abs_diff_sum: float
    rel_diff_sum: float
    mismatched: tuple[str, ...] = ()

    @property
    def disagreement_rate(self) -> float | None:
        if not self.classified_rows:
            return None
        return 1.0 - self.agreements / self.classified_rows

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.diffed_rows if self.diffed_rows else None

    @property
    def mean_rel_diff(self) -> float | None:
        return self.rel_diff_sum / self.diffed_rows if self.diffed_rows else None


def _rows_of(array: np.ndarray) -> int:
    return int(array.shape[0]) if array.ndim else 1


def _as_rows(array: np.ndarray, rows: int) -> np.ndarray:
    return array.reshape(rows, -1)


def _is_label_dtype(array: np.ndarray) -> bool:
    return array.dtype.kind in "iubUSO"


def _auto_kind(array: np.ndarray) -> Literal["classification", "regression"]:
    if _is_label_dtype(array):
        return "classification"
    if array.ndim >= 2 and array.shape[-1] > 1:
        return "classification"
    return "regression"


def _row_classes_agree(a: np.ndarray, b: np.ndarray, rows: int) -> np.ndarray:
    """Boolean vector (one per row): same predicted class in ``a`` and ``b``."""
    if _is_label_dtype(a) or _is_label_dtype(b):
        equal = np.broadcast_to(np.asarray(a == b, dtype=bool), a.shape)
    elif a.ndim >= 2 and a.shape[-1] > 1:
        equal = np.asarray(np.argmax(a, axis=-1) == np.argmax(b, axis=-1), dtype=bool)
    else:
        equal = np.asarray((a >= 0.5) == (b >= 0.5), dtype=bool)
    return np.asarray(_as_rows(equal, rows).all(axis=1), dtype=bool)


def _row_diffs(a: np.ndarray, b: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean absolute and mean symmetric relative difference."""
    x = _as_rows(np.asarray(a, dtype=np.float64), rows)
    y = _as_rows(np.asarray(b, dtype=np.float64), rows)
    if x.shape[1] == 0:
        zeros = np.zeros(rows)
        return zeros, zeros
    with np.errstate(invalid="ignore", over="ignore"):
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        absolute = np.where(same, 0.0, np.abs(x - y))
        scale = np.maximum(np.abs(x), np.abs(y))
        relative = np.where(same, 0.0, absolute / np.where(scale > 0, scale, 1.0))
    broken = ~np.isfinite(absolute)
    relative = np.where(broken | ~np.isfinite(relative), 1.0, relative)
    absolute = np.where(broken, 0.0, absolute)
    return absolute.mean(axis=1), relative.mean(axis=1)


def compare_outputs(
    primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], task: str = "auto"
) -> Comparison:
    """Compare one request's outputs; see the module docstring for the rules."""
    if task not in _TASKS:
        raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
    common = sorted(set(primary) & set(shadow))
    mismatched = set(primary) ^ set(shadow)
    if not common:
        rows = max((_rows_of(np.asarray(v)) for v in primary.values()), default=0)
        return Comparison(rows, 0, 0, 0, 0.0, 0.0, tuple(sorted(mismatched)))

    arrays = [(name, np.asarray(primary[name]), np.asarray(shadow[name])) for name in common]
    rows = _rows_of(arrays[0][1])
    if rows == 0:
        return Comparison(0, 0, 0, 0, 0.0, 0.0, tuple(sorted(mismatched)))
    agree = np.ones(rows, dtype=bool)
    classified = False
    abs_total = np.zeros(rows)
    rel_total = np.zeros(rows)
    diffed_outputs = 0
    for name, a, b in arrays:
        kind = _auto_kind(a) if task == "auto" else task
        if a.shape != b.shape or _rows_of(a) != rows:
            mismatched.add(name)
            if kind == "classification":
                classified = True
                agree[:] = False
            continue
        if kind == "classification":
            classified = True
            agree &= _row_classes_agree(a, b, rows)
        if a.dtype.kind in "fc" or (kind == "regression" and a.dtype.kind in "iub"):
            if a.dtype.kind == "c":
                a, b = np.abs(a), np.abs(b)
            absolute, relative = _row_diffs(a, b, rows)
            abs_total += absolute
            rel_total += relative
            diffed_outputs += 1

    classified_rows = rows if classified else 0
    agreements = int(agree.sum()) if classified else 0
    if diffed_outputs:
        return Comparison(
            rows=rows,
            classified_rows=classified_rows,
            agreements=agreements,
            diffed_rows=rows,
            abs_diff_sum=float(abs_total.sum() / diffed_outputs),
            rel_diff_sum=float(rel_total.sum() / diffed_outputs),
            mismatched=tuple(sorted(mismatched)),
        )
    return Comparison(rows, classified_rows, agreements, 0, 0.0, 0.0, tuple(sorted(mismatched)))


@dataclass(slots=True)
class PairStats:
    """Running totals of shadow comparisons for one (model, primary, shadow) pair.

    ``requests`` counts compared requests, ``rows`` the rows in them; ``dropped`` counts
    mirror attempts refused because too many were in flight; ``shadow_errors`` counts shadow
    calls that raised or timed out; ``mismatches`` counts requests with a structural mismatch
    (an output missing on one side or of a different shape).
    """

    model: str
    primary_version: str
    shadow_version: str
    requests: int = 0
    rows: int = 0
    classified_rows: int = 0
    agreements: int = 0
    diffed_rows: int = 0
    abs_diff_sum: float = 0.0
    rel_diff_sum: float = 0.0
    primary_latency_sum_s: float = 0.0
    shadow_latency_sum_s: float = 0.0
    shadow_errors: int = 0
    dropped: int = 0
    mismatches: int = 0

    def add(
        self, comparison: Comparison, primary_latency_s: float, shadow_latency_s: float, requests: int = 1
    ) -> None:
        """Record one comparison; ``requests`` > 1 when it covers several mirrored requests
        compared at once (latencies are then per-request means)."""
        self.requests += requests
        self.rows += comparison.rows
        self.classified_rows += comparison.classified_rows
        self.agreements += comparison.agreements
        self.diffed_rows += comparison.diffed_rows
        self.abs_diff_sum += comparison.abs_diff_sum
        self.rel_diff_sum += comparison.rel_diff_sum
        self.primary_latency_sum_s += primary_latency_s * requests
        self.shadow_latency_sum_s += shadow_latency_s * requests
        if comparison.mismatched:
            self.mismatches += 1

    @property
    def disagreements(self) -> int:
        return self.classified_rows - self.agreements

    @property
    def disagreement_rate(self) -> float | None:
        return self.disagreements / self.classified_rows if self.classified_rows else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.diffed_rows if self.diffed_rows else None

    @property
    def mean_rel_diff(self) -> float | None:
        return self.rel_diff_sum / self.diffed_rows if self.diffed_rows else None

    @property
    def mean_primary_latency_s(self) -> float | None:
        return self.primary_latency_sum_s / self.requests if self.requests else None

    @property
    def mean_shadow_latency_s(self) -> float | None:
        return self.shadow_latency_sum_s / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_version": self.primary_version,
            "shadow_version": self.shadow_version,
            "requests": self.requests,
            "rows": self.rows,
            "classified_rows": self.classified_rows,
            "agreements": self.agreements,
            "disagreement_rate": self.disagreement_rate,
            "mean_abs_diff": self.mean_abs_diff,
            "mean_rel_diff": self.mean_rel_diff,
            "mean_primary_latency_s": self.mean_primary_latency_s,
            "mean_shadow_latency_s": self.mean_shadow_latency_s,
            "shadow_errors": self.shadow_errors,
            "dropped": self.dropped,
            "mismatches": self.mismatches,
        }


class ShadowStats:
    """The :class:`PairStats` of every (model, primary version, shadow version) seen."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str, str], PairStats] = {}

    def pair(self, model: str, primary_version: str, shadow_version: str) -> PairStats:
        """The stats of one pair, created empty on first use."""
        key = (model, primary_version, shadow_version)
        stats = self._pairs.get(key)
        if stats is None:
            stats = self._pairs[key] = PairStats(model, primary_version, shadow_version)
        return stats

    def get(self, model: str, primary_version: str, shadow_version: str) -> PairStats | None:
        return self._pairs.get((model, primary_version, shadow_version))

    def pairs(self, model: str | None = None) -> list[PairStats]:
        return [s for (m, _, _), s in sorted(self._pairs.items()) if model is None or m == model]

    def reset(self, model: str, versions: frozenset[str] | None = None) -> None:
        """Forget the pairs of ``model`` (only those involving one of ``versions`` if given)."""
        for key in list(self._pairs):
            m, primary, shadow = key
            if m == model and (versions is None or primary in versions or shadow in versions):
                del self._pairs[key]


class ShadowMirror:
    """Runs shadow calls in the background, at most ``max_in_flight`` at a time.

    :meth:`mirror` must be called from the event loop thread. It never raises and never
    waits: it starts a task and returns True, or counts a drop and returns False when
    ``max_in_flight`` tasks are already running (or the mirror is closed, or no loop is
    running). The task awaits ``call()`` (bounded by ``timeout_s`` if set), compares the
    result with ``primary_outputs`` and records it; an exception or timeout counts as a
    shadow error. The comparison runs on the event loop thread, so keep mirrored outputs
    modest in size. ``primary_outputs`` must not be modified after being handed over.
    """

    def __init__(
        self,
        stats: ShadowStats | None = None,
        *,
        max_in_flight: int = 64,
        task: Task = "auto",
        timeout_s: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if task not in _TASKS:
            raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
        self.stats = stats if stats is not None else ShadowStats()
        self.max_in_flight = max_in_flight
        self._task: Task = task
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def mirror(
        self,
        call: ShadowCall,
        primary_outputs: Mapping[str, np.ndarray],
        primary_latency_s: float,
        key: tuple[str, str],
        *,
        model: str = "",
        task: Task | None = None,
    ) -> bool:
        """Schedule one shadow call; ``key`` is (primary version, shadow version)."""
        try:
            stats = self.stats.pair(model, key[0], key[1])
            if self._closed or len(self._tasks) >= self.max_in_flight:
                stats.dropped += 1
                return False
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                stats.dropped += 1
                return False
            job = loop.create_task(
                self._run(call, primary_outputs, primary_latency_s, stats, task or self._task),
                name=f"shadow:{model}:{key[0]}->{key[1]}",
            )
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)
            return True
        except Exception:  # the hot path must never fail because of a shadow
            return False

    async def _run(
        self,
        call: ShadowCall,
        primary_outputs: Mapping[str, np.ndarray],
        primary_latency_s: float,
        stats: PairStats,
        task: Task,
    ) -> None:
        try:
            if self._timeout_s is None:
                outputs, latency_s = await call()
            else:
                async with asyncio.timeout(self._timeout_s):
                    outputs, latency_s = await call()
            if not isinstance(outputs, Mapping):
                raise TypeError(f"shadow call returned {type(outputs).__name__}, not a mapping of outputs")
            comparison = compare_outputs(primary_outputs, outputs, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            stats.shadow_errors += 1
            return
        stats.add(comparison, primary_latency_s, latency_s)

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new mirrors, give in-flight ones ``grace_s`` to finish, cancel the rest."""
        self._closed = True
        pending = set(self._tasks)
        if not pending:
            return
        if grace_s > 0:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            pending = set(still)
        for job in pending:
            job.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
