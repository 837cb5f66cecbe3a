"""The access policy table covers every HTTP route the app serves and every gRPC method the
server registers, and nothing else; the token check and the cross-site rule on their own."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from pydantic import SecretStr
from starlette.routing import Route

from turnout.protos import inference_pb2
from turnout.protos.turnout import admin_pb2
from turnout.server.auth import (
    GRPC_POLICY,
    HTTP_POLICY,
    Authorizer,
    Need,
    TokenConfigError,
    cross_site_refusal,
    load_tokens,
    parse_tokens,
    token_digest,
)
from turnout.server.errors import PermissionDenied, Unauthenticated
from turnout.server.http.access import secure_routes
from turnout.server.runtime import Runtime
from turnout.server.settings import Settings


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    rt = Runtime(Settings(drift=False))
    yield rt
    rt.pool.shutdown(wait=False)
    rt.controller.close()
    loop.close()
    asyncio.set_event_loop(None)


def _served_http(runtime: Runtime) -> set[tuple[str, str]]:
    served: set[tuple[str, str]] = set()
    for route in runtime.http_routes():
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":
                served.add((method, route.path))
    # answered in front of Starlette by server/http/infer_route.py
    served |= {("POST", "/v2/models/{model}/infer"), ("POST", "/v2/models/{model}/versions/{version}/infer")}
    return served


def test_every_http_route_has_a_policy_and_every_policy_a_route(runtime: Runtime) -> None:
    served = _served_http(runtime)
    missing = served - set(HTTP_POLICY)
    assert not missing, f"routes without an access policy (server/auth.py HTTP_POLICY): {sorted(missing)}"
    stale = set(HTTP_POLICY) - served
    assert not stale, f"policy entries for routes that do not exist: {sorted(stale)}"


def test_the_app_is_built_with_every_route_secured(runtime: Runtime) -> None:
    app = runtime.http_app()
    assert len(app.app.routes) == len(runtime.http_routes())  # type: ignore[attr-defined]
    unknown = Route("/v2/brand-new", lambda r: None, methods=["POST"])
    with pytest.raises(LookupError, match="no access policy for POST /v2/brand-new"):
        secure_routes([*runtime.http_routes(), unknown], runtime.auth)


def test_every_grpc_method_has_a_policy_and_every_policy_a_method() -> None:
    methods = {
        f"/{service.full_name}/{m.name}"
        for module in (inference_pb2, admin_pb2, health_pb2, reflection_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    missing = methods - set(GRPC_POLICY)
    assert not missing, (
        f"gRPC methods without an access policy (server/auth.py GRPC_POLICY): {sorted(missing)}"
    )
    assert set(GRPC_POLICY) == methods


def test_everything_that_changes_state_needs_admin() -> None:
    for (method, path), need in HTTP_POLICY.items():
        if method in ("PUT", "DELETE") or (
            method == "POST" and path.startswith(("/admin", "/v2/repository/models"))
        ):
            assert need is Need.ADMIN, (method, path)
    for name in ("RepositoryModelLoad", "RepositoryModelUnload"):
        assert GRPC_POLICY[f"/inference.GRPCInferenceService/{name}"] is Need.ADMIN
    for name in ("SetTraffic", "Rollback", "StartRollout", "ControlRollout"):
        assert GRPC_POLICY[f"/turnout.admin.v1.Admin/{name}"] is Need.ADMIN


def _authorizer(**kw: bool) -> Authorizer:
    tokens = parse_tokens(
        {
            "tokens": [
                {"name": "ops", "scopes": ["admin"], "sha256": hashlib.sha256(b"admin-secret").hexdigest()},
                {"name": "grafana", "scopes": ["read"], "token": "read-secret"},
                {"name": "app", "scopes": ["infer"], "token": "infer-secret"},
            ]
        },
        "test",
    )
    return Authorizer(tokens, **kw)


def test_scopes_401_and_403() -> None:
    auth = _authorizer(infer=True, metrics=True)
    peer = "10.0.0.1"
    assert auth.require(Need.ADMIN, "Bearer admin-secret", peer).name == "ops"
    assert auth.require(Need.READ, "bearer admin-secret", peer).name == "ops"  # admin implies read
    assert auth.require(Need.INFER, "Bearer admin-secret", peer).name == "ops"  # ... and infer
    assert auth.require(Need.READ, "Bearer read-secret", peer).name == "grafana"
    assert auth.require(Need.OBSERVE, "Bearer read-secret", peer).name == "grafana"
    with pytest.raises(PermissionDenied):
        auth.require(Need.INFER, "Bearer read-secret", peer)  # read does not imply infer
    with pytest.raises(PermissionDenied):
        auth.require(Need.ADMIN, "Bearer read-secret", peer)
    with pytest.raises(PermissionDenied):
        auth.require(Need.READ, "Bearer infer-secret", peer)
    for bad in (None, "", "Bearer nope", "Basic YWRtaW4=", "admin-secret"):
        with pytest.raises(Unauthenticated):
            auth.require(Need.ADMIN, bad, "127.0.0.1")  # loopback is no exception once tokens exist
    assert auth.require(Need.OPEN, None, peer).name == "anonymous"


def test_optional_scopes_are_open_unless_switched_on() -> None:
    auth = _authorizer()
    assert auth.require(Need.INFER, None, "10.0.0.1").name == "anonymous"
    assert auth.require(Need.OBSERVE, None, "10.0.0.1").name == "anonymous"
    with pytest.raises(Unauthenticated):
        auth.require(Need.READ, None, "10.0.0.1")


def test_without_tokens_the_control_plane_is_loopback_only() -> None:
    auth = Authorizer([])
    assert auth.require(Need.ADMIN, None, "127.0.0.1").name == "loopback:127.0.0.1"
    assert auth.require(Need.READ, "Bearer whatever", "::1").name == "loopback:::1"
    for need in (Need.ADMIN, Need.READ):
        with pytest.raises(PermissionDenied):
            auth.require(need, None, "10.0.0.1")
    assert auth.require(Need.INFER, None, "10.0.0.1").name == "anonymous"
    assert auth.require(Need.OBSERVE, None, "10.0.0.1").name == "anonymous"
    with pytest.raises(TokenConfigError):
        Authorizer([], infer=True)


def test_token_sources(tmp_path: Path) -> None:
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"tokens": [{"name": "ci-bot", "scopes": ["admin"], "token": "ci-secret-1"}]}))
    env = SecretStr(json.dumps({"tokens": [{"name": "dash", "scopes": ["read"], "sha256": "ab" * 32}]}))
    tokens = load_tokens(SecretStr("old-admin-token"), f, env)
    assert [t.name for t in tokens] == ["admin", "ci-bot", "dash"]
    assert tokens[1].digest == token_digest("ci-secret-1")
    assert "ci-secret-1" not in repr(tokens)
    assert tokens[0].scopes == {"admin", "read", "infer"}
    for bad in (
        {"tokens": [{"name": "x", "scopes": ["root"], "token": "12345678"}]},
        {"tokens": [{"name": "x", "scopes": ["read"]}]},
        {"tokens": [{"name": "x", "scopes": ["read"], "sha256": "zz"}]},
        {"tokens": [{"name": "x", "scopes": ["read"], "token": "12345678", "sha256": "ab" * 32}]},
        {"tokens": [{"name": "", "scopes": ["read"], "token": "12345678"}]},
        {"tokens": [{"name": "loopback:1", "scopes": ["read"], "token": "12345678"}]},
        [{"name": "x"}],
    ):
        with pytest.raises(TokenConfigError):
            parse_tokens(bad, "test")
    dup = SecretStr(json.dumps({"tokens": [{"name": "admin", "scopes": ["read"], "token": "another-1"}]}))
    with pytest.raises(TokenConfigError, match="more than once"):
        load_tokens(SecretStr("old-admin-token"), None, dup)
    same = SecretStr(json.dumps({"tokens": [{"name": "b", "scopes": ["read"], "token": "old-admin-token"}]}))
    with pytest.raises(TokenConfigError, match="same secret"):
        load_tokens(SecretStr("old-admin-token"), None, same)


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {"origin": "http://evil.example", "content-type": "text/plain"}, False),
        ("POST", {"host": "127.0.0.1:8000"}, False),  # tritonclient: no content type, no origin
        ("POST", {"host": "127.0.0.1:8000", "content-type": "application/json; charset=utf-8"}, False),
        ("POST", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ("POST", {"host": "localhost", "origin": "http://localhost:80"}, False),
        ("POST", {"host": "127.0.0.1:8000", "sec-fetch-site": "same-origin"}, False),
        ("POST", {"host": "127.0.0.1:8000", "content-type": "text/plain"}, True),
        ("PUT", {"host": "127.0.0.1:8000", "content-type": "application/x-www-form-urlencoded"}, True),
        ("DELETE", {"host": "127.0.0.1:8000", "content-type": "multipart/form-data; boundary=x"}, True),
        ("POST", {"host": "127.0.0.1:8000", "origin": "http://evil.example"}, True),
        ("POST", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9999"}, True),
        ("POST", {"host": "127.0.0.1:8000", "origin": "null"}, True),
        ("POST", {"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, True),
    ],
)
def test_cross_site_rule(method: str, headers: dict[str, str], refused: bool) -> None:
    assert (cross_site_refusal(method, headers, "http") is not None) is refused


def test_token_hash_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from turnout.server.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("ci-secret-1\n"))
    assert main(["token-hash"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"ci-secret-1").hexdigest()


def test_settings_refuse_optional_scopes_without_tokens(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="need tokens"):
        Settings(auth_infer=True)
    with pytest.raises(ValidationError, match="tls_client_ca needs"):
        Settings(tls_client_ca=tmp_path / "ca.pem")
    assert Settings(auth_metrics=True, admin_token=SecretStr("x" * 16)).auth_metrics
