"""The child side of a version served from processes of its own (``isolation: process``):
the entry point that builds the session and serves ``run`` calls over the pipe, and the logging
it inherits from the server (model_store/process_session.py is the parent side; the messages are
described there)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from turnout.model_store.session import ModelSession, SessionOptions
from turnout.protos.model_config_pb2 import ModelConfig

__all__ = ["ChildName", "child_main", "log_setup"]


def all_threads_normal() -> None:
    """Put every thread of this process (onnxruntime's pool threads too) back to SCHED_OTHER."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))


def log_setup() -> tuple[int, logging.Formatter | None]:
    """The parent's log level and line format, for a child to log as the server does. A
    formatter that cannot travel to the child (one holding a stream, say) gives way to
    logging's plain default."""
    root = logging.getLogger()
    formatter = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    try:
        pickle.dumps(formatter)
    except Exception:
        formatter = None
    return root.getEffectiveLevel(), formatter


class ChildName(logging.Filter):
    """Marks a child's records with the version and process they come from."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = f"{record.name}{self.suffix}"
        return True


def child_main(
    conn: Connection,
    name: str,
    version: str,
    version_dir: str,
    config_bytes: bytes,
    options: SessionOptions,
    sha256: str,
    log_setup: tuple[int, logging.Formatter | None],
) -> None:
    # Ctrl-C or SIGTERM to the process group are the parent's to handle; the child ends on
    # "close" or when the parent's end of the pipe closes (also when the parent is killed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the same stderr, level and line format as the server, each record marked with its origin
    level, formatter = log_setup
    handler = logging.StreamHandler(sys.stderr)
    if formatter is not None:
        handler.setFormatter(formatter)
    handler.addFilter(ChildName(f"[{name}/{version} pid {os.getpid()}]"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(level)
    log = logging.getLogger("turnout.model_store")
    t0, cpu0 = time.monotonic(), time.process_time()
    try:
        session = ModelSession(
            name, version, Path(version_dir), ModelConfig.FromString(config_bytes), options, sha256=sha256
        )
        session.warmup()
        reply: tuple[Any, ...] = ("ready", session.config.SerializeToString(), session.row_ns)
        log.info(
            "model %s version %s: session built and warmed up in %.2f s (%.2f s of CPU)",
            name,
            version,
            time.monotonic() - t0,
            time.process_time() - cpu0,
        )
    except Exception as exc:  # LoadError or anything onnxruntime raises: report, then exit
        reply = ("failed", str(exc))
    all_threads_normal()  # loaded at idle priority (where allowed): serve at normal priority
    try:
        conn.send(reply)
        while reply[0] == "ready":
            msg = conn.recv()
            if msg[0] != "run":
                return
            try:
                out = session.run(msg[1])
            except Exception as exc:
                conn.send(("error", str(exc)))
            else:
                conn.send(("ok", out))
    except (EOFError, OSError):  # the parent went away
        return
