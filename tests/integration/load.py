"""A small closed-loop load driver for tests: threads sending requests until told to stop,
bounded in count and time, recording every outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


@dataclass
class Outcome:
    t0: float
    t1: float
    version: str
    output: np.ndarray | None
    error: str | None
    protocol: str
    key: str | None = None
    input: np.ndarray | None = None


@dataclass
class LoadDriver:
    url_grpc: str
    url_http: str
    model: str
    make_input: Callable[[int], np.ndarray]
    input_name: str = "input"
    output_name: str = "output"
    threads_per_protocol: int = 1
    # max_seconds is meant to be the binding bound: a request count low enough to bind on a fast
    # machine stops the load before a slow one's scenario is over (as it once did in CI).
    max_requests: int = 400_000
    max_seconds: float = 60.0
    routing_key: Callable[[int], str | None] = lambda i: None
    model_version: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LoadDriver:
        for proto in ("grpc", "http"):
            for n in range(self.threads_per_protocol):
                t = threading.Thread(target=self._loop, args=(proto, n), daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.outcomes

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def running(self) -> bool:
        """Whether some sending thread is still going (none stops before its count or time bound)."""
        return any(t.is_alive() for t in self._threads)

    def seen(self, version: str) -> bool:
        """Whether some request has been answered by ``version`` so far."""
        with self._lock:
            return any(o.version == version for o in self.outcomes)

    def _loop(self, proto: str, n: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        if proto == "grpc":
            gc = grpcclient.InferenceServerClient(self.url_grpc)
        else:
            hc = httpclient.InferenceServerClient(self.url_http, connection_timeout=30, network_timeout=30)
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline and self.count() < self.max_requests:
            x = self.make_input(i)
            key = self.routing_key(i)
            i += 1
            t0 = time.monotonic()
            try:
                if proto == "grpc":
                    inp = grpcclient.InferInput(self.input_name, list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    headers = {"x-routing-key": key} if key else None
                    res = gc.infer(self.model, [inp], model_version=self.model_version, headers=headers)
                    out = Outcome(
                        t0,
                        time.monotonic(),
                        res.get_response().model_version,
                        res.as_numpy(self.output_name),
                        None,
                        proto,
                        key,
                        x,
                    )
                else:
                    hinp = httpclient.InferInput(self.input_name, list(x.shape), "FP32")
                    hinp.set_data_from_numpy(x, binary_data=True)
                    headers = {"x-routing-key": key} if key else None
                    hres = hc.infer(self.model, [hinp], model_version=self.model_version, headers=headers)
                    out = Outcome(
                        t0,
                        time.monotonic(),
                        hres.get_response()["model_version"],
                        hres.as_numpy(self.output_name),
                        None,
                        proto,
                        key,
                        x,
                    )
            except Exception as exc:
                out = Outcome(t0, time.monotonic(), "", None, f"{type(exc).__name__}: {exc}", proto, key, x)
            with self._lock:
                self.outcomes.append(out)
        if proto == "grpc":
            gc.close()
        else:
            hc.close()
