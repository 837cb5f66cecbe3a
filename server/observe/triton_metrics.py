"""Triton's ``nv_inference_*`` metrics, derived from the statistics extension's counters.

Nothing is counted twice and nothing is added to the request path: the values are read from
the same :class:`~server.observe.stats.VersionStats` that ``/v2/models/{m}/stats`` and gRPC
ModelStatistics report, when ``/metrics`` is scraped (one process) or when
:meth:`TritonMetrics.flush` runs before a scrape and once a second (several workers). So the two
views agree by construction. The text is written here rather than by prometheus_client, which
would name a counter's samples ``..._total``.

Names, labels and meaning follow Triton: ``nv_inference_request_success`` and
``nv_inference_request_failure{reason}`` count requests; ``nv_inference_count`` counts
inferences (batch rows); ``nv_inference_exec_count`` counts batch executions; the
``*_duration_us`` counters are cumulative microseconds (request duration of successful requests,
queue time, and compute time as the statistics count it). Triton exposes them as counters
without a ``_total`` suffix, and so do we.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from turnout.server.observe.stats import VersionStats

# Triton's failure reasons (``nv_inference_request_failure{reason}``)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(frozen=True, slots=True)
class NvMetric:
    name: str
    documentation: str
    value: Callable[[VersionStats], int]


NV_METRICS = (
    NvMetric(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    NvMetric(
        "nv_inference_count", "Number of inferences performed (batch rows)", lambda s: s.inference_count
    ),
    NvMetric(
        "nv_inference_exec_count",
        "Number of model executions performed (batches)",
        lambda s: s.execution_count,
    ),
    NvMetric(
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: s.success.ns // 1000,
    ),
    NvMetric(
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    NvMetric(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
)
FAILURE = NvMetric(
    "nv_inference_request_failure",
    "Number of failed inference requests, all batch sizes",
    lambda s: s.fail.count,
)
NV_NAMES = frozenset([m.name for m in NV_METRICS] + [FAILURE.name])


def failure_reason(grpc_code: str) -> str:
    """Triton's failure reason for a request that failed with ``grpc_code`` (lower-case name):
    refused by the scheduler (queue full, queue timeout, shutting down), cancelled by the
    client, failed in the runtime, or anything else (bad input)."""
    if grpc_code in ("resource_exhausted", "deadline_exceeded", "unavailable"):
        return "REJECTED"
    if grpc_code == "cancelled":
        return "CANCELED"
    if grpc_code in ("internal", "unknown"):
        return "BACKEND"
    return "OTHER"


def nv_samples(stats: Iterable[VersionStats]) -> Iterator[tuple[str, dict[str, str], int]]:
    """(metric name, labels, value) for every nv_* series of ``stats`` (a pure function)."""
    for s in stats:
        labels = {"model": s.name, "version": s.version}
        for m in NV_METRICS:
            yield m.name, labels, m.value(s)
        for reason in FAILURE_REASONS:
            yield FAILURE.name, {**labels, "reason": reason}, s.fail_reasons.get(reason, 0)


def render(samples: Iterable[tuple[str, dict[str, str], float]]) -> bytes:
    """Text exposition of nv_* samples as Triton writes it: ``# TYPE <name> counter`` and
    samples of that very name (prometheus_client would name a counter's samples ``_total``)."""
    by_name: dict[str, list[str]] = {}
    for name, labels, value in samples:
        labelstr = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        by_name.setdefault(name, []).append(f"{name}{{{labelstr}}} {_number(value)}\n")
    out: list[str] = []
    for m in (*NV_METRICS, FAILURE):
        lines = by_name.get(m.name)
        if lines:
            out += [f"# HELP {m.name} {m.documentation}\n", f"# TYPE {m.name} counter\n", *lines]
    return "".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class TritonMetrics:
    """The nv_* metrics of one process. :meth:`attach` names where the statistics come from
    (the core, created after the metrics).

    One process: :meth:`exposition` reads the statistics at scrape time. Several workers: a
    scrape reads the files every worker writes, so :meth:`flush` copies this worker's cumulative
    values into gauges of multiprocess mode ``sum`` (a worker that exits keeps its last values in
    the sum, as a counter should), and :func:`split` takes them out of the merged families to be
    written by :func:`render` as counters."""

    def __init__(self, registry: CollectorRegistry, multiprocess: bool) -> None:
        self._registry = registry
        self._multiprocess = multiprocess
        self._source: Callable[[], Iterable[VersionStats]] | None = None
        self._gauges: dict[str, Gauge] = {}

    def attach(self, source: Callable[[], Iterable[VersionStats]]) -> None:
        self._source = source
        if not self._multiprocess:
            return
        for m in (*NV_METRICS, FAILURE):
            labels = ["model", "version", "reason"] if m is FAILURE else ["model", "version"]
            self._gauges[m.name] = Gauge(
                m.name, m.documentation, labels, registry=self._registry, multiprocess_mode="sum"
            )

    def flush(self) -> None:
        if not self._multiprocess or self._source is None:
            return
        for name, labels, value in nv_samples(self._source()):
            self._gauges[name].labels(**labels).set(value)

    def exposition(self) -> bytes:
        """This process's nv_* text (one process; empty with several workers, see :func:`split`)."""
        if self._multiprocess or self._source is None:
            return b""
        return render(nv_samples(self._source()))


class Split:
    """A collector of ``families`` without the nv_* ones, which are kept in :attr:`nv`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.rest: list[Metric] = []
        self.nv: list[tuple[str, dict[str, str], float]] = []
        for family in families:
            if family.name in NV_NAMES:
                self.nv += [(s.name, s.labels, s.value) for s in family.samples]
            else:
                self.rest.append(family)

    def collect(self) -> Iterable[Metric]:
        return self.rest
