"""Server settings: one frozen, validated object built at start from flags, ``TURNOUT_*``
environment variables and defaults (in that order of precedence). Nothing reads settings
at import time; the object is passed to whatever needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_REPOSITORY = Path(__file__).resolve().parent.parent / "model_store" / "demo" / "repository"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNOUT_", frozen=True, extra="forbid")

    # repository and model control (names follow tritonserver's flags)
    model_repository: str = str(DEMO_REPOSITORY)  # a directory or s3://bucket/prefix
    s3_endpoint_url: str | None = (
        None  # S3-compatible endpoint (MinIO, Ceph, ...); AWS_* variables also apply
    )
    repository_cache_dir: Path | None = None  # where a remote repository is mirrored (default: a temp dir)
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_secs: float = Field(15.0, gt=0)
    repository_settle_secs: float = Field(1.0, ge=0)  # poll mode: files must be unchanged this long
    load_model: tuple[str, ...] = ()
    strict_model_config: bool = False

    # processes
    workers: int = Field(1, ge=1)  # server processes sharing the ports (SO_REUSEPORT)
    worker_id: int | None = None  # set by the supervisor for each worker

    # network
    host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    allow_http: bool = True
    allow_grpc: bool = True
    # which gRPC server: "asyncio" (Turnout's HTTP/2 gRPC server on the event loop,
    # server/grpc/transport.py) or "grpcio" (grpcio's asyncio server; README, Performance)
    grpc_transport: Literal["asyncio", "grpcio"] = "asyncio"
    # asyncio transport only: the HTTP/2 core, Turnout's (server/grpc/http2.py) or the h2 library's
    # (server/grpc/h2lib.py, a measuring instrument: benchmarks.features section h2-engine)
    grpc_h2_engine: Literal["turnout", "h2"] = "turnout"
    # grpcio only: grpc core experiments (grpc's GRPC_EXPERIMENTS syntax), applied before grpc starts unless
    # GRPC_EXPERIMENTS is set in the environment. "-event_engine_listener" trades throughput under
    # load for latency at low concurrency (README, Performance). "" = grpc's own defaults.
    grpc_experiments: str = ""
    ports_file: Path | None = None  # where to write the bound ports (useful with port 0)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    # limits
    # on SIGTERM: how long the requests in flight may take to finish (tritonserver's flag)
    exit_timeout_secs: float = Field(30.0, ge=0)
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # inference requests in progress per protocol before new ones get 'busy' answers
    max_inflight: int = Field(256, gt=0)
    # connections per protocol; beyond, new ones are closed at once (capped by the open-files limit)
    max_connections: int = Field(10_000, gt=0)
    # answer POST .../infer inside the HTTP protocol, without ASGI (server/http/protocol.py)
    http_fast_path: bool = True
    # after network input the event loop polls instead of sleeping for this long (server/busy_poll.py)
    busy_poll_us: float = Field(500.0, ge=0)

    # the edge: what one client may hold (server/grpc/limits.py, server/http/protocol.py)
    max_streams_per_connection: int = Field(100, gt=0)  # gRPC concurrent streams per connection
    handshake_timeout_secs: float = Field(10.0, gt=0)  # accept to TLS + HTTP/2 preface / first request
    header_timeout_secs: float = Field(10.0, gt=0)  # HTTP: first byte of a request to its last header
    request_timeout_secs: float = Field(60.0, gt=0)  # request headers to the request's last byte
    idle_timeout_secs: float = Field(300.0, ge=0)  # gRPC: no stream and no frame this long (0 = off)
    max_connection_age_secs: float | None = Field(None, gt=0)  # gRPC: GOAWAY after this long
    max_connection_age_grace_secs: float = Field(30.0, ge=0)  # ... and closed this long after
    write_timeout_secs: float = Field(30.0, gt=0)  # a peer that reads nothing of its answers this long
    max_queued_bytes: int = Field(64 * 1024 * 1024, gt=0)  # gRPC answer bytes waiting per connection
    http_max_header_bytes: int = Field(64 * 1024, gt=0)  # HTTP request line + headers
    http_max_headers: int = Field(100, gt=0)

    # onnxruntime
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    ort_spinning: bool = False
    default_max_batch_size: int = Field(32, ge=0)
    inline_compute_us: float = Field(50.0, ge=0)  # run batches expected to take less on the event loop
    infer_threads: int = Field(2, ge=1)  # threads that run onnxruntime for all models
    load_threads: int = Field(1, ge=1)  # threads that load and warm models
    # where models run unless their config's "isolation" parameter says otherwise: "thread" (in
    # this process) or "process" (a child per version, loaded gently: see model_store/process_session.py)
    model_isolation: Literal["thread", "process"] = "thread"
    # isolation "process": a run unanswered this long means a hung child (killed; the version turns
    # unready until loaded again); a child not ready this long after its start fails the load
    process_run_timeout_s: float = Field(120.0, gt=0)
    process_load_timeout_s: float = Field(600.0, gt=0)

    # dynamic batching (overrides for every model when set)
    batching: bool = True
    max_queue_delay_us: int | None = Field(None, ge=0)
    max_queue_size: int = Field(1024, gt=0)

    # control plane
    state_dir: Path | None = None
    admin_token: SecretStr | None = None
    shadow_max_in_flight: int = Field(64, ge=1)  # mirrored requests beyond this are dropped and counted

    # drift
    drift: bool = True
    drift_sample: float = Field(1.0, ge=0, le=1)  # share of requests fed to drift monitoring
    drift_window_rows: int = Field(10_000, ge=1)  # rows per tumbling test window
    drift_window_seconds: float | None = Field(60.0, gt=0)  # also close windows after this long
    drift_reference_rows: int = Field(10_000, ge=1)  # rows captured as reference when none is shipped
    drift_alpha: float = Field(0.01, gt=0, lt=1)  # false-alarm rate per window, whole model
    drift_webhook: str | None = None  # POSTed a JSON event when a version's drift status changes

    # access control and mTLS (server/auth.py, server/tls.py; README, Access)
    # named tokens with scopes: a JSON file {"tokens": [{"name", "scopes", "sha256" | "token"}]}
    auth_tokens_file: Path | None = None
    auth_tokens: SecretStr | None = None  # the same JSON inline (TURNOUT_AUTH_TOKENS; no flag)
    auth_infer: bool = False  # inference needs a token with the infer scope
    auth_metrics: bool = False  # /metrics, the dashboard and statistics need the read scope
    tls_client_ca: Path | None = None  # require client certificates signed by this CA (mTLS)
    tls_reload_secs: float = Field(5.0, ge=0)  # poll the TLS files this often and reload; 0 = never

    # logging
    log_verbose: int = Field(0, ge=0)
    log_format: Literal["text", "json"] = "text"

    @field_validator("load_model", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(x for x in v.split(",") if x)
        return v

    @model_validator(mode="after")
    def _access(self) -> Settings:
        tokens = self.admin_token or self.auth_tokens_file or self.auth_tokens
        if (self.auth_infer or self.auth_metrics) and not tokens:
            raise ValueError("auth_infer and auth_metrics need tokens (admin_token or auth_tokens_file)")
        if self.tls_client_ca is not None and not (self.tls_cert and self.tls_key):
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return self

    @property
    def is_remote(self) -> bool:
        return self.model_repository.startswith("s3://")

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for k, v in super().__repr_args__():
            yield k, ("***" if k == "admin_token" and v is not None else v)
