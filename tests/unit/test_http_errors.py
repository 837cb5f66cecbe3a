"""The one HTTP error path (server/http/errors.py): every class of the error table and an
unexpected exception go through ``error_answer``; only the server's own failures are logged,
with their traceback, rate-limited."""

from __future__ import annotations

import logging

import orjson
import pytest

import turnout.server.errors as errors
from turnout.server.errors import ERROR_TABLE, INTERNAL, TurnoutError, public_message, wire_status
from turnout.server.http.errors import error_answer
from turnout.server.observe.logs import RateLimitedLog


@pytest.fixture
def fresh_log(monkeypatch: pytest.MonkeyPatch) -> RateLimitedLog:
    limited = RateLimitedLog(logging.getLogger("turnout.errors"), burst=3, interval=3600.0)
    monkeypatch.setattr(errors, "INTERNAL_LOG", limited)
    return limited


def instance(cls: type[BaseException]) -> BaseException:
    exc = cls.__new__(cls)
    try:
        cls.__init__(exc, "the message")
    except TypeError:
        Exception.__init__(exc, "the message")
    if isinstance(exc, TurnoutError):
        exc.message = "the message"
    return exc


@pytest.mark.parametrize("cls", list(ERROR_TABLE), ids=lambda c: c.__name__)
def test_each_error_class_gets_its_table_status_and_message(
    cls: type[BaseException], fresh_log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "turnout.errors")
    exc = instance(cls)
    status, body = error_answer(exc)
    assert status == ERROR_TABLE[cls].http
    assert orjson.loads(body) == {"error": public_message(exc)}
    assert "the message" in public_message(exc)
    logged = [r for r in caplog.records if r.name == "turnout.errors"]
    internal = not issubclass(cls, TurnoutError) and status >= 500
    assert len(logged) == (1 if internal else 0)
    if internal:
        assert logged[0].exc_info is not None and logged[0].exc_info[1] is exc


def test_an_unexpected_exception_is_a_logged_500_that_hides_its_message(
    fresh_log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "turnout.errors")
    bug: BaseException | None = None
    try:
        {}["secret"]  # a bug, raised with a traceback
    except KeyError as exc:
        bug = exc
    assert bug is not None and wire_status(bug) is INTERNAL
    status, body = error_answer(bug)
    assert status == 500
    assert orjson.loads(body) == {"error": "internal error: KeyError"}
    assert b"secret" not in body
    (record,) = caplog.records
    assert record.getMessage() == "internal error: KeyError"
    assert record.exc_info is not None and record.exc_info[1] is bug  # the traceback is in the log


def test_internal_errors_are_rate_limited(
    fresh_log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "turnout.errors")
    for _ in range(10):
        assert error_answer(RuntimeError("bug"))[0] == 500
    assert len(caplog.records) == 3 and fresh_log.suppressed == 7


def test_client_errors_never_spend_the_budget(
    fresh_log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "turnout.errors")
    for cls in ERROR_TABLE:
        if issubclass(cls, TurnoutError):
            error_answer(instance(cls))
    assert caplog.records == [] and fresh_log.suppressed == 0
