"""Packaging metadata the build backend accepts without deprecation warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_expression_with_a_backend_that_reads_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # PEP 639; a {text = ...} table is deprecated
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert match is not None and int(match.group(1)) >= 77, setuptools  # the first with PEP 639


# -- dependency bounds ----------------------------------------------------------------------------
# The bounds in pyproject.toml say what Turnout works with; the tests below fail when the venv, the
# generated stubs or constraints.txt disagree with them, and (the contract tests) when an upgrade
# removes or reshapes an internal that Turnout uses: then check the new version and move the bound.


def _requirements() -> dict[str, Any]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    out: dict[str, Any] = {}
    for text in reqs:
        req = Requirement(text)
        out.setdefault(canonicalize_name(req.name), req)
    return out


def _gencode_versions() -> tuple[set[str], set[str]]:
    protobuf, grpc = set(), set()
    for path in (ROOT / "protos").rglob("*_pb2.py"):
        m = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())
        assert m, path
        protobuf.add(".".join(m.groups()))
    for path in (ROOT / "protos").rglob("*_pb2_grpc.py"):
        m = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
        assert m, path
        grpc.add(m.group(1))
    return protobuf, grpc


def test_the_generated_stubs_get_the_runtimes_they_were_generated_for() -> None:
    from packaging.version import Version

    protobuf, grpc = _gencode_versions()
    assert len(protobuf) == 1 and len(grpc) == 1, (protobuf, grpc)  # one generator for every stub
    gen_pb, gen_grpc = Version(protobuf.pop()), Version(grpc.pop())
    reqs = _requirements()

    def lower_bound(name: str) -> Version:
        (bound,) = [Version(s.version) for s in reqs[name].specifier if s.operator == ">="]
        return bound

    # at least the gencode's version (an older runtime refuses the stubs), below its next major
    assert lower_bound("protobuf") >= gen_pb
    assert not reqs["protobuf"].specifier.contains(f"{gen_pb.major + 1}.0.0")
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert lower_bound(name) >= gen_grpc, name
    # the pinned generator is the one that made the stubs
    assert str(reqs["grpcio-tools"].specifier) == f"=={gen_grpc}"


def test_the_installed_packages_and_constraints_txt_satisfy_pyproject() -> None:
    from importlib import metadata

    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for name, req in _requirements().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (name, installed, str(req.specifier))


def test_packages_whose_internals_we_use_have_an_upper_bound() -> None:
    reqs = _requirements()
    for name in ("uvicorn", "prometheus-client", "grpcio-reflection", "protobuf"):
        assert any(s.operator == "<" for s in reqs[name].specifier), name


def test_contract_uvicorn_internals() -> None:
    """What server/http/protocol.py and server/runtime.py use of uvicorn beyond its public API."""
    import asyncio
    import inspect

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    for method in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "pause_writing",
        "resume_writing",
        "send_400_response",
        "_unset_keepalive_if_required",
        "_unsupported_upgrade_warning",
    ):
        assert callable(getattr(HttpToolsProtocol, method, None)), method
    params = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert params[:3] == ["self", "config", "server_state"], params
    for method in ("startup", "shutdown"):
        assert "sockets" in inspect.signature(getattr(uvicorn.Server, method)).parameters, method
    for attr in ("main_loop", "capture_signals", "startup", "shutdown"):
        assert hasattr(uvicorn.Server, attr), attr

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        pass

    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app, loop="none", lifespan="off", timeout_graceful_shutdown=1.5)
        config.load()
        assert config.timeout_graceful_shutdown == 1.5 and hasattr(config, "lifespan_class")
        assert hasattr(config, "ssl")
        state = ServerState()
        assert isinstance(state.connections, set) and isinstance(state.default_headers, list)
        protocol = HttpToolsProtocol(config, state, {}, _loop=loop)

        class Transport(asyncio.Transport):
            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

            def is_closing(self) -> bool:
                return False

        protocol.connection_made(Transport())
        protocol.on_message_begin()
        for attr in ("config", "server_state", "connections", "tasks", "loop", "parser", "pipeline", "flow"):
            assert hasattr(protocol, attr), attr
        assert protocol in state.connections and isinstance(protocol.tasks, set)
        for attr in ("url", "headers", "expect_100_continue", "client", "limit_concurrency"):
            assert hasattr(protocol, attr), attr
        assert hasattr(protocol.flow, "write_paused") and callable(protocol.flow.drain)
        for call in ("feed_data", "get_method", "should_upgrade", "get_http_version", "should_keep_alive"):
            assert callable(getattr(protocol.parser, call)), call
    finally:
        loop.close()


def test_contract_prometheus_client_histogram_internals() -> None:
    """server/observe/metrics.py's HistogramTally reads _upper_bounds and adds to _buckets and _sum."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram

    registry = CollectorRegistry()
    child = Histogram("h", "h", ["l"], buckets=(0.1, 1.0), registry=registry).labels("x")
    assert list(child._upper_bounds) == [0.1, 1.0, float("inf")]
    assert len(child._buckets) == len(child._upper_bounds)
    for value in (*child._buckets, child._sum):
        value.inc(2)
        assert value.get() == 2
    for mode in ("livesum", "liveall", "max"):
        Gauge(f"g_{mode}", "g", registry=registry, multiprocess_mode=mode)


def test_contract_grpc_reflection_asyncio_servicer() -> None:
    from grpc_reflection.v1alpha import _async, reflection_pb2_grpc

    assert issubclass(_async.ReflectionServicer, reflection_pb2_grpc.ServerReflectionServicer)
    _async.ReflectionServicer(["inference.GRPCInferenceService"])


def test_the_dockerfile_builds_what_the_manifests_expect() -> None:
    """Docker is not needed to read the Dockerfile: what it installs, runs and exposes."""
    from turnout.server.settings import Settings

    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert "-c constraints.txt" in text and "'.[s3]'" in text and "'turnout[s3]'" in text
    assert "s3" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert 'ENTRYPOINT ["tini", "--", "turnout"]' in lines and "tini" in text.split("ENTRYPOINT")[0]
    assert "STOPSIGNAL SIGTERM" in lines
    stop_timeout = int(re.search(r"--stop-timeout (\d+)", text).group(1))  # type: ignore[union-attr]
    defaults = Settings.model_fields
    assert stop_timeout > defaults["exit_timeout_secs"].default
    # non-root, numeric (Kubernetes' runAsNonRoot can check it), the uid the manifests run as
    assert "USER 10001" in lines
    assert "runAsUser: 10001" in (ROOT / "deploy/kubernetes/base/deployment.yaml").read_text()
    ports = {defaults["http_port"].default, defaults["grpc_port"].default}
    assert f"EXPOSE {' '.join(str(p) for p in sorted(ports))}" in lines
    # every package pyproject ships is copied in, and nothing copied is ignored
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line}
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".venv-kserve"} <= ignored
    assert not copied & ignored and not {"README.md", "constraints.txt", "pyproject.toml"} & ignored
