"""The gates a canary must pass to be promoted, judged on two window snapshots.

:func:`evaluate_gates` compares a canary window with the stable window (plus optional
shadow disagreement and drift status) and returns one :class:`GateResult` per gate, whose
``passed`` is ``True``, ``False``, or ``None`` for "no verdict" (not enough data, or the
signal is not available). A ``None`` gate neither fails nor blocks a rollout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from turnout.router.window import WindowSnapshot

# Drift statuses from best to worst (as reported by the drift detector). Any other status,
# e.g. the detector's "collecting" while it gathers its reference window, gives no verdict.
DRIFT_LEVELS: tuple[str, ...] = ("ok", "warning", "drift")

# z for a one-sided 95% bound.
_Z_95_ONE_SIDED = 1.6448536269514722


def wilson_lower_bound(failures: int, trials: int, z: float = _Z_95_ONE_SIDED) -> float:
    """One-sided lower confidence bound of a binomial rate (Wilson score interval).

    With the default ``z`` the true rate is above the bound with 95% confidence. For 1
    failure in 100 trials the bound is about 0.2%; for 5 in 100 about 2.4%.
    """
    if trials <= 0:
        return 0.0
    p = failures / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds a canary must stay within (see :func:`evaluate_gates`).

    * ``max_error_rate_increase`` — absolute: canary error rate may exceed stable's by this.
    * ``max_p99_ratio`` — canary p99 latency may be at most this multiple of stable's …
    * ``p99_slack_s`` — … unless it is within this many seconds of it anyway (so 0.2 ms vs
      0.1 ms does not count as "twice as slow").
    * ``max_disagreement`` — share of shadow-compared rows whose top class differs.
    * ``max_drift_status`` — worst acceptable drift status (``ok`` < ``warning`` < ``drift``).
    * ``min_requests`` — canary requests needed before the error and latency gates judge.
    * ``error_rate_z`` — z of the one-sided Wilson bound used by the error gate.
    * ``max_accuracy_drop`` — canary accuracy (from ground-truth feedback) may be below stable's
      by at most this much; the gate fails only when a one-sided two-proportion z-test at
      ``accuracy_alpha`` says the drop is larger …
    * ``min_labelled`` — … and both versions have at least this many labelled rows.
    """

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    max_disagreement: float = 0.05
    max_drift_status: str = "warning"
    min_requests: int = 100
    p99_slack_s: float = 0.001
    error_rate_z: float = _Z_95_ONE_SIDED
    max_accuracy_drop: float = 0.02
    accuracy_alpha: float = 0.05
    min_labelled: int = 200

    def __post_init__(self) -> None:
        for name in ("max_error_rate_increase", "max_disagreement", "max_accuracy_drop", "accuracy_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"gate {name} must be between 0 and 1, got {value!r}")
        for name in ("max_p99_ratio", "p99_slack_s", "error_rate_z"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"gate {name} must be a non-negative number, got {value!r}")
        if self.max_p99_ratio < 1.0:
            raise ValueError(f"gate max_p99_ratio must be at least 1, got {self.max_p99_ratio!r}")
        if self.max_drift_status not in DRIFT_LEVELS:
            raise ValueError(
                f"gate max_drift_status must be one of {', '.join(DRIFT_LEVELS)}, got {self.max_drift_status!r}"
            )
        for name in ("min_requests", "min_labelled"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"gate {name} must be a non-negative integer, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ratio": self.max_p99_ratio,
            "max_disagreement": self.max_disagreement,
            "max_drift_status": self.max_drift_status,
            "min_requests": self.min_requests,
            "p99_slack_s": self.p99_slack_s,
            "error_rate_z": self.error_rate_z,
            "max_accuracy_drop": self.max_accuracy_drop,
            "accuracy_alpha": self.accuracy_alpha,
            "min_labelled": self.min_labelled,
        }

    @classmethod
    def from_json(cls, obj: object) -> Gates:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError(f"gates must be a JSON object, got {type(obj).__name__}")
        known = set(cls().to_json())
        unknown = sorted(str(k) for k in obj if k not in known)
        if unknown:
            raise ValueError(
                f"unknown gate(s): {', '.join(unknown)} (expected some of: {', '.join(sorted(known))})"
            )
        return cls(**obj)


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict. ``passed`` is None when there is not enough data to judge."""

    name: str
    passed: bool | None
    observed: float | str | None
    threshold: float | str
    detail: str

    def to_json(self) -> dict[str, Any]:
        observed = self.observed
        if isinstance(observed, float) and not math.isfinite(observed):
            observed = None
        return {
            "name": self.name,
            "passed": self.passed,
            "observed": observed,
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Labelled:
    """Rows of one version judged against ground-truth feedback during a rollout."""

    correct: int
    labelled: int


def accuracy_drop_test(stable: Labelled, canary: Labelled, margin: float) -> tuple[float, float]:
    """One-sided two-proportion z-test of H0: p_stable - p_canary <= margin against
    H1: p_stable - p_canary > margin (the canary is worse by more than ``margin``).

    Returns ``(z, p_value)``. With ``margin`` 0 the standard error uses the pooled proportion
    (the classic test; z squared is the uncorrected chi-square of the 2x2 table), otherwise each
    sample's own (a non-inferiority test). Both versions need at least one labelled row.
    """
    n1, n2 = stable.labelled, canary.labelled
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both versions need labelled rows")
    p1, p2 = stable.correct / n1, canary.correct / n2
    if margin == 0:
        pooled = (stable.correct + canary.correct) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    else:
        se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    excess = p1 - p2 - margin
    if se == 0:
        z = math.inf if excess > 0 else (-math.inf if excess < 0 else 0.0)
    else:
        z = excess / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def evaluate_gates(
    canary: WindowSnapshot,
    stable: WindowSnapshot,
    disagreement: float | None,
    drift_status: str | None,
    gates: Gates,
    accuracy: tuple[Labelled, Labelled] | None = None,
) -> list[GateResult]:
    """Judge the canary against the stable baseline; always returns the five gates in order
    ``error_rate``, ``p99_latency``, ``disagreement``, ``drift``, ``accuracy``.

    *Error rate.* Fails only when we are confident (one-sided Wilson bound at
    ``gates.error_rate_z``, 95% by default) that the canary's true error rate is above the
    stable error rate plus ``max_error_rate_increase``. The stable rate is taken as its point
    estimate (it normally has far more traffic). So 1 error in 100 requests does not fail a
    1% allowance, while 5 in 100 does.

    *p99 latency.* Fails when canary p99 > ``max_p99_ratio`` times stable p99 *and* the
    difference exceeds ``p99_slack_s``. No verdict without successful stable requests.

    Both need ``gates.min_requests`` canary requests; below that they give no verdict.
    Disagreement (a rate in [0, 1] from shadow comparisons) and drift give no verdict when
    their input is None (or the drift status is not one of :data:`DRIFT_LEVELS`).

    *Accuracy.* ``accuracy`` is (canary, stable) rows labelled since the rollout began. Fails
    when :func:`accuracy_drop_test` rejects "the canary is at most ``max_accuracy_drop`` less
    accurate" at ``accuracy_alpha``; no verdict below ``min_labelled`` rows on either side.
    """
    enough = canary.requests >= gates.min_requests
    return [
        _error_rate_gate(canary, stable, gates, enough),
        _p99_gate(canary, stable, gates, enough),
        _disagreement_gate(disagreement, gates),
        _drift_gate(drift_status, gates),
        _accuracy_gate(accuracy, gates),
    ]


def _too_few(canary: WindowSnapshot, gates: Gates) -> str:
    return f"no verdict: {canary.requests} canary requests, need {gates.min_requests}"


def _error_rate_gate(
    canary: WindowSnapshot, stable: WindowSnapshot, gates: Gates, enough: bool
) -> GateResult:
    allowed = stable.error_rate + gates.max_error_rate_increase
    observed = canary.error_rate
    if not enough:
        return GateResult("error_rate", None, observed, allowed, _too_few(canary, gates))
    lower = wilson_lower_bound(canary.errors, canary.requests, gates.error_rate_z)
    passed = lower <= allowed
    detail = (
        f"canary {canary.errors}/{canary.requests} errors ({observed:.2%}, lower bound {lower:.2%}) "
        f"{'<=' if passed else '>'} stable {stable.errors}/{stable.requests} ({stable.error_rate:.2%}) "
        f"+ {gates.max_error_rate_increase:.2%} allowed = {allowed:.2%}"
    )
    return GateResult("error_rate", passed, observed, allowed, detail)


def _p99_gate(canary: WindowSnapshot, stable: WindowSnapshot, gates: Gates, enough: bool) -> GateResult:
    threshold = gates.max_p99_ratio
    if not enough:
        return GateResult("p99_latency", None, None, threshold, _too_few(canary, gates))
    canary_p99 = canary.p99
    stable_p99 = stable.p99
    if canary_p99 is None:
        return GateResult("p99_latency", None, None, threshold, "no verdict: no successful canary requests")
    if stable_p99 is None:
        return GateResult("p99_latency", None, None, threshold, "no verdict: no successful stable requests")
    ratio = canary_p99 / stable_p99 if stable_p99 > 0 else (math.inf if canary_p99 > 0 else 1.0)
    slower_by = canary_p99 - stable_p99
    passed = not (ratio > threshold and slower_by > gates.p99_slack_s)
    detail = (
        f"canary p99 {canary_p99 * 1e3:.3f} ms vs stable {stable_p99 * 1e3:.3f} ms: ratio {ratio:.2f} "
        f"{'within' if passed else 'exceeds'} {threshold:g} (slack {gates.p99_slack_s * 1e3:g} ms)"
    )
    return GateResult("p99_latency", passed, ratio, threshold, detail)


def _disagreement_gate(disagreement: float | None, gates: Gates) -> GateResult:
    threshold = gates.max_disagreement
    if disagreement is None:
        return GateResult("disagreement", None, None, threshold, "no verdict: no shadow comparisons")
    passed = disagreement <= threshold
    detail = f"shadow disagreement {disagreement:.2%} {'<=' if passed else '>'} {threshold:.2%}"
    return GateResult("disagreement", passed, disagreement, threshold, detail)


def _drift_gate(drift_status: str | None, gates: Gates) -> GateResult:
    threshold = gates.max_drift_status
    if drift_status is None:
        return GateResult("drift", None, None, threshold, "no verdict: no drift status")
    status = drift_status.lower()
    if status not in DRIFT_LEVELS:
        return GateResult(
            "drift", None, drift_status, threshold, f"no verdict: drift status {drift_status!r}"
        )
    passed = DRIFT_LEVELS.index(status) <= DRIFT_LEVELS.index(threshold)
    detail = f"drift status {status!r} {'is within' if passed else 'is worse than'} {threshold!r}"
    return GateResult("drift", passed, status, threshold, detail)


def _accuracy_gate(accuracy: tuple[Labelled, Labelled] | None, gates: Gates) -> GateResult:
    threshold = gates.max_accuracy_drop
    if accuracy is None:
        return GateResult("accuracy", None, None, threshold, "no verdict: no ground-truth feedback")
    canary, stable = accuracy
    if min(canary.labelled, stable.labelled) < max(gates.min_labelled, 1):
        return GateResult(
            "accuracy",
            None,
            None,
            threshold,
            f"no verdict: {canary.labelled} canary and {stable.labelled} stable labelled rows, need"
            f" {gates.min_labelled} each",
        )
    drop = stable.correct / stable.labelled - canary.correct / canary.labelled
    z, p = accuracy_drop_test(stable, canary, threshold)
    passed = p >= gates.accuracy_alpha
    detail = (
        f"canary {canary.correct}/{canary.labelled} vs stable {stable.correct}/{stable.labelled} correct:"
        f" drop {drop:.2%}, z {z:.2f}, p {p:.3g} {'>=' if passed else '<'} {gates.accuracy_alpha:g}"
        f" (allowed drop {threshold:.2%})"
    )
    return GateResult("accuracy", passed, drop, threshold, detail)
