"""The one place gRPC methods turn an exception into their answer: the status code and message
come from server/errors.py's table, and the server's own failures are logged once, rate-limited,
by the rule HTTP follows too (``log_internal``)."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from turnout.server.errors import log_internal, public_message, wire_status


def answer(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and message for ``exc``, logging it if it is the server's failure."""
    log_internal(exc)
    return wire_status(exc).grpc, public_message(exc)


async def abort(ctx: Any, exc: BaseException) -> NoReturn:
    code, message = answer(exc)
    await ctx.abort(code, message)
    raise AssertionError("ServicerContext.abort returned")  # it raises; this satisfies NoReturn
