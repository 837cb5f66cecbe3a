"""What a running rollout is judged on besides drift: request windows and shadow agreement.

While a rollout is active its canary has a :class:`~router.window.VersionWindow` that is reset
at every step (each step is judged on its own traffic) and its stable version one that is kept
for the whole rollout (so a baseline exists even at a 100% step). A new rollout, or one that
ended, drops the model's windows and its latest gate verdicts. :func:`shadow_disagreement`
reads the canary-vs-stable agreement off the shadow statistics.
"""

from __future__ import annotations

from router.gates import GateResult
from router.rollout import RolloutState
from router.shadow import ShadowStats
from router.window import VersionWindow

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
