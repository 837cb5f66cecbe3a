"""server/grpc/failure.py: every exception becomes a status from the one table; only the server's
own failures are logged (the rule HTTP follows too), at most the rate limit's burst of them."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from turnout.model_store.errors import ModelNotFoundError
from turnout.server.errors import ERROR_TABLE, INTERNAL_LOG, InvalidInput, QueueFull, TurnoutError
from turnout.server.grpc import failure


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
    with caplog.at_level(logging.DEBUG, "turnout.errors"):
        code, message = failure.answer(cls("told to the client"))
    assert code == ERROR_TABLE[cls].grpc
    assert message == "told to the client"
    assert not caplog.records


def test_a_model_store_error_keeps_its_message() -> None:
    code, message = failure.answer(ModelNotFoundError("no model 'x'"))
    assert code == ERROR_TABLE[ModelNotFoundError].grpc == grpc.StatusCode.NOT_FOUND
    assert "no model 'x'" in message


def test_an_unexpected_exception_is_internal_without_details_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(INTERNAL_LOG, "_window_start", None)  # a fresh interval for this test
    with caplog.at_level(logging.ERROR, "turnout.errors"):
        answers = [failure.answer(KeyError("secret internals")) for _ in range(50)]
    assert set(answers) == {(grpc.StatusCode.INTERNAL, "internal error: KeyError")}
    logged = [r for r in caplog.records if r.getMessage().startswith("internal error")]
    assert 1 <= len(logged) <= INTERNAL_LOG.burst
    assert logged[0].exc_info is not None  # the traceback is in the log, not in the answer


def test_abort_sends_the_answer() -> None:
    ctx = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(failure.abort(ctx, QueueFull("queue is full")))
    assert ctx.aborted == (ERROR_TABLE[QueueFull].grpc, "queue is full")
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(failure.abort(ctx, InvalidInput("bad dtype")))
    assert ctx.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "bad dtype")
