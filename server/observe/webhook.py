"""Signed webhook delivery off the request path: a bounded queue, one sender thread, retries
with exponential backoff.

Each attempt is a JSON POST of the same body with two headers: ``X-Turnout-Timestamp`` (unix
seconds of the attempt) and ``X-Turnout-Signature: sha256=<hex>``, the HMAC-SHA256 under the
shared secret of ``<timestamp>.<raw body>``. A receiver recomputes it over the raw bytes it
received, compares in constant time and refuses timestamps older than a few minutes, so a
captured request cannot be replayed later (:func:`verify` is the reference check). The secret
is held as a ``SecretStr`` and never logged.

:func:`signature` and :func:`retry_delays` are pure; :class:`WebhookSender` takes its clock,
sleep and HTTP call as arguments so tests drive it without a network or real time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

log = logging.getLogger("turnout.webhook")

SIGNATURE_HEADER = "X-Turnout-Signature"
TIMESTAMP_HEADER = "X-Turnout-Timestamp"
REPLAY_TOLERANCE_S = 300.0

# (url, body, headers, timeout) -> HTTP status; raises OSError when nothing answered
Post = Callable[[str, bytes, Mapping[str, str], float], int]


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: bytes | None, body: bytes, now: float) -> dict[str, str]:
    """The headers of one attempt (no signature without a secret)."""
    timestamp = str(int(now))
    headers = {"content-type": "application/json", TIMESTAMP_HEADER: timestamp}
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return headers


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str,
    sig: str,
    now: float,
    tolerance: float = REPLAY_TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(signature(secret, timestamp, body), sig)


def retry_delays(retries: int, base: float, cap: float = 60.0) -> list[float]:
    """Seconds to wait before each retry: ``base``, ``2*base``, ``4*base``... at most ``cap``."""
    return [min(cap, base * 2**i) for i in range(max(0, retries))]


def urllib_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class WebhookSender:
    """Delivers JSON events to one URL from a background thread; :meth:`submit` never blocks.

    ``on_outcome(event, outcome)`` is told ``delivered``, ``failed`` (every attempt failed) or
    ``dropped`` (the queue was full)."""

    def __init__(
        self,
        url: str,
        secret: SecretStr | None,
        *,
        retries: int,
        backoff: float,
        queue_size: int,
        clock: Callable[[], float],
        on_outcome: Callable[[Mapping[str, Any], str], None],
        post: Post = urllib_post,
        sleep: Callable[[float], None] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._secret = secret
        self._delays = retry_delays(retries, backoff)
        self._clock = clock
        self._on_outcome = on_outcome
        self._post = post
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait  # wait(): a stop cuts a backoff short
        self._timeout = timeout
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookSender:
        self._thread = threading.Thread(target=self._run, name="turnout-webhook", daemon=True)
        self._thread.start()
        return self

    def submit(self, event: Mapping[str, Any]) -> bool:
        """Queue ``event``; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._on_outcome(event, "dropped")
            return False
        return True

    def deliver(self, event: Mapping[str, Any]) -> bool:
        """Send one event, retrying on errors and non-2xx answers; True once delivered."""
        body = json.dumps(event, default=str, separators=(",", ":")).encode()
        secret = self._secret.get_secret_value().encode() if self._secret is not None else None
        attempts = len(self._delays) + 1
        for attempt in range(attempts):
            try:
                status = self._post(
                    self.url, body, signed_headers(secret, body, self._clock()), self._timeout
                )
                problem = None if 200 <= status < 300 else f"HTTP {status}"
            except OSError as exc:
                problem = str(exc)
            if problem is None:
                self._on_outcome(event, "delivered")
                return True
            if attempt + 1 < attempts and not self._stopping.is_set():
                delay = self._delays[attempt]
                log.info(
                    "webhook %s: attempt %d failed (%s); retrying in %.1fs",
                    self.url,
                    attempt + 1,
                    problem,
                    delay,
                )
                self._sleep(delay)
            else:
                log.warning("webhook %s: giving up after %d attempts (%s)", self.url, attempt + 1, problem)
                break
        self._on_outcome(event, "failed")
        return False

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self.deliver(event)
            except Exception:  # a bad event must not end delivery of the next ones
                log.exception("webhook %s: delivery failed", self.url)

    def close(self, timeout: float = 5.0) -> None:
        """Stop: no more backoff waits; queued events get one attempt each until ``timeout``."""
        self._stopping.set()
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)  # behind the queued events, as the thread drains them
        except queue.Full:
            return  # still busy: the thread is a daemon and ends with the process
        self._thread.join(timeout)
