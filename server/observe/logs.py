"""Logging set-up: plain text for people, one JSON object per line for log pipelines."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            doc.update(event)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(verbose: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose >= 0 else logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds through ``logger``.

    For messages a client can cause at will (a malformed batch, a request that trips a bug):
    the first ``burst`` of each interval are written, the rest only counted, and the next line
    written after them is preceded by one "suppressed K similar messages" line. Thread-safe
    (the drift reader thread logs through it too)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._written = 0
        self.suppressed = 0  # dropped since the last line written

    def log(self, level: int, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Write one line (with ``exc_info``'s traceback if given) unless the interval's budget
        is spent; True when it was written."""
        now = self._clock()
        with self._lock:
            if self._window_start is None or now - self._window_start >= self.interval:
                self._window_start = now
                self._written = 0
            if self._written >= self.burst:
                self.suppressed += 1
                return False
            self._written += 1
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            self.logger.log(level, "suppressed %d similar messages", suppressed)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.ERROR, msg, *args, exc_info=exc_info)
