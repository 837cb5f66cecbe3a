"""Traffic policies: which version of a model gets live traffic, and which versions see copies.

A :class:`TrafficPolicy` names one *stable* version that takes whatever traffic the
*canaries* do not, zero or more canaries each taking a fixed share (``weight``) of live
traffic, and zero or more *shadows* that receive a mirrored copy of a fraction of requests
whose answers are compared but never returned to the client.

Policies are immutable values. Every policy change produces a new object whose
``generation`` is one more than the one it replaces, and which remembers the stable version
it replaced (``previous_stable``) so an operator can roll back in one step.

A shadow may name a version that is also a canary (or the stable version): a request is
never mirrored to the version that already answered it, so "canary 2 at 5%, shadow 2 at 20%"
means the canary answers 5% of requests and is compared against the stable answer on a
further share of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.router.keyhash import KeyHasher

# Sums of float weights such as 0.1 + 0.2 + 0.7 can exceed 1 by a few ulps.
_SUM_TOLERANCE = 1e-9

_BODY_KEYS = frozenset(
    {"model", "stable", "canary", "canaries", "shadow", "shadows", "previous_stable", "generation"}
)


class PolicyError(ValueError):
    """A traffic policy (or the JSON describing one) is invalid."""


def _check_version(value: object, what: str) -> str:
    """Return ``value`` as a version string; integers are accepted (``2`` means ``"2"``)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PolicyError(f"{what} must be a version string, got {value!r}")
    text = str(value)
    if not text or text.strip() != text:
        raise PolicyError(
            f"{what} must be a non-empty version string without surrounding spaces, got {value!r}"
        )
    return text


def _check_share(value: object, what: str) -> float:
    """Return ``value`` as a float in [0, 1], refusing booleans, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{what} must be a number between 0 and 1, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise PolicyError(f"{what} must be between 0 and 1, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class CanaryTarget:
    """A version that answers ``weight`` (0..1) of the model's live traffic."""

    version: str
    weight: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", _check_version(self.version, "canary version"))
        object.__setattr__(self, "weight", _check_share(self.weight, f"weight of canary {self.version!r}"))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    """A version that receives a mirrored copy of ``fraction`` (0..1) of the model's requests."""

    version: str
    fraction: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", _check_version(self.version, "shadow version"))
        object.__setattr__(
            self, "fraction", _check_share(self.fraction, f"fraction of shadow {self.version!r}")
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "fraction": self.fraction}


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """How one model's traffic is split between its versions. Validated on construction.

    Derived once at construction (not part of equality): ``cumulative``, the running sums of
    the canary weights (clamped to 1), so that a routing decision is a single bisection; and
    ``key_hasher``, pre-seeded with the model name, so a routing key costs one small hash.
    """

    model: str
    stable: str
    canaries: tuple[CanaryTarget, ...] = ()
    shadows: tuple[ShadowTarget, ...] = ()
    previous_stable: str | None = None
    generation: int = 0
    cumulative: tuple[float, ...] = field(init=False, repr=False, compare=False)
    key_hasher: KeyHasher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise PolicyError(f"model must be a non-empty string, got {self.model!r}")
        object.__setattr__(self, "stable", _check_version(self.stable, "stable version"))
        if self.previous_stable is not None:
            object.__setattr__(
                self, "previous_stable", _check_version(self.previous_stable, "previous stable version")
            )
        if isinstance(self.generation, bool) or not isinstance(self.generation, int) or self.generation < 0:
            raise PolicyError(f"generation must be a non-negative integer, got {self.generation!r}")

        canaries = tuple(self.canaries)
        shadows = tuple(self.shadows)
        for canary in canaries:
            if not isinstance(canary, CanaryTarget):
                raise PolicyError(f"canaries must be CanaryTarget values, got {canary!r}")
        for shadow in shadows:
            if not isinstance(shadow, ShadowTarget):
                raise PolicyError(f"shadows must be ShadowTarget values, got {shadow!r}")
        object.__setattr__(self, "canaries", canaries)
        object.__setattr__(self, "shadows", shadows)

        _refuse_duplicates([c.version for c in canaries], "canary")
        _refuse_duplicates([s.version for s in shadows], "shadow")
        for canary in canaries:
            if canary.version == self.stable:
                raise PolicyError(
                    f"version {self.stable!r} of model {self.model!r} cannot be both the stable version and a canary"
                )

        running = 0.0
        bounds: list[float] = []
        for canary in canaries:
            running += canary.weight
            bounds.append(min(running, 1.0))
        if running > 1.0 + _SUM_TOLERANCE:
            shares = " + ".join(f"{c.weight:g}" for c in canaries)
            raise PolicyError(
                f"canary weights of model {self.model!r} add up to {running:g} ({shares}); they must not exceed 1"
            )
        object.__setattr__(self, "cumulative", tuple(bounds))
        object.__setattr__(self, "key_hasher", KeyHasher(self.model))

    # -- queries -----------------------------------------------------------------------------

    @property
    def canary_weight(self) -> float:
        """Share of live traffic that goes to canaries (the rest goes to ``stable``)."""
        return self.cumulative[-1] if self.cumulative else 0.0

    def versions(self) -> tuple[str, ...]:
        """Every version this policy sends traffic or copies to: stable, canaries, shadows.

        Each version appears once, in that order. ``previous_stable`` is not included: it
        receives no traffic until a rollback, which checks it then.
        """
        seen: dict[str, None] = {self.stable: None}
        for canary in self.canaries:
            seen.setdefault(canary.version, None)
        for shadow in self.shadows:
            seen.setdefault(shadow.version, None)
        return tuple(seen)

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict; :meth:`from_json` reads it back unchanged."""
        return {
            "model": self.model,
            "stable": self.stable,
            "canaries": [c.to_json() for c in self.canaries],
            "shadows": [s.to_json() for s in self.shadows],
            "previous_stable": self.previous_stable,
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, model: str, obj: object, previous: TrafficPolicy | None = None) -> TrafficPolicy:
        """Build a policy from an HTTP body (or from :meth:`to_json` output).

        Accepted keys: ``stable`` (required); ``canary`` (one ``{"version", "weight"}``) or
        ``canaries`` (a list of them); ``shadow`` (one ``{"version", "fraction"}``) or
        ``shadows`` (a list); optional ``previous_stable``, ``generation`` and ``model``
        (which must then equal ``model``). Unknown keys are refused so that typos do not
        silently change nothing.

        ``previous`` is the policy being replaced. The new ``generation`` is
        ``previous.generation + 1`` (the body's ``generation`` is only used when there is no
        previous policy, e.g. when loading from disk; default 1). Unless the body names it,
        ``previous_stable`` becomes ``previous.stable`` when the stable version changes and
        is carried over from ``previous`` otherwise.
        """
        if not isinstance(obj, Mapping):
            raise PolicyError(f"a traffic policy must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in _BODY_KEYS)
        if unknown:
            raise PolicyError(
                f"unknown key(s) in traffic policy: {', '.join(unknown)} "
                f"(expected some of: {', '.join(sorted(_BODY_KEYS))})"
            )
        if "model" in obj and obj["model"] != model:
            raise PolicyError(f"policy body is for model {obj['model']!r}, not {model!r}")
        if "stable" not in obj:
            raise PolicyError("traffic policy needs a 'stable' version")
        stable = _check_version(obj["stable"], "stable version")

        canaries = tuple(
            CanaryTarget(*_entry(item, "canary", "weight"))
            for item in _one_or_many(obj, "canary", "canaries")
        )
        shadows = tuple(
            ShadowTarget(*_entry(item, "shadow", "fraction"))
            for item in _one_or_many(obj, "shadow", "shadows")
        )

        if "previous_stable" in obj:
            raw_previous = obj["previous_stable"]
            previous_stable = (
                None if raw_previous is None else _check_version(raw_previous, "previous_stable")
            )
        elif previous is None:
            previous_stable = None
        elif previous.stable != stable:
            previous_stable = previous.stable
        else:
            previous_stable = previous.previous_stable

        if previous is not None:
            generation = previous.generation + 1
        else:
            raw_generation = obj.get("generation", 1)
            if isinstance(raw_generation, bool) or not isinstance(raw_generation, int):
                raise PolicyError(f"generation must be a non-negative integer, got {raw_generation!r}")
            generation = raw_generation

        return cls(
            model=model,
            stable=stable,
            canaries=canaries,
            shadows=shadows,
            previous_stable=previous_stable,
            generation=generation,
        )


def _refuse_duplicates(versions: list[str], role: str) -> None:
    seen: set[str] = set()
    for version in versions:
        if version in seen:
            raise PolicyError(f"{role} version {version!r} is listed more than once")
        seen.add(version)


def _one_or_many(obj: Mapping[str, Any], single: str, plural: str) -> list[Mapping[str, Any]]:
    """Read ``single`` (an object or null) or ``plural`` (a list of objects), not both."""
    if single in obj and plural in obj:
        raise PolicyError(f"give either '{single}' or '{plural}', not both")
    if single in obj:
        value = obj[single]
        items: list[object] = [] if value is None else [value]
        key = single
    else:
        value = obj.get(plural)
        if value is None:
            items = []
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise PolicyError(f"'{plural}' must be a list, got {type(value).__name__}")
        key = plural
    for item in items:
        if not isinstance(item, Mapping):
            raise PolicyError(f"each entry of '{key}' must be an object, got {item!r}")
    return [item for item in items if isinstance(item, Mapping)]


def _entry(item: Mapping[str, Any], role: str, share_key: str) -> tuple[str, float]:
    """Read one ``{"version": ..., share_key: ...}`` entry, refusing missing or unknown keys."""
    extra = sorted(str(k) for k in item if k not in ("version", share_key))
    if extra:
        raise PolicyError(
            f"unknown key(s) in {role} entry: {', '.join(extra)} (expected 'version', '{share_key}')"
        )
    for name in ("version", share_key):
        if name not in item:
            raise PolicyError(f"{role} entry {dict(item)!r} is missing '{name}'")
    version = _check_version(item["version"], f"{role} version")
    return version, _check_share(item[share_key], f"{share_key} of {role} {version!r}")
