"""Wires the parts together: model store -> runners (batchers) -> core -> transports.
Starts them in that order and tears them down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import tempfile
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import orjson
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from turnout.drift import DriftConfig
from turnout.model_store.config import instance_count
from turnout.model_store.errors import ModelStoreError
from turnout.model_store.layout import stage_single_model
from turnout.model_store.registry import ModelRegistry
from turnout.model_store.repository import LocalRepository
from turnout.model_store.session import Session, SessionOptions
from turnout.protos import inference_pb2
from turnout.protos.turnout import admin_pb2, admin_pb2_grpc
from turnout.router.controller import TrafficController
from turnout.router.shadow import ShadowMirror
from turnout.router.store import ControlPlaneStore
from turnout.server.auth import Authorizer, load_tokens
from turnout.server.busy_poll import BusyPoll
from turnout.server.core import Core
from turnout.server.grpc.admin import AdminServicer
from turnout.server.grpc.servicer import SERVICE, make_handlers
from turnout.server.grpc.transport import AsyncioGrpcServer
from turnout.server.http.access import secure_routes
from turnout.server.http.admin import admin_routes
from turnout.server.http.app import build_app, build_routes
from turnout.server.http.dashboard import dashboard_routes
from turnout.server.http.feedback import feedback_routes
from turnout.server.http.infer_route import InferRoute
from turnout.server.http.protocol import HeadHoldingHttpToolsProtocol
from turnout.server.listeners import (
    StartError,
    bracket,
    grpcio_options,
    h2_engine,
    http_limits,
    listening,
    transport_limits,
)
from turnout.server.model_ops import ModelOpsLog
from turnout.server.observe.dashboard import dashboard
from turnout.server.observe.drift import DriftWiring
from turnout.server.observe.metrics import Metrics
from turnout.server.observe.recording import operators_loop
from turnout.server.observe.retrain import wire_retrain
from turnout.server.observe.stats import VersionStats
from turnout.server.os_limits import connection_cap, return_large_buffers
from turnout.server.runner import BatchingRunner, Compute, DirectRunner, Runner, batching_config
from turnout.server.settings import Settings
from turnout.server.tls import ServerTls
from turnout.server.traffic import TrafficRouting, servable

log = logging.getLogger("turnout")


# on a stop: how long nothing must be in flight before the servers close
QUIET_S = 0.1


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our own event loop: the runtime, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Runtime:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.prom = registry or CollectorRegistry()
        self.metrics = Metrics(self.prom)
        self.busy_poll = BusyPoll(settings.busy_poll_us / 1e6)
        self.pool = ThreadPoolExecutor(max_workers=settings.infer_threads, thread_name_prefix="turnout-infer")
        options = SessionOptions(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            allow_spinning=settings.ort_spinning,
            default_max_batch_size=settings.default_max_batch_size,
            strict_config=settings.strict_model_config,
            isolation=settings.model_isolation,
            process_run_timeout_s=settings.process_run_timeout_s,
            process_load_timeout_s=settings.process_load_timeout_s,
        )
        self.repository = open_repository(settings)
        self.models = ModelRegistry(
            self.repository,
            options,
            attach=self._attach,
            detach=self._detach,
            load_threads=settings.load_threads,
            settle_secs=settings.repository_settle_secs,
            on_load_failure=self._load_failed,
        )
        store = ControlPlaneStore(settings.state_dir / "control") if settings.state_dir else None
        self.drift: DriftWiring | None = None
        if settings.drift:
            self.drift = DriftWiring(
                self.models,
                self.metrics,
                state_dir=settings.state_dir,
                config=DriftConfig(
                    alpha=settings.drift_alpha,
                    window_rows=settings.drift_window_rows,
                    window_seconds=settings.drift_window_seconds,
                    reference_rows=settings.drift_reference_rows,
                    max_features=settings.drift_max_features,
                ),
                sample=settings.drift_sample,
                webhook=settings.drift_webhook,
            )
        self._operators_loop(settings)
        self.retrain = wire_retrain(settings, self.metrics, self.drift, self.feedback)
        self.controller = TrafficController(
            store,
            clock=time.time,
            rng=random.Random(),
            validate=servable(self.models),
            drift=self.drift.status if self.drift is not None else None,
            accuracy=self.feedback.counts if self.feedback is not None else None,
        )
        self.mirror = ShadowMirror(self.controller.shadow_stats, max_in_flight=settings.shadow_max_in_flight)
        self.traffic = TrafficRouting(self.controller, self.mirror, self.models, self.metrics)
        model_ops = None
        if settings.worker_id is not None and settings.state_dir is not None:
            model_ops = ModelOpsLog(settings.state_dir / "model-ops.jsonl", settings.worker_id)
        self.core = Core(
            self.models,
            self.metrics,
            router=self.traffic,
            observers=() if self.drift is None else (self.drift,),
            recorder=self.recorder,
            model_ops=model_ops,
        )
        self.metrics.sample(lambda: self.metrics.inflight.set(self.core.in_flight))
        self.metrics.triton.attach(self.core.statistics)
        self.dashboard = dashboard(
            settings, self.core, self.metrics, self.controller, self.feedback, self.drift
        )
        self.auth = Authorizer(
            load_tokens(settings.admin_token, settings.auth_tokens_file, settings.auth_tokens),
            infer=settings.auth_infer,
            metrics=settings.auth_metrics,
        )
        self.tls: ServerTls | None = None
        if settings.tls_cert and settings.tls_key:
            self.tls = ServerTls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.grpc_server: grpc.aio.Server | AsyncioGrpcServer | None = None
        self.http_server: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._infer_route: InferRoute | None = None
        self._health: health_aio.HealthServicer | None = None
        self.grpc_port = 0
        self.http_port = 0
        # the edge's timeouts are checked this often (a quarter of the shortest, at most 1 s)
        self.sweep_interval_s = min(
            1.0, settings.handshake_timeout_secs / 4, settings.header_timeout_secs / 4
        )
        return_large_buffers()  # RSS comes back down after large requests have been answered
        self.max_connections = connection_cap(
            settings.max_connections, int(settings.allow_grpc) + int(settings.allow_http)
        )
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._model_tasks: list[asyncio.Task[Any]] = []  # repository polling, other workers' loads

    def _operators_loop(self, s: Settings) -> None:
        """Request logging and ground-truth feedback (both off unless configured)."""
        self.request_log, self.feedback, self.recorder = operators_loop(s, self.metrics)

    # ---- model versions -> runners --------------------------------------------------

    async def _attach(self, session: Session) -> Runner:
        stats = VersionStats(session.name, session.version)
        self.metrics.model_ready.labels(session.name, session.version).set(1)
        cfg = batching_config(session.config, self.settings)
        compute = Compute(
            session,
            self.pool,
            self.settings.inline_compute_us * 1000.0,
            self.busy_poll,
            idle=lambda: self.core.in_flight <= 1,
            idle_ns=self.settings.inline_compute_idle_us * 1000.0,
        )
        if cfg is None:
            return DirectRunner(session, compute, instance_count(session.config), stats)
        return BatchingRunner(session, compute, cfg, stats, self.metrics)

    def _load_failed(self, model: str, version: str, reason: str) -> None:
        self.metrics.load_failures.labels(model).inc()

    async def _poll_forever(self) -> None:
        interval = self.settings.repository_poll_secs
        while True:
            await asyncio.sleep(interval)
            try:
                await self.models.poll()
            except Exception:  # polling must survive anything a repository can do
                log.exception("repository poll failed")

    async def _flush_metrics_forever(self, interval: float = 1.0) -> None:
        """A scrape flushes this process's tallies itself; the other workers' reach the shared
        multiprocess files here, at most ``interval`` late."""
        while True:
            await asyncio.sleep(interval)
            self.metrics.flush()

    async def _sweep_http_forever(self) -> None:
        """The HTTP connections' timeouts (``HttpLimits``), checked every ``sweep_interval_s``."""
        assert self.http_server is not None
        connections = self.http_server.server_state.connections
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            now = loop.time()
            for conn in list(connections):
                if isinstance(conn, HeadHoldingHttpToolsProtocol):
                    try:
                        conn.sweep(now)
                    except Exception:  # one connection's trouble must not stop the timeouts of all
                        log.exception("HTTP connection sweep failed")

    async def _follow_model_ops(self) -> None:
        """Replay explicit loads and unloads that other workers received."""
        ops = self.core.model_ops
        assert ops is not None
        while True:
            await asyncio.sleep(0.25)
            for op in ops.pending():
                await self._apply_model_op(op.op, op.model)

    async def _apply_model_op(self, op: str, model: str) -> None:
        try:
            if op == "load":
                await self.models.load(model)
            else:
                await self.models.unload(model)
        except Exception as exc:  # a failed load is in the index already; keep following
            log.warning("model %s: %s from another worker: %s", model, op, exc)

    async def _detach(self, runner: Runner) -> None:
        await runner.close()
        stats = runner.stats
        if self.drift is not None:
            self.drift.forget(stats.name, stats.version)
        if self.recorder is not None:
            self.recorder.forget(stats.name, stats.version)
        self.metrics.model_ready.labels(stats.name, stats.version).set(0)

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.allow_grpc:
            await self._start_grpc()
        if s.allow_http:
            await self._start_http()
        await self._load_initial_models()
        if s.model_control_mode == "poll":
            self._model_tasks.append(asyncio.get_running_loop().create_task(self._poll_forever()))
        self._background.append(asyncio.get_running_loop().create_task(self.traffic.tick_forever()))
        self._background.append(asyncio.get_running_loop().create_task(self.traffic.shadow_forever()))
        self._background.append(asyncio.get_running_loop().create_task(self._flush_metrics_forever()))
        self._background.append(asyncio.get_running_loop().create_task(self.dashboard.sample_forever()))
        if self.http_server is not None:
            self._background.append(asyncio.get_running_loop().create_task(self._sweep_http_forever()))
        if self.drift is not None:
            self._background.append(asyncio.get_running_loop().create_task(self.drift.flush_forever()))
        if self.tls is not None and s.tls_reload_secs > 0:
            self._background.append(asyncio.get_running_loop().create_task(self.tls.watch(s.tls_reload_secs)))
        if self.core.model_ops is not None:
            self._model_tasks.append(asyncio.get_running_loop().create_task(self._follow_model_ops()))
        self.core.started = True
        if s.ports_file is not None:
            tmp = s.ports_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"http": self.http_port, "grpc": self.grpc_port}))
            tmp.replace(s.ports_file)
        log.info(
            "Turnout serving %s: HTTP on %s:%d, gRPC on %s:%d",
            s.model_repository,
            s.host,
            self.http_port,
            s.host,
            self.grpc_port,
        )

    async def _load_initial_models(self) -> None:
        s = self.settings
        names = list(s.load_model) if s.model_control_mode == "explicit" else ["*"]
        if "*" in names:
            await asyncio.get_running_loop().run_in_executor(None, self.repository.refresh)
            names = self.repository.model_names()
        if not names:
            log.warning("no models to load from %s", s.model_repository)
        for name in names:
            if self._stopped.is_set():  # a stop during start: the models not loaded yet are skipped
                log.info("stop requested: %d model(s) not loaded", len(names) - names.index(name))
                return
            try:
                await self.models.load(name)
            except Exception as exc:
                log.error("model %s not loaded: %s", name, exc)
        if self.core.model_ops is not None:  # catch up with loads/unloads the other workers received
            for model, op in self.core.model_ops.desired().items():
                await self._apply_model_op(op, model)

    async def _start_grpc(self) -> None:
        s = self.settings
        server: grpc.aio.Server | AsyncioGrpcServer
        if s.grpc_transport == "asyncio":
            server = AsyncioGrpcServer(
                max_message_bytes=s.max_request_bytes,
                max_calls=s.max_inflight,  # excess answered RESOURCE_EXHAUSTED at once
                limits=transport_limits(s, self.max_connections),
                limited=(f"/{SERVICE}/ModelInfer",),  # health, metadata, control: never refused
                reuse_port=s.worker_id is not None,
                busy_poll=self.busy_poll,
                sweep_interval_s=self.sweep_interval_s,
                on_event=self.metrics.edge_event("grpc"),
                h2_engine=h2_engine(s.grpc_h2_engine),
            )
        else:
            # excess answered RESOURCE_EXHAUSTED by the C core, cheaply
            server = grpc.aio.server(maximum_concurrent_rpcs=s.max_inflight, options=grpcio_options(s))
        handlers = make_handlers(self.core, self.auth)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)  # faster dispatch than the generic lookup
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                self.controller, self.auth, self.drift.report_async if self.drift else None, self.feedback
            ),
            server,
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        service_names = (
            inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection_aio.ReflectionServicer(service_names),
            server,
        )
        with listening("gRPC", s.host, s.grpc_port):
            if isinstance(server, AsyncioGrpcServer):
                tls = self.tls.context(["h2"]) if self.tls is not None else None
                self.grpc_port = server.add_port(s.host, s.grpc_port, tls)
            elif self.tls is not None:  # grpcio: mTLS, but no reload (its credentials are fixed at start)
                key, cert, ca = self.tls.pem()
                creds = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
                )
                self.grpc_port = server.add_secure_port(f"{bracket(s.host)}:{s.grpc_port}", creds)
            else:
                self.grpc_port = server.add_insecure_port(f"{bracket(s.host)}:{s.grpc_port}")
        await server.start()
        self.grpc_server = server
        self._health = health

    def http_routes(self) -> list[Any]:
        """Every Starlette route, before the access checks are put in front of them."""
        s = self.settings
        return (
            build_routes(self.core, s.max_request_bytes, self.metrics, self.drift)
            + feedback_routes(self.feedback)
            + admin_routes(self.controller)
            + dashboard_routes(self.dashboard)
        )

    def http_app(self) -> InferRoute:
        s = self.settings
        app = build_app(secure_routes(self.http_routes(), self.auth))
        return InferRoute(
            app, self.core, s.max_request_bytes, s.max_inflight, fast_path=s.http_fast_path, auth=self.auth
        )

    async def _start_http(self) -> None:
        s = self.settings
        app = self._infer_route = self.http_app()
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s.worker_id is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with listening("HTTP", s.host, s.http_port):
            try:
                sock.bind((s.host, s.http_port))
                sock.listen(2048)
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]
        ssl: dict[str, Any] = {}
        if s.tls_cert and s.tls_key:
            ssl = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
        config = uvicorn.Config(
            app,
            loop="none",
            http=functools.partial(  # type: ignore[arg-type]
                HeadHoldingHttpToolsProtocol,
                busy_poll=self.busy_poll,
                limits=http_limits(s, self.max_connections),
                events=self.metrics.edge_event("http"),
            ),
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=s.exit_timeout_secs,  # type: ignore[arg-type]  # a float works
            limit_concurrency=s.max_connections,  # a backstop; inference requests are limited by InferRoute
            **ssl,
        )
        server = _Uvicorn(config)
        config.load()
        if self.tls is not None:  # ours instead of uvicorn's: client certificates, and reloads
            config.ssl = self.tls.context()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self.http_server = server
        self._http_socket = sock
        self._http_task = asyncio.get_running_loop().create_task(server.main_loop())

    async def _lame_duck(self, limit_s: float) -> float:
        """Serve on, unready, until no request has been in flight for ``QUIET_S`` (at most
        ``limit_s``). Closing the servers at once would cancel requests already on their way:
        grpc cancels the calls its transport holds but Python has not taken yet. Returns the
        seconds it took."""
        loop = asyncio.get_running_loop()
        start = quiet_since = loop.time()
        while loop.time() - start < limit_s:
            http = self._infer_route.inflight if self._infer_route is not None else 0
            if http or self.core.in_flight:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= QUIET_S:
                break
            await asyncio.sleep(0.01)
        return min(loop.time() - start, limit_s)

    async def _stop_http(self, grace: float) -> None:
        if self.http_server is not None:
            self.http_server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]
            self.http_server.should_exit = True
            # at once, not at uvicorn's next tick; its main loop then ends by itself
            await self.http_server.shutdown(sockets=[self._http_socket] if self._http_socket else None)
            if self._http_task is not None:
                await self._http_task

    async def _stop_grpc(self, grace: float) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Readiness false at once. After a requested stop, serve on until nothing is in flight
        (the lame-duck phase); then both protocols stop taking requests and give the ones in
        flight what remains of ``exit_timeout_secs``, together. Then the models, their
        processes and the background work end."""
        log.info("shutting down")
        self.core.started = False  # readiness goes false first, so load balancers drain us
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # grpc.health.v1 says NOT_SERVING too
        for task in self._model_tasks:  # no model changes while draining
            task.cancel()
        grace = self.settings.exit_timeout_secs
        if self._stopped.is_set():  # a requested stop (not a failed start): a lame-duck phase first
            grace -= await self._lame_duck(grace / 2)  # at least half the timeout stays for the drain
        for task in self._background:
            task.cancel()
        stops = (self._stop_http(grace), self._stop_grpc(grace))
        for failure in await asyncio.gather(*stops, return_exceptions=True):
            if isinstance(failure, BaseException):  # the models and processes must end regardless
                log.error("stopping a protocol server failed", exc_info=failure)
        await self.mirror.close()
        if self.drift is not None:
            self.drift.stop()
        if self.retrain is not None:
            self.retrain.close()
        if self.request_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.request_log.close)
        self.controller.close()
        await self.models.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.metrics.flush()
        self.core.live = False


def open_repository(settings: Settings) -> LocalRepository:
    if settings.is_remote:
        from turnout.model_store.remote import S3Repository

        cache = settings.repository_cache_dir or Path(tempfile.mkdtemp(prefix="turnout-repo-"))
        return S3Repository(settings.model_repository, cache, endpoint_url=settings.s3_endpoint_url)
    if settings.single_model is not None:
        # one model's files (KServe's /mnt/models) staged as a repository of links
        dest = Path(tempfile.mkdtemp(prefix="turnout-single-", dir=settings.repository_cache_dir))
        try:
            stage_single_model(Path(settings.model_repository), settings.single_model, dest)
        except ModelStoreError as exc:
            raise StartError(str(exc)) from exc
        log.info(
            "serving %s as model %s (staged in %s)", settings.model_repository, settings.single_model, dest
        )
        return LocalRepository(dest)
    return LocalRepository(Path(settings.model_repository))
