"""What a model process is told about logging: the server's level and format, or logging's
plain default when the server's formatter cannot be sent to another process."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from turnout.model_store.process_child import ChildName, log_setup


class _StreamFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(message)s")
        self.stream = io.TextIOWrapper(io.BytesIO())  # cannot be pickled


@pytest.fixture
def root_handler() -> Iterator[logging.Handler]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    handler = logging.StreamHandler(io.StringIO())
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_the_servers_level_and_format_travel(root_handler: logging.Handler) -> None:
    root_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level, formatter = log_setup()
    assert level == logging.WARNING
    assert formatter is not None and formatter._fmt == "%(levelname)s %(name)s: %(message)s"


def test_a_formatter_that_cannot_be_pickled_gives_way(root_handler: logging.Handler) -> None:
    root_handler.setFormatter(_StreamFormatter())
    assert log_setup() == (logging.WARNING, None)


def test_records_are_marked_with_their_origin() -> None:
    record = logging.LogRecord("turnout.model_store", logging.INFO, __file__, 1, "hello", (), None)
    assert ChildName("[mlp/2 pid 7]").filter(record)
    assert record.name == "turnout.model_store[mlp/2 pid 7]"
