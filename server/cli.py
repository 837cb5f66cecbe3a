"""``turnout`` command line. ``turnout serve`` with no repository serves the built-in demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.observe.logs import configure
from server.settings import DEMO_REPOSITORY, Settings


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{v}'")


def serve_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model repository",
        description="Serve ONNX models over the Open Inference Protocol (gRPC and HTTP). "
        "Every flag can also be set as an environment variable TURNOUT_<FLAG> (e.g. TURNOUT_HTTP_PORT).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "repository",
        nargs="?",
        type=Path,
        default=None,
        help=f"model repository (default: the built-in demo, {DEMO_REPOSITORY})",
    )
    p.add_argument(
        "--model-repository",
        help="model repository directory or s3://bucket/prefix, as tritonserver names it",
    )
    p.add_argument("--s3-endpoint-url", help="endpoint of an S3-compatible store for s3:// repositories")
    p.add_argument(
        "--repository-cache-dir",
        type=Path,
        help="local mirror of a remote repository (default: a temporary directory)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        help="none: load all at start; poll: also rescan; explicit: only the repository API loads (default none)",
    )
    p.add_argument(
        "--repository-poll-secs", type=float, help="seconds between rescans in poll mode (default 15)"
    )
    p.add_argument(
        "--repository-settle-secs",
        type=float,
        help="poll mode: a version's files must be unchanged this long before it loads (default 1)",
    )
    p.add_argument(
        "--load-model",
        action="append",
        help="model to load at start in explicit mode; repeatable; '*' for all",
    )
    p.add_argument(
        "--strict-model-config", type=_bool, help="require inputs and outputs in config.pbtxt (default false)"
    )
    p.add_argument(
        "--workers", type=int, help="server processes sharing the ports via SO_REUSEPORT (default 1)"
    )
    p.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--host", "--http-address", dest="host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, help="HTTP port, 0 for any free port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 for any free port (default 8001)")
    p.add_argument("--allow-http", type=_bool, help="serve HTTP (default true)")
    p.add_argument("--allow-grpc", type=_bool, help="serve gRPC (default true)")
    p.add_argument(
        "--grpc-transport",
        choices=("asyncio", "grpcio"),
        help="gRPC server: asyncio (Turnout's HTTP/2 server on the event loop, default) or grpcio's",
    )
    p.add_argument(
        "--grpc-h2-engine",
        choices=("turnout", "h2"),
        help="asyncio transport: the HTTP/2 core, Turnout's (default) or the h2 library's (for comparison)",
    )
    p.add_argument(
        "--grpc-experiments",
        help="grpc core experiments, as GRPC_EXPERIMENTS (default: grpc's own); -event_engine_listener"
        " lowers latency at low concurrency and costs throughput under load; the environment variable wins",
    )
    p.add_argument("--ports-file", type=Path, help="write the bound ports as JSON to this file once serving")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve both protocols over TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    p.add_argument(
        "--max-request-bytes", type=int, help="largest request body / message accepted (default 64 MiB)"
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        help="requests in progress per protocol before new ones get RESOURCE_EXHAUSTED / 503 at once (default 256)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help="connections per protocol; beyond, new ones are closed at once (default 10000,"
        " lowered to fit the open-files limit)",
    )
    edge = p.add_argument_group("edge limits (what one client may hold)")
    edge.add_argument(
        "--max-streams-per-connection", type=int, help="gRPC concurrent streams per connection (default 100)"
    )
    edge.add_argument(
        "--handshake-timeout-secs",
        type=float,
        help="from accept to the TLS handshake and HTTP/2 preface, or an HTTP request's first byte (default 10)",
    )
    edge.add_argument(
        "--header-timeout-secs", type=float, help="HTTP: a request's headers must arrive within (default 10)"
    )
    edge.add_argument(
        "--request-timeout-secs",
        type=float,
        help="from a request's headers to its last byte, both protocols (default 60)",
    )
    edge.add_argument(
        "--idle-timeout-secs",
        type=float,
        help="gRPC: GOAWAY to a connection with no stream and no frame this long; a streamed call"
        " that receives nothing this long ends (default 300; 0 = off)",
    )
    edge.add_argument(
        "--max-connection-age-secs",
        type=float,
        help="gRPC: GOAWAY to connections older than this, so clients reconnect and L4 balancers"
        " rebalance (default off)",
    )
    edge.add_argument(
        "--max-connection-age-grace-secs",
        type=float,
        help="after --max-connection-age-secs, calls still running get this long (default 30)",
    )
    edge.add_argument(
        "--write-timeout-secs",
        type=float,
        help="close a connection whose peer reads none of its answers this long (default 30)",
    )
    edge.add_argument(
        "--max-queued-bytes",
        type=int,
        help="gRPC: answer bytes waiting for a slow peer before its connection opens no new streams"
        " (default 64 MiB)",
    )
    edge.add_argument(
        "--http-max-header-bytes", type=int, help="HTTP: request line and headers, at most (default 65536)"
    )
    edge.add_argument("--http-max-headers", type=int, help="HTTP: header fields per request (default 100)")
    p.add_argument(
        "--http-fast-path",
        type=_bool,
        help="answer inference requests inside the HTTP protocol, without ASGI (default true)",
    )
    p.add_argument(
        "--busy-poll-us",
        type=float,
        help="after network input, keep the event loop polling instead of sleeping this long:"
        " lower latency for one-at-a-time clients, up to a core of CPU while they send (default 500; 0 = off)",
    )
    p.add_argument(
        "--intra-op-threads", type=int, help="onnxruntime intra-op threads per session (default 1)"
    )
    p.add_argument(
        "--inter-op-threads", type=int, help="onnxruntime inter-op threads per session (default 1)"
    )
    p.add_argument("--ort-spinning", type=_bool, help="let onnxruntime threads spin-wait (default false)")
    p.add_argument(
        "--inline-compute-us",
        type=float,
        help="run a batch on the event loop instead of a thread when it is expected to take less than this (default 50; 0 = always a thread)",
    )
    p.add_argument("--infer-threads", type=int, help="threads running onnxruntime for all models (default 2)")
    p.add_argument("--load-threads", type=int, help="threads loading and warming models (default 1)")
    p.add_argument(
        "--model-isolation",
        choices=["thread", "process"],
        help="run each model version in this process (thread, default) or in a child process of its own,"
        " loaded at low priority and paced so that loading does not slow the other models (process);"
        " a model's config parameter 'isolation' overrides it",
    )
    p.add_argument(
        "--process-run-timeout-s",
        type=float,
        help="isolation process: seconds before a run with no answer counts as a hung child, which is"
        " killed; the version is unready until loaded again (default 120)",
    )
    p.add_argument(
        "--process-load-timeout-s",
        type=float,
        help="isolation process: seconds a child may take to load and warm up (default 600)",
    )
    p.add_argument(
        "--default-max-batch-size",
        type=int,
        help="max_batch_size for models without config whose graph has a dynamic batch dim (default 32; 0 = no batching)",
    )
    p.add_argument(
        "--batching", type=_bool, help="dynamic batching for models that configure it (default true)"
    )
    p.add_argument(
        "--max-queue-delay-us", type=int, help="override every model's max_queue_delay_microseconds"
    )
    p.add_argument("--max-queue-size", type=int, help="queue limit for models that set none (default 1024)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where traffic policies, rollouts, audit log and drift references persist",
    )
    p.add_argument(
        "--shadow-max-in-flight",
        type=int,
        help="mirrored (shadow) requests in flight before more are dropped (default 64)",
    )
    p.add_argument("--admin-token", help="bearer token required by the admin API (or TURNOUT_ADMIN_TOKEN)")
    p.add_argument(
        "--auth-tokens-file",
        type=Path,
        help='named tokens with scopes (infer, read, admin): JSON {"tokens": [{"name": ..., "scopes": [...],'
        ' "sha256": ...}]} ("token": plaintext also accepted); TURNOUT_AUTH_TOKENS may hold the same JSON',
    )
    p.add_argument(
        "--auth-infer", type=_bool, help="inference needs a token with the infer scope (default false)"
    )
    p.add_argument(
        "--auth-metrics",
        type=_bool,
        help="/metrics, the dashboard and statistics need a token with the read scope (default false)",
    )
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA: require client certificates it signed, on both protocols (mTLS)",
    )
    p.add_argument(
        "--tls-reload-secs",
        type=float,
        help="check the TLS files this often and reload changed ones without a restart (default 5; 0 = never)",
    )
    p.add_argument("--drift", type=_bool, help="drift monitoring (default true)")
    p.add_argument(
        "--drift-sample", type=float, help="fraction of requests fed to drift monitoring (default 1.0)"
    )
    p.add_argument("--drift-window-rows", type=int, help="rows per drift test window (default 10000)")
    p.add_argument(
        "--drift-window-seconds",
        type=float,
        help="also close a drift window after this many seconds (default 60)",
    )
    p.add_argument(
        "--drift-reference-rows",
        type=int,
        help="rows captured as the drift reference when none is shipped (default 10000)",
    )
    p.add_argument(
        "--drift-alpha", type=float, help="drift false-alarm rate per window for a whole model (default 0.01)"
    )
    p.add_argument(
        "--drift-webhook", help="URL that receives a JSON POST when a version's drift status changes"
    )
    p.add_argument(
        "--exit-timeout-secs",
        type=float,
        help="on SIGTERM, how long requests in flight may take to finish (default 30)",
    )
    p.add_argument("--log-verbose", type=int, help="0 info, 1 more, 2 debug (default 0)")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format (default text)")
    return p


def token_hash_parser(sub: Any) -> None:
    p = sub.add_parser(
        "token-hash",
        help="print the sha256 of a token read from standard input, for an --auth-tokens-file entry",
    )
    p.set_defaults(func=_token_hash)


def _token_hash(ns: argparse.Namespace) -> int:
    from server.auth import token_digest

    token = sys.stdin.readline().strip()
    if not token:
        print("turnout token-hash: write the token on standard input", file=sys.stderr)
        return 2
    print(token_digest(token).hex())
    return 0


def settings_from_args(ns: argparse.Namespace) -> Settings:
    values = {k: v for k, v in vars(ns).items() if k not in ("command", "repository")}
    repo = getattr(ns, "repository", None)
    if repo is not None:
        values["model_repository"] = str(repo)
    if "load_model" in values:
        values["load_model"] = tuple(values["load_model"])
    return Settings(**values)


async def run_server(settings: Settings) -> None:
    # The loop takes SIGTERM/SIGINT over first: from here on a signal only asks for a stop, so it
    # never interrupts the construction of the runtime (which starts threads and a child process).
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - non-Linux platforms
        pass
    from server.runtime import Runtime

    runtime = Runtime(settings)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        if stop_requested.is_set():
            return
        await runtime.start()
        # Everything alive now (modules, the first models) lives as long as the process: move it
        # out of the collector's reach, so a full collection later scans only what came after.
        # Model churn made such collections take ~50 ms with the GIL held; after this, 1-3 ms.
        gc.collect()
        gc.freeze()
        await runtime.wait()
    finally:
        await runtime.stop()  # also after a failed start: loaded models and child processes end


def _stop_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


def apply_grpc_experiments(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """grpc reads GRPC_EXPERIMENTS once, when it is first imported: set it before that (and
    before any worker process starts, so that workers inherit it). An explicit variable wins."""
    if settings.grpc_experiments and "GRPC_EXPERIMENTS" not in environ:
        environ["GRPC_EXPERIMENTS"] = settings.grpc_experiments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model serving gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser(sub)
    from server.admin_cli import add_admin_commands

    add_admin_commands(sub)
    token_hash_parser(sub)
    ns = parser.parse_args(argv)
    if ns.command != "serve":
        return int(ns.func(ns))
    try:
        settings = settings_from_args(ns)
    except ValidationError as exc:
        print(f"turnout: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    from server.auth import TokenConfigError, load_tokens

    try:  # a bad token file stops the start here, with its reason, not in every worker
        load_tokens(settings.admin_token, settings.auth_tokens_file, settings.auth_tokens)
    except TokenConfigError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    # Until the event loop (first thing in run_server) or the supervisor takes SIGTERM over, it
    # ends the start quietly: nothing has started yet that needs stopping, and the exit status is
    # that of a requested stop. The loop does not give the handler back; the default is restored
    # after it.
    signal.signal(signal.SIGTERM, _stop_before_start)
    configure(settings.log_verbose, settings.log_format)
    apply_grpc_experiments(settings, os.environ)
    if os.environ.get("GRPC_EXPERIMENTS"):
        logging.getLogger("turnout").info("grpc experiments: %s", os.environ["GRPC_EXPERIMENTS"])
    if settings.workers > 1:
        from server.supervisor import Supervisor

        args = list(argv if argv is not None else sys.argv[1:])
        return Supervisor(settings, args[args.index("serve") + 1 :]).run()
    try:
        import uvloop

        uvloop.run(run_server(settings))
    except ImportError:  # pragma: no cover
        asyncio.run(run_server(settings))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
