"""The one place gRPC methods turn an exception into their answer: the status code and message
come from server/errors.py's table; an internal error (a bug, not the client's doing) is logged
with its traceback, rate-limited, so a client repeating it cannot flood the log."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from server.errors import TurnoutError, public_message, wire_status
from server.observe.logs import RateLimitedLog


class Failures:
    """Answers for one service's methods; ``logger`` names the service in the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self.internal = RateLimitedLog(logger)

    def answer(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """The code and message for ``exc``, logging it if it is internal."""
        status = wire_status(exc)
        if status.grpc == grpc.StatusCode.INTERNAL and not isinstance(exc, TurnoutError):
            self.internal.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return status.grpc, public_message(exc)

    async def abort(self, ctx: Any, exc: BaseException) -> NoReturn:
        code, message = self.answer(exc)
        await ctx.abort(code, message)
        raise AssertionError("ServicerContext.abort returned")  # it raises; this satisfies NoReturn
