"""server/grpc/failure.py: every exception becomes a status from the one table; only internal
errors are logged, and at most the rate limit's burst of them."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from model_store.errors import ModelNotFoundError
from server.errors import ERROR_TABLE, InvalidInput, QueueFull, TurnoutError
from server.grpc.failure import Failures


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize("cls", [c for c in ERROR_TABLE if issubclass(c, TurnoutError)])
def test_every_turnout_error_answers_its_table_code_and_is_not_logged(
    cls: type[TurnoutError], caplog: pytest.LogCaptureFixture
) -> None:
    failures = Failures(logging.getLogger("test.failure"))
    with caplog.at_level(logging.DEBUG, "test.failure"):
        code, message = failures.answer(cls("told to the client"))
    assert code == ERROR_TABLE[cls].grpc
    assert message == "told to the client"
    assert not caplog.records


def test_a_model_store_error_keeps_its_message() -> None:
    code, message = Failures(logging.getLogger("test.failure")).answer(ModelNotFoundError("no model 'x'"))
    assert code == ERROR_TABLE[ModelNotFoundError].grpc == grpc.StatusCode.NOT_FOUND
    assert "no model 'x'" in message


def test_an_unexpected_exception_is_internal_without_details_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = Failures(logging.getLogger("test.failure"))
    with caplog.at_level(logging.ERROR, "test.failure"):
        answers = [failures.answer(KeyError("secret internals")) for _ in range(50)]
    assert {a for a in answers} == {(grpc.StatusCode.INTERNAL, "internal error: KeyError")}
    logged = [r for r in caplog.records if r.getMessage().startswith("internal error")]
    assert 1 <= len(logged) <= failures.internal.burst
    assert logged[0].exc_info is not None  # the traceback is in the log, not in the answer


def test_abort_sends_the_answer() -> None:
    ctx = FakeContext()
    failures = Failures(logging.getLogger("test.failure"))
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(failures.abort(ctx, QueueFull("queue is full")))
    assert ctx.aborted == (ERROR_TABLE[QueueFull].grpc, "queue is full")
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(failures.abort(ctx, InvalidInput("bad dtype")))
    assert ctx.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "bad dtype")
