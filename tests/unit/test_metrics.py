"""Tallies must expose exactly what direct Prometheus updates would, once flushed."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from turnout.server.observe.metrics import LATENCY_BUCKETS, Metrics

ROOT = Path(__file__).resolve().parents[2]


def _values(text: bytes) -> dict[str, float]:
    """Sample name+labels -> value of Turnout's own metrics, without the creation timestamps (which
    differ) and the process collector's samples (CPU time and memory move between two scrapes)."""
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(("#", "process_", "python_")) or "_created" in line:
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def test_flushed_tallies_expose_what_direct_updates_would() -> None:
    rng = random.Random(7)
    direct, tallied = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    # values on the bucket bounds, between them, below the first and above the last
    values = [*LATENCY_BUCKETS, 0.0, 1e-6, 20.0, *(rng.uniform(0, 0.3) for _ in range(300))]
    for i, v in enumerate(values):
        version = "1" if i % 3 else "2"
        direct.latency.labels("m", version, "grpc").observe(v)
        direct.requests.labels("m", version, "grpc", "ok").inc()
        direct.batch_size.labels("m", version).observe(i % 70)
        tallied.histogram_tally(tallied.latency, "m", version, "grpc").observe(v)
        tallied.counter_tally(tallied.requests, "m", version, "grpc", "ok").inc()
        tallied.histogram_tally(tallied.batch_size, "m", version).observe(i % 70)
        if i == 100:
            tallied.flush()  # a flush midway must neither lose nor repeat observations
    tallied.flush()
    tallied.flush()  # nothing new: adds nothing
    want = _values(generate_latest(direct.registry))
    got = _values(generate_latest(tallied.registry))
    assert set(got) == set(want)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9 * max(1.0, abs(value)), key


def test_exposition_flushes_first() -> None:
    m = Metrics(CollectorRegistry())
    m.histogram_tally(m.latency, "m", "1", "http").observe(0.002)
    m.counter_tally(m.requests, "m", "1", "http", "ok").inc(3)
    text = m.exposition().decode()
    assert 'turnout_requests_total{code="ok",model="m",protocol="http",version="1"} 3.0' in text
    assert (
        'turnout_request_duration_seconds_bucket{le="0.0025",model="m",protocol="http",version="1"} 1.0'
        in text
    )
    assert (
        'turnout_request_duration_seconds_bucket{le="0.001",model="m",protocol="http",version="1"} 0.0'
        in text
    )


def test_process_metrics_of_one_process() -> None:
    text = Metrics(CollectorRegistry()).exposition().decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text
    assert "python_info{" in text


_WORKER = """
import sys
from prometheus_client import CollectorRegistry
from turnout.server.observe.metrics import Metrics, exposition
m = Metrics(CollectorRegistry())
m.flush()
if sys.argv[1] == "scrape":
    print(exposition(CollectorRegistry()).decode())
"""


def test_process_metrics_of_several_workers_are_labelled_by_pid(tmp_path: Path) -> None:
    """prometheus_client picks multiprocess mode when first imported: each "worker" is a process."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", _WORKER, mode]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)

    run("write")
    text = run("scrape").stdout
    rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes{")]
    assert len(rss) == 2 and all('pid="' in line for line in rss), rss  # each worker's own series
    assert "python_info{" in text
    pids = [line.split('pid="')[1].split('"')[0] for line in rss]
    from prometheus_client import multiprocess

    for pid in pids:  # what the supervisor does for a worker that died
        multiprocess.mark_process_dead(int(pid), str(tmp_path))
    assert not any(p.name.startswith("gauge_liveall") for p in tmp_path.iterdir())


def test_samplers_set_gauges_from_live_state_at_every_flush() -> None:
    metrics = Metrics(CollectorRegistry())
    live = {"in_flight": 3}
    metrics.sample(lambda: metrics.inflight.set(live["in_flight"]))
    assert b"turnout_inflight_requests 3.0" in metrics.exposition()
    live["in_flight"] = 0
    assert b"turnout_inflight_requests 0.0" in metrics.exposition()
