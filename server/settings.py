"""Server settings: one frozen, validated object built at start from flags, ``TURNOUT_*``
environment variables and defaults (in that order of precedence). Nothing reads settings
at import time; the object is passed to whatever needs it.

Each field is declared once, with its help text as ``description``: ``server/flags.py`` makes
the ``turnout serve`` flags and their help from these fields. A field with
``json_schema_extra={"cli": False}`` has no flag (environment only); ``"aliases"`` lists
further flag names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from turnout.drift.config import DriftConfig

DEMO_REPOSITORY = Path(__file__).resolve().parent.parent / "model_store" / "demo" / "repository"

# the help's sections: the first field of each, with its title
SECTIONS = {
    "model_repository": "repository and model control",
    "workers": "processes",
    "host": "network",
    "exit_timeout_secs": "limits",
    "max_streams_per_connection": "edge limits (what one client may hold)",
    "intra_op_threads": "onnxruntime",
    "batching": "dynamic batching (overrides for every model when set)",
    "state_dir": "control plane",
    "drift": "drift monitoring",
    "request_log_dir": "request logging and ground-truth feedback",
    "dashboard_interval_secs": "dashboard",
    "retrain_webhook_url": "retraining hook (docs/operations.md)",
    "auth_tokens_file": "access control and mTLS",
    "log_verbose": "logging",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNOUT_", frozen=True, extra="forbid")

    # repository and model control (names follow tritonserver's flags)
    model_repository: str = Field(
        str(DEMO_REPOSITORY), description="model repository: a directory or s3://bucket/prefix"
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="endpoint of an S3-compatible store (MinIO, Ceph, ...) for s3:// repositories;"
        " AWS_* variables also apply",
    )
    repository_cache_dir: Path | None = Field(
        None, description="local mirror of a remote repository (unset: a temporary directory)"
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load every model at start; poll: also rescan the repository;"
        " explicit: load only --load-model and what the repository API asks for",
    )
    repository_poll_secs: float = Field(15.0, gt=0, description="poll mode: seconds between rescans")
    repository_settle_secs: float = Field(
        1.0, ge=0, description="poll mode: a version's files must be unchanged this long before it loads"
    )
    load_model: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="explicit mode: models to load at start, comma-separated or repeated; '*' for all",
    )
    strict_model_config: bool = Field(False, description="require inputs and outputs in config.pbtxt")
    single_model: str | None = Field(
        None,
        description="the repository directory holds one model's files (KServe's /mnt/models: a .onnx"
        " file or numbered version directories, config.pbtxt optional): serve them as this model"
        " (docs/kubernetes.md)",
    )

    # processes
    workers: int = Field(1, ge=1, description="server processes sharing the ports (SO_REUSEPORT)")
    worker_id: int | None = Field(
        None,
        description="set by the supervisor for each of its workers (TURNOUT_WORKER_ID)",
        json_schema_extra={"cli": False},
    )

    # network
    host: str = Field(
        "0.0.0.0",
        description="address to bind, both protocols",
        json_schema_extra={"aliases": ["--http-address"]},
    )
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 for any free port")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 for any free port")
    allow_http: bool = Field(True, description="serve HTTP")
    allow_grpc: bool = Field(True, description="serve gRPC")
    grpc_transport: Literal["asyncio", "grpcio"] = Field(
        "asyncio",
        description="gRPC server: asyncio (Turnout's HTTP/2 server on the event loop) or grpcio's"
        " asyncio server (benchmarks/results/NOTES.md)",
    )
    grpc_h2_engine: Literal["turnout", "h2"] = Field(
        "turnout",
        description="asyncio transport: the HTTP/2 core, Turnout's or the h2 library's (a measuring"
        " instrument, for comparison)",
    )
    grpc_experiments: str = Field(
        "",
        description="grpcio transport: grpc core experiments, in GRPC_EXPERIMENTS syntax ('' = grpc's"
        " own); '-event_engine_listener' lowers latency at low concurrency and costs throughput under"
        " load. A GRPC_EXPERIMENTS environment variable wins",
    )
    ports_file: Path | None = Field(
        None, description="write the bound ports as JSON to this file once serving (useful with port 0)"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: serve both protocols over TLS")
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert")

    # limits
    exit_timeout_secs: float = Field(
        30.0, ge=0, description="on SIGTERM, how long requests in flight may take to finish"
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="largest request body or message accepted"
    )
    max_inflight: int = Field(
        256,
        gt=0,
        description="inference requests in progress per protocol before new ones get"
        " RESOURCE_EXHAUSTED / 503 at once",
    )
    max_connections: int = Field(
        10_000,
        gt=0,
        description="connections per protocol; beyond, new ones are closed at once (lowered to fit"
        " the open-files limit)",
    )
    http_fast_path: bool = Field(
        True, description="answer inference requests inside the HTTP protocol, without ASGI"
    )
    busy_poll_us: float = Field(
        500.0,
        ge=0,
        description="after network input, keep the event loop polling instead of sleeping this long:"
        " lower latency for one-at-a-time clients, up to a core of CPU while they send (0 = off)",
    )

    # the edge: what one client may hold (server/grpc/limits.py, server/http/protocol.py)
    max_streams_per_connection: int = Field(100, gt=0, description="gRPC: concurrent streams per connection")
    handshake_timeout_secs: float = Field(
        10.0,
        gt=0,
        description="from accept to the TLS handshake and HTTP/2 preface, or an HTTP request's first byte",
    )
    header_timeout_secs: float = Field(
        10.0, gt=0, description="HTTP: from a request's first byte to its last header"
    )
    request_timeout_secs: float = Field(
        60.0, gt=0, description="from a request's headers to its last byte, both protocols"
    )
    idle_timeout_secs: float = Field(
        300.0,
        ge=0,
        description="gRPC: GOAWAY to a connection with no stream and no frame this long; a streamed"
        " call that receives nothing this long ends (0 = off)",
    )
    max_connection_age_secs: float | None = Field(
        None,
        gt=0,
        description="gRPC: GOAWAY to connections older than this, so that clients reconnect and L4"
        " balancers rebalance (unset: off)",
    )
    max_connection_age_grace_secs: float = Field(
        30.0, ge=0, description="after --max-connection-age-secs, calls still running get this long"
    )
    write_timeout_secs: float = Field(
        30.0, gt=0, description="close a connection whose peer reads none of its answers this long"
    )
    max_queued_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="gRPC: answer bytes waiting for a slow peer before its connection opens no new streams",
    )
    http_max_header_bytes: int = Field(64 * 1024, gt=0, description="HTTP: request line and headers, at most")
    http_max_headers: int = Field(100, gt=0, description="HTTP: header fields per request, at most")

    # onnxruntime
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads per session")
    inter_op_threads: int = Field(1, ge=0, description="onnxruntime inter-op threads per session")
    ort_spinning: bool = Field(False, description="let onnxruntime threads spin-wait")
    default_max_batch_size: int = Field(
        32,
        ge=0,
        description="max_batch_size of models without a config whose graph has a dynamic batch"
        " dimension (0 = no batching)",
    )
    inline_compute_us: float = Field(
        50.0,
        ge=0,
        description="run a batch on the event loop instead of a thread when it is expected to take"
        " less than this (0 = always a thread)",
    )
    inline_compute_idle_us: float = Field(
        1000.0,
        ge=0,
        description="with no other request in flight, also run a batch expected to take less than"
        " this on the event loop (a one-at-a-time client then skips two thread hand-offs)",
    )
    infer_threads: int = Field(2, ge=1, description="threads that run onnxruntime for all models")
    load_threads: int = Field(1, ge=1, description="threads that load and warm models")
    model_isolation: Literal["thread", "process"] = Field(
        "thread",
        description="where model versions run: in this process (thread) or each in a child process of"
        " its own, loaded at low priority so that loading does not slow the other models (process);"
        " a model's config parameter 'isolation' overrides it",
    )
    process_run_timeout_s: float = Field(
        120.0,
        gt=0,
        description="isolation process: a run unanswered this long means a hung child, which is"
        " killed; the version is unready until loaded again",
    )
    process_load_timeout_s: float = Field(
        600.0, gt=0, description="isolation process: how long a child may take to load and warm up"
    )

    # dynamic batching (overrides for every model when set)
    batching: bool = Field(True, description="dynamic batching for models that configure it")
    max_queue_delay_us: int | None = Field(
        None, ge=0, description="override every model's max_queue_delay_microseconds"
    )
    max_queue_size: int = Field(1024, gt=0, description="queue limit of models that set none")

    # control plane
    state_dir: Path | None = Field(
        None,
        description="where traffic policies, rollouts, the audit log and drift references persist"
        " (unset: nothing persists)",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the admin API: a token named admin with every scope"
    )
    shadow_max_in_flight: int = Field(
        64, ge=1, description="mirrored (shadow) requests in flight before more are dropped and counted"
    )

    # drift
    drift: bool = Field(True, description="drift monitoring")
    drift_sample: float = Field(1.0, ge=0, le=1, description="share of requests fed to drift monitoring")
    drift_window_rows: int = Field(
        10_000,
        ge=DriftConfig.min_window_rows,
        description="rows per drift test window (a test needs 30 at least)",
    )
    drift_window_seconds: float | None = Field(
        60.0, gt=0, description="also close a drift window after this many seconds"
    )
    drift_reference_rows: int = Field(
        10_000, ge=1, description="rows captured as the drift reference when none is shipped"
    )
    drift_max_features: int = Field(
        256,
        ge=1,
        description="a tensor wider than this (an image) is monitored on every k-th column, so that"
        " at most this many of its columns are",
    )
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="drift false-alarm rate per window, for a whole model"
    )
    drift_webhook: str | None = Field(
        None, description="URL that receives a JSON POST when a version's drift status changes"
    )

    # request logging and ground-truth feedback (docs/feedback.md)
    request_log_dir: Path | None = Field(
        None,
        description="write sampled requests (inputs, outputs, version, routing key, id) and accepted"
        " feedback here as rotating JSONL files, one directory per model version (unset: off)",
    )
    request_log_sample: float = Field(
        0.0, ge=0, le=1, description="share of each model version's requests logged (0 = none)"
    )
    request_log_rates: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="sample rates for some models or versions, overriding --request-log-sample:"
        " model=rate or model:version=rate, comma-separated or repeated",
    )
    request_log_exclude: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="left out of logged records: inputs, outputs, routing_key, parameters, id, or a"
        " tensor's name; comma-separated or repeated",
    )
    request_log_tensors: Literal["json", "base64"] = Field(
        "json",
        description="how logged tensors are written: json (nested lists of numbers) or base64 (raw"
        " little-endian bytes with datatype and shape: exact, half the size, cheaper for large tensors)",
    )
    request_log_max_file_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="start a new request log file past this size"
    )
    request_log_max_file_secs: float = Field(
        3600.0, gt=0, description="start a new request log file when the current one is this old"
    )
    request_log_max_files: int = Field(
        100, ge=1, description="request log files kept per model version; the oldest are deleted"
    )
    request_log_max_age_secs: float | None = Field(
        None,
        gt=0,
        description="delete request log files started longer ago than this (checked whenever a file"
        " is started; unset: only --request-log-max-files applies)",
    )
    request_log_queue: int = Field(
        10_000,
        ge=1,
        description="records waiting for the log writer; past it records are dropped and counted"
        " (turnout_request_log_dropped_total), never the request",
    )
    request_log_queue_bytes: int = Field(
        64 << 20,
        ge=1,
        description="bytes of encoded records waiting for the log writer; past it records are"
        " dropped and counted like --request-log-queue",
    )
    feedback_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="models whose predictions are kept to join ground-truth feedback with ('*' for"
        " all); their answers always carry an id (generated when the client sent none)",
    )
    feedback_max_predictions: int = Field(
        100_000, ge=1, description="predictions kept per model for feedback; the oldest are evicted"
    )
    feedback_window: int = Field(
        1000, ge=1, description="labelled rows in the sliding window of live accuracy"
    )

    # the dashboard's time series (server/observe/timeseries.py; docs/operations.md)
    dashboard_interval_secs: float = Field(
        10.0, gt=0, description="seconds between two points of the dashboard's time series"
    )
    dashboard_points: int = Field(
        360, ge=1, description="points kept per model version for the dashboard (360 x 10 s: an hour)"
    )

    # retraining hook (server/observe/retrain.py; docs/operations.md)
    retrain_webhook_url: str | None = Field(
        None,
        description="URL that receives a signed JSON POST when a version's drift alarm is raised or its"
        " live accuracy drops (unset: off)",
    )
    retrain_webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key of the X-Turnout-Signature header (prefer"
        " TURNOUT_RETRAIN_WEBHOOK_SECRET or --retrain-webhook-secret-file: flags show in ps)",
    )
    retrain_webhook_secret_file: Path | None = Field(
        None, description="file holding the webhook's HMAC key (surrounding whitespace ignored)"
    )
    retrain_webhook_retries: int = Field(
        5, ge=0, description="retries of a failed delivery, with exponential backoff"
    )
    retrain_webhook_backoff_secs: float = Field(
        1.0, gt=0, description="wait before the first retry; doubled for each further one (at most 60 s)"
    )
    retrain_webhook_queue: int = Field(
        100,
        ge=1,
        description="events waiting for delivery; past it events are dropped and counted"
        ' (turnout_retrain_events_total{outcome="dropped"})',
    )
    retrain_accuracy_threshold: float | None = Field(
        None, ge=0, le=1, description="an event when a version's windowed accuracy falls below this"
    )
    retrain_accuracy_drop: float | None = Field(
        None,
        gt=0,
        le=1,
        description="an event when a version's windowed accuracy is this far below its cumulative accuracy",
    )
    retrain_min_labelled: int = Field(
        100, ge=1, description="labelled rows the accuracy window needs before accuracy is judged"
    )
    retrain_slice_secs: float = Field(
        3600.0,
        gt=0,
        description="an accuracy event's slice of the request log: this many seconds back (a drift"
        " event's is its window)",
    )

    # access control and mTLS (server/auth.py, server/tls.py; docs/security.md)
    auth_tokens_file: Path | None = Field(
        None,
        description='named tokens with scopes (infer, read, admin): JSON {"tokens": [{"name": ...,'
        ' "scopes": [...], "sha256": ...}]} ("token": plaintext also accepted)',
    )
    auth_tokens: SecretStr | None = Field(
        None,
        description="the JSON of --auth-tokens-file inline (TURNOUT_AUTH_TOKENS)",
        json_schema_extra={"cli": False},
    )
    auth_infer: bool = Field(False, description="inference needs a token with the infer scope")
    auth_metrics: bool = Field(
        False, description="/metrics, the dashboard and statistics need a token with the read scope"
    )
    tls_client_ca: Path | None = Field(
        None, description="PEM CA: require client certificates it signed, on both protocols (mTLS)"
    )
    tls_reload_secs: float = Field(
        5.0,
        ge=0,
        description="check the TLS files this often and reload changed ones without a restart (0 = never)",
    )

    # logging
    log_verbose: int = Field(0, ge=0, description="0 info, 1 more, 2 debug")
    log_format: Literal["text", "json"] = Field("text", description="log line format")

    @field_validator(
        "load_model", "request_log_rates", "request_log_exclude", "feedback_models", mode="before"
    )
    @classmethod
    def _split(cls, v: object) -> object:
        """Comma-separated names, from the environment or from each repeated flag."""
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            return tuple(x for item in v for x in str(item).split(",") if x)
        return v

    @model_validator(mode="after")
    def _access(self) -> Settings:
        tokens = self.admin_token or self.auth_tokens_file or self.auth_tokens
        if (self.auth_infer or self.auth_metrics) and not tokens:
            raise ValueError("auth_infer and auth_metrics need tokens (admin_token or auth_tokens_file)")
        if self.single_model is not None and self.is_remote:
            raise ValueError("single_model needs a local directory, not an s3:// repository")
        if self.tls_client_ca is not None and not (self.tls_cert and self.tls_key):
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        for entry in self.request_log_rates:
            parse_rate(entry)
        if self.retrain_webhook_secret is not None and self.retrain_webhook_secret_file is not None:
            raise ValueError("give retrain_webhook_secret or retrain_webhook_secret_file, not both")
        return self

    def retrain_secret(self) -> SecretStr | None:
        """The retraining webhook's HMAC key, from the setting or its file."""
        if self.retrain_webhook_secret_file is not None:
            return SecretStr(self.retrain_webhook_secret_file.read_text().strip())
        return self.retrain_webhook_secret

    @property
    def is_remote(self) -> bool:
        return self.model_repository.startswith("s3://")

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for k, v in super().__repr_args__():
            yield k, ("***" if k == "admin_token" and v is not None else v)


def parse_rate(entry: str) -> tuple[str, str, float]:
    """``model=rate`` or ``model:version=rate`` -> (model, version or "", rate)."""
    name, sep, value = entry.rpartition("=")
    model, _, version = name.partition(":")
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not sep or not model or not 0.0 <= rate <= 1.0:
        raise ValueError(f"request_log_rates: expected model[:version]=rate in [0, 1], got {entry!r}")
    return model, version, rate
