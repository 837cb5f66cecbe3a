"""What a running rollout is judged on besides drift: request windows and shadow agreement.

While a rollout is active its canary has a :class:`~router.window.VersionWindow` that is reset
at every step (each step is judged on its own traffic) and its stable version one that is kept
for the whole rollout (so a baseline exists even at a 100% step). A new rollout, or one that
ended, drops the model's windows and its latest gate verdicts. :func:`shadow_disagreement`
reads the canary-vs-stable agreement off the shadow statistics; :class:`AccuracySince` the
rows labelled by ground-truth feedback since the rollout began.
"""

from __future__ import annotations

from collections.abc import Callable

from turnout.router.gates import GateResult, Labelled
from turnout.router.rollout import RolloutState
from turnout.router.shadow import ShadowStats
from turnout.router.window import VersionWindow

_RolloutEpoch = tuple[float, str, str]
_StepEpoch = tuple[int, float]


class RolloutWindows:
    """Canary and stable windows, and the latest gate verdicts, of every model's rollout."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], VersionWindow] = {}
        self._epochs: dict[str, tuple[_RolloutEpoch, _StepEpoch]] = {}
        self._last_gates: dict[str, list[GateResult]] = {}

    def get(self, model: str, version: str) -> VersionWindow | None:
        return self._windows.get((model, version))

    def record(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Count one answered request; a no-op for versions no rollout is judging."""
        window = self._windows.get((model, version))
        if window is not None:
            window.record(latency_s, ok)

    def last_gates(self, model: str) -> list[GateResult]:
        return self._last_gates.get(model, [])

    def set_last_gates(self, model: str, gates: list[GateResult]) -> None:
        self._last_gates[model] = gates

    def sync(self, model: str, state: RolloutState | None) -> bool:
        """Follow the model's rollout (new rollout, new step, over); True when a new rollout began."""
        if state is None or not state.active:
            self._drop_windows(model)
            self._epochs.pop(model, None)
            if state is None:
                self._last_gates.pop(model, None)
            return False
        rollout_epoch = (state.started_at, state.stable, state.canary)
        step_epoch = (state.step_index, state.step_started_at)
        known = self._epochs.get(model)
        began = known is None or known[0] != rollout_epoch
        if began:
            self._drop_windows(model)
            self._windows[(model, state.stable)] = VersionWindow()
            self._windows[(model, state.canary)] = VersionWindow()
            self._last_gates.pop(model, None)
        elif known is not None and known[1] != step_epoch:
            self._windows[(model, state.canary)].reset()
        self._epochs[model] = (rollout_epoch, step_epoch)
        return began

    def _drop_windows(self, model: str) -> None:
        for key in [k for k in self._windows if k[0] == model]:
            del self._windows[key]


def shadow_disagreement(stats: ShadowStats, model: str, state: RolloutState) -> float | None:
    """Share of shadow-compared rows (canary vs stable, both directions) that disagree; None
    with fewer compared rows than the rollout's gates need."""
    rows = agreements = 0
    for primary, shadow in ((state.stable, state.canary), (state.canary, state.stable)):
        pair = stats.get(model, primary, shadow)
        if pair is not None:
            rows += pair.classified_rows
            agreements += pair.agreements
    if rows == 0 or rows < state.plan.gates.min_requests:
        return None
    return 1.0 - agreements / rows


# (correct, labelled) rows of a version so far, from ground-truth feedback; None when unknown
AccuracySource = Callable[[str, str], tuple[int, int] | None]


class AccuracySince:
    """Labelled rows per version counted from a rollout's start: the source's cumulative
    counts minus those it had when the rollout began (or when first asked, if later)."""

    def __init__(self, source: AccuracySource) -> None:
        self._source = source
        self._base: dict[tuple[str, str], tuple[int, int]] = {}

    def _counts(self, model: str, version: str) -> tuple[int, int]:
        try:
            got = self._source(model, version)
        except Exception:  # a broken source must not stop rollouts; the gate has no verdict
            got = None
        return got if got is not None else (0, 0)

    def begin(self, model: str, versions: tuple[str, ...]) -> None:
        for key in [k for k in self._base if k[0] == model]:
            del self._base[key]
        for version in versions:
            self._base[(model, version)] = self._counts(model, version)

    def since(self, model: str, version: str) -> Labelled:
        correct, labelled = self._counts(model, version)
        base = self._base.setdefault((model, version), (correct, labelled))
        return Labelled(max(0, correct - base[0]), max(0, labelled - base[1]))

    def pair(self, model: str, state: RolloutState) -> tuple[Labelled, Labelled]:
        """(canary, stable) since the rollout began."""
        return self.since(model, state.canary), self.since(model, state.stable)
