"""The one way an exception becomes an HTTP answer: the status the error table
(server/errors.py) gives it and a ``{"error": message}`` JSON body. Every HTTP error path --
the Starlette routes, the inference route and the protocol's fast path -- answers through
:func:`error_answer`, which also logs internal errors (once, rate-limited)."""

from __future__ import annotations

from turnout.server.errors import log_internal, public_message, wire_status
from turnout.server.http.codec import dumps

JSON = "application/json"


def error_body(message: str) -> bytes:
    """The JSON body of an error answer."""
    return dumps({"error": message})


def error_answer(exc: BaseException) -> tuple[int, bytes]:
    """HTTP status and JSON body for ``exc``; an internal error is logged (rate-limited), a
    client's is not. The body never carries an internal error's message or traceback."""
    log_internal(exc)
    return wire_status(exc).http, error_body(public_message(exc))
