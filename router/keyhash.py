"""Stable positions in [0, 1) for routing keys.

A routing key (user or session id) is mapped to a position by a BLAKE2b digest of the model
name and the key, so the same key lands on the same position in every process, replica and
restart. (Python's ``hash()`` is salted per process and must not be used for this.) Two
BLAKE2b personalisations give two independent positions: one picks the answering version,
the other decides mirroring to shadows.

The model name is length-prefixed so ("ab", "c") and ("a", "bc") differ. The top 53 bits of
the 64-bit digest are scaled to a double, which is then exactly uniform over multiples of
2**-53 in [0, 1).
"""

from __future__ import annotations

import hashlib
from typing import Any

_ROUTE_PERSON = b"turnout.route"
_SHADOW_PERSON = b"turnout.shadow"
_DROP_BITS = 64 - 53
_TWO_TO_MINUS_53 = 2.0**-53


def _seeded(person: bytes, model: str) -> Any:
    model_bytes = model.encode("utf-8", "surrogatepass")
    hasher = hashlib.blake2b(digest_size=8, person=person)
    hasher.update(len(model_bytes).to_bytes(4, "big") + model_bytes)
    return hasher


class KeyHasher:
    """Positions of routing keys for one model; seeded once so each key costs one small hash."""

    __slots__ = ("_model", "_route", "_shadow")

    def __init__(self, model: str) -> None:
        self._model = model
        self._route = _seeded(_ROUTE_PERSON, model)
        self._shadow = _seeded(_SHADOW_PERSON, model)

    def route(self, key: str) -> float:
        """Position that picks the answering version."""
        hasher = self._route.copy()
        hasher.update(key.encode("utf-8", "surrogatepass"))
        return (int.from_bytes(hasher.digest(), "big") >> _DROP_BITS) * _TWO_TO_MINUS_53

    def shadow(self, key: str) -> float:
        """Position that decides mirroring, independent of :meth:`route`."""
        hasher = self._shadow.copy()
        hasher.update(key.encode("utf-8", "surrogatepass"))
        return (int.from_bytes(hasher.digest(), "big") >> _DROP_BITS) * _TWO_TO_MINUS_53

    def __reduce__(self) -> tuple[type[KeyHasher], tuple[str]]:
        return (KeyHasher, (self._model,))  # hashlib objects do not pickle; rebuild from the model


def route_position(model: str, key: str) -> float:
    """The stable routing position in [0, 1) of ``key`` for ``model``."""
    return KeyHasher(model).route(key)


def shadow_position(model: str, key: str) -> float:
    """The stable shadow position in [0, 1) of ``key`` for ``model``."""
    return KeyHasher(model).shadow(key)
