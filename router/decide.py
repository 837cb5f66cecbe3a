"""The per-request routing decision: which version answers, which versions get a copy.

Each request gets a *position* in [0, 1). The canaries own consecutive slices of that
interval starting at 0 — ``[0, w1)`` for the first, ``[w1, w1 + w2)`` for the second — and
the stable version owns the rest. A request is mirrored to a shadow when its *shadow
position* is below the shadow's fraction.

Without a routing key the positions are the caller's random draws. With one, both come
from :mod:`router.keyhash` (keyed BLAKE2b of model and key), so a key lands on the same
version — and is mirrored or not — in every process, replica and restart.

Because a key's position never depends on the weights, raising the (single) canary's weight
from w to w' moves exactly the keys with position in [w, w') from stable to the canary and
no key the other way. With several canaries, growing canary *i* shifts the slices of the
canaries after it; keys only ever move towards lower-indexed canaries or off the stable one.

Shadow positions are shared by all shadows of a request: a shadow with fraction 0.1 sees a
subset of the requests a shadow with fraction 0.2 sees, and raising a fraction only adds keys.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from turnout.router.keyhash import route_position, shadow_position
from turnout.router.policy import TrafficPolicy

__all__ = ["RouteDecision", "decide", "route_position", "shadow_position"]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes.

    ``version`` answers the client; ``shadows`` receive a mirrored copy (never the answering
    version); ``sticky`` tells whether the choice came from a routing key (and so repeats for
    that key) rather than from the per-request random draw.
    """

    version: str
    shadows: tuple[str, ...]
    sticky: bool


def decide(policy: TrafficPolicy, routing_key: str | None, u: float, shadow_u: float) -> RouteDecision:
    """Route one request under ``policy``.

    ``u`` and ``shadow_u`` are uniform draws in [0, 1) (the caller passes
    ``rng.random()``); they are ignored when ``routing_key`` is given, in which case the
    positions come from the key. Pure: the same arguments always give the same decision.
    """
    canaries = policy.canaries
    shadows = policy.shadows
    sticky = routing_key is not None
    if not canaries and not shadows:
        return RouteDecision(policy.stable, (), sticky)

    version = policy.stable
    if canaries:
        position = u if routing_key is None else policy.key_hasher.route(routing_key)
        index = bisect_right(policy.cumulative, position)
        if index < len(canaries):
            version = canaries[index].version

    mirrored: tuple[str, ...] = ()
    if shadows:
        position = shadow_u if routing_key is None else policy.key_hasher.shadow(routing_key)
        mirrored = tuple([s.version for s in shadows if position < s.fraction and s.version != version])
    return RouteDecision(version, mirrored, sticky)
