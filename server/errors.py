"""One error hierarchy for the whole server, and the one table that maps it to the wire.

Every failure a client can see is a :class:`TurnoutError`. Transports never invent status
codes: they look the exception class up in :data:`ERROR_TABLE` (HTTP status, gRPC code).
Anything that is not a ``TurnoutError`` is an internal error and is reported as such,
without leaking a traceback to the client; :func:`log_internal` is the one rule for which
failures the server logs (every transport's error path calls it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from turnout.model_store.errors import (
    LoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    VersionNotFoundError,
)
from turnout.router.controller import NotConfigured, PolicyRefused
from turnout.router.policy import PolicyError
from turnout.router.rollout import RolloutError
from turnout.router.store import StoreConflict, StoreError
from turnout.server.observe.logs import RateLimitedLog


class TurnoutError(Exception):
    """Base class of every error a client can be told about."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(TurnoutError):
    """The request is malformed or does not match the model signature."""


class PayloadTooLarge(InvalidInput):
    """The request body or a tensor is larger than the configured limit."""


class NotFound(TurnoutError):
    """Unknown model, version, tensor or resource."""


class ModelNotReady(TurnoutError):
    """The model exists but no version of it can serve right now."""


class QueueFull(TurnoutError):
    """The model's queue is full; the client should back off and retry."""


class RequestTimeout(TurnoutError):
    """The request spent longer than its timeout waiting in a queue."""


class Cancelled(TurnoutError):
    """The client went away before the request was executed."""


class Unauthenticated(TurnoutError):
    """Missing or wrong credentials."""


class PermissionDenied(TurnoutError):
    """Credentials are fine but the caller may not do this here."""


class Conflict(TurnoutError):
    """The request conflicts with the current state (e.g. a policy onto an unloaded version)."""


class Unimplemented(TurnoutError):
    """A protocol feature Turnout does not provide."""


class ModelLoadError(TurnoutError):
    """A model version could not be loaded (corrupt file, bad config, ...)."""


class InferenceFailed(TurnoutError):
    """The runtime failed while executing an otherwise valid request."""


class Unavailable(TurnoutError):
    """The server is shutting down or a dependency is unavailable."""


@dataclass(frozen=True, slots=True)
class WireStatus:
    http: int
    grpc: grpc.StatusCode


# The one table. Order matters only through the class hierarchy: lookups walk the MRO,
# so a subclass without an entry inherits its parent's codes.
ERROR_TABLE: dict[type[BaseException], WireStatus] = {
    PayloadTooLarge: WireStatus(413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    InvalidInput: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    NotFound: WireStatus(404, grpc.StatusCode.NOT_FOUND),
    ModelNotReady: WireStatus(503, grpc.StatusCode.UNAVAILABLE),
    QueueFull: WireStatus(503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    RequestTimeout: WireStatus(504, grpc.StatusCode.DEADLINE_EXCEEDED),
    Cancelled: WireStatus(499, grpc.StatusCode.CANCELLED),
    Unauthenticated: WireStatus(401, grpc.StatusCode.UNAUTHENTICATED),
    PermissionDenied: WireStatus(403, grpc.StatusCode.PERMISSION_DENIED),
    Conflict: WireStatus(409, grpc.StatusCode.FAILED_PRECONDITION),
    Unimplemented: WireStatus(501, grpc.StatusCode.UNIMPLEMENTED),
    ModelLoadError: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    InferenceFailed: WireStatus(500, grpc.StatusCode.INTERNAL),
    Unavailable: WireStatus(503, grpc.StatusCode.UNAVAILABLE),
    TurnoutError: WireStatus(500, grpc.StatusCode.INTERNAL),
    ModelNotFoundError: WireStatus(404, grpc.StatusCode.NOT_FOUND),
    VersionNotFoundError: WireStatus(404, grpc.StatusCode.NOT_FOUND),
    ModelUnavailableError: WireStatus(503, grpc.StatusCode.UNAVAILABLE),
    LoadError: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    PolicyError: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    PolicyRefused: WireStatus(409, grpc.StatusCode.FAILED_PRECONDITION),
    RolloutError: WireStatus(409, grpc.StatusCode.FAILED_PRECONDITION),
    NotConfigured: WireStatus(404, grpc.StatusCode.NOT_FOUND),
    StoreConflict: WireStatus(503, grpc.StatusCode.UNAVAILABLE),
    StoreError: WireStatus(503, grpc.StatusCode.UNAVAILABLE),
}

INTERNAL = WireStatus(500, grpc.StatusCode.INTERNAL)


def wire_status(exc: BaseException) -> WireStatus:
    """HTTP status and gRPC code for ``exc`` (internal error for anything unknown)."""
    for cls in type(exc).__mro__:
        status = ERROR_TABLE.get(cls)
        if status is not None:
            return status
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """What the client is told: our own message, never an internal traceback."""
    if isinstance(exc, TurnoutError):
        return exc.message
    if wire_status(exc) is not INTERNAL:  # a model store error: its message is for clients
        return str(exc)
    return f"internal error: {type(exc).__name__}"


# One limiter for every transport: a client repeating a request that trips a bug cannot flood
# the log, whichever protocol it uses.
INTERNAL_LOG = RateLimitedLog(logging.getLogger("turnout.errors"))


def log_internal(exc: BaseException) -> None:
    """Log ``exc`` with its traceback (rate-limited) when it is the server's failure rather than
    the client's: a 5xx that is not one of our own errors (a bug, a model-store or state-store
    failure). Our own errors are answers, not incidents, and are not logged."""
    if not isinstance(exc, TurnoutError) and wire_status(exc).http >= 500:
        INTERNAL_LOG.error("internal error: %s", type(exc).__name__, exc_info=exc)
