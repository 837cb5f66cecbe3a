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
from pydantic_settings import SettingsError

from turnout.server.flags import HelpFormatter, add_settings_flags
from turnout.server.observe.logs import configure
from turnout.server.settings import SECTIONS, Settings

# after the start-up freeze, one full collection per this many of the middle generation (run_server)
FULL_COLLECTION_EVERY = 1000


def serve_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model repository",
        usage="turnout serve [repository] [flags]",
        description="Serve ONNX models over the Open Inference Protocol (gRPC and HTTP). "
        "Every flag can also be set as an environment variable TURNOUT_<FLAG> (e.g. TURNOUT_HTTP_PORT); "
        "flags win over the environment.",
        formatter_class=HelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "repository",
        nargs="?",
        help="model repository, a directory or s3://bucket/prefix: the same as --model-repository",
    )
    add_settings_flags(p, Settings.model_fields, SECTIONS)
    return p


def token_hash_parser(sub: Any) -> None:
    p = sub.add_parser(
        "token-hash",
        help="print the sha256 of a token read from standard input, for an --auth-tokens-file entry",
    )
    p.set_defaults(func=_token_hash)


def _token_hash(ns: argparse.Namespace) -> int:
    from turnout.server.auth import token_digest

    token = sys.stdin.readline().strip()
    if not token:
        print("turnout token-hash: write the token on standard input", file=sys.stderr)
        return 2
    print(token_digest(token).hex())
    return 0


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Settings from the flags given (absent from ``ns`` when not given), then the environment."""
    values = {k: v for k, v in vars(ns).items() if k not in ("command", "repository")}
    if getattr(ns, "repository", None) is not None:
        values["model_repository"] = ns.repository
    return Settings(**values)


def repository_problem(settings: Settings) -> str | None:
    """Why a local model repository cannot be served (None: it can). A remote one is checked
    when it is first read."""
    if settings.is_remote:
        return None
    path = Path(settings.model_repository)
    if not path.exists():
        return f"model repository {path} does not exist"
    if not path.is_dir():
        return f"model repository {path} is not a directory"
    return None


async def run_server(settings: Settings) -> None:
    # The loop takes SIGTERM/SIGINT over first: from here on a signal only asks for a stop, so it
    # never interrupts the construction of the runtime (which starts threads and a child process).
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by main: a pending one lands here
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - non-Linux platforms
        pass
    from turnout.server.runtime import Runtime

    runtime = Runtime(settings)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        if stop_requested.is_set():
            return
        await runtime.start()
        # Everything alive now (modules, the first models) lives as long as the process: move it
        # out of the collector's reach, so a full collection later scans only what came after.
        # (Model churn made such collections long, with the GIL held: benchmarks/results/NOTES.md.)
        gc.collect()
        gc.freeze()
        # What came after still costs a full collection tens of ms with many connections open;
        # make those rare: one per FULL_COLLECTION_EVERY collections of the middle generation
        # (Python's default, 10, ran one about every 70,000 allocations).
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, FULL_COLLECTION_EVERY)
        await runtime.wait()
    finally:
        await runtime.stop()  # also after a failed start: loaded models and child processes end


def _stop_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


def allocator() -> str:
    """Which malloc serves this process: jemalloc when preloaded (the Dockerfile and ``make serve``
    do), else glibc's, which maps and unmaps every buffer of a large tensor anew (page faults on
    every request: benchmarks/results/CURVES.md)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return (
        "jemalloc" if "libjemalloc" in maps else "glibc malloc (preload jemalloc for large tensors: README)"
    )


def apply_grpc_experiments(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """grpc reads GRPC_EXPERIMENTS once, when it is first imported: set it before that (and
    before any worker process starts, so that workers inherit it). An explicit variable wins."""
    if settings.grpc_experiments and "GRPC_EXPERIMENTS" not in environ:
        environ["GRPC_EXPERIMENTS"] = settings.grpc_experiments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model serving gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser(sub)
    from turnout.server.admin_cli import add_admin_commands
    from turnout.server.export import add_export_command
    from turnout.server.fleet_cli import add_fleet_commands

    add_admin_commands(sub)
    add_fleet_commands(sub)
    add_export_command(sub)
    token_hash_parser(sub)
    ns = parser.parse_args(argv)
    if ns.command != "serve":
        return int(ns.func(ns))
    try:
        settings = settings_from_args(ns)
    except (ValidationError, SettingsError) as exc:  # SettingsError: an unreadable TURNOUT_* variable
        print(f"turnout: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    problem = repository_problem(settings)
    if problem is not None:
        print(f"turnout: {problem}", file=sys.stderr)
        return 2
    from turnout.server.auth import TokenConfigError, load_tokens

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
    logging.getLogger("turnout").info("memory allocator: %s", allocator())
    if settings.workers > 1:
        from turnout.server.supervisor import Supervisor

        args = list(argv if argv is not None else sys.argv[1:])
        return Supervisor(settings, args[args.index("serve") + 1 :]).run()
    from turnout.server.listeners import StartError

    # From here until the loop's handler is in place (run_server), SIGTERM is held rather than
    # handled: raised as SystemExit inside the loop's start it could be lost; held, it reaches
    # the loop's handler the moment run_server unblocks it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        try:
            import uvloop

            uvloop.run(run_server(settings))
        except ImportError:  # pragma: no cover
            asyncio.run(run_server(settings))
    except StartError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
