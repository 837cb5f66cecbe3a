"""Access control end to end, on the real server: every mutating route and RPC of the policy
table refused without a token (401 / UNAUTHENTICATED) and with a token lacking the scope
(403 / PERMISSION_DENIED), allowed with an admin token; tritonclient's repository calls with
a token; the audit log's identity; cross-site refusal; the optional inference and metrics
tokens; and the no-token loopback rule."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.server_proc import ServerProc, start_server
from turnout.server.auth import GRPC_POLICY, HTTP_POLICY, Need

ADMIN, READ, INFER = "admin-token-0123", "read-token-4567", "infer-token-89ab"
TOKENS = {
    "tokens": [
        {"name": "ops", "scopes": ["admin"], "sha256": hashlib.sha256(ADMIN.encode()).hexdigest()},
        {"name": "grafana", "scopes": ["read"], "token": READ},
        {"name": "app", "scopes": ["infer"], "token": INFER},
    ]
}
MODEL = "mlp"
T = 10.0  # seconds: bound on every client call


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    args = ["--auth-tokens-file", str(tokens), "--auth-infer", "true", "--auth-metrics", "true"]
    args += ["--model-control-mode", "explicit", "--load-model", "*", "--drift", "false"]
    server = start_server(tmp, args=args)
    yield server
    assert server.stop() == 0, server.log()


def model_ready(s: ServerProc) -> bool:
    return httpx.get(f"{s.base}/v2/models/{MODEL}/ready", timeout=T).status_code == 200


def fill(path: str, model: str) -> str:
    return path.replace("{model}", model).replace("{version}", "1").replace("{action}", "pause")


ADMIN_HTTP = sorted(k for k, need in HTTP_POLICY.items() if need is Need.ADMIN)
ADMIN_GRPC = sorted(k for k, need in GRPC_POLICY.items() if need is Need.ADMIN)


def test_the_tables_name_the_mutations() -> None:
    assert ("POST", "/v2/repository/models/{model}/unload") in ADMIN_HTTP
    assert "/inference.GRPCInferenceService/RepositoryModelUnload" in ADMIN_GRPC
    assert len(ADMIN_HTTP) >= 8 and len(ADMIN_GRPC) >= 6


@pytest.mark.parametrize(("method", "path"), ADMIN_HTTP)
def test_http_mutation_needs_an_admin_token(secured: ServerProc, method: str, path: str) -> None:
    url = secured.base + fill(path, MODEL)
    body = {"stable": "2", "canary": "2", "reason": "attack"}
    r = httpx.request(method, url, json=body, timeout=T)
    assert r.status_code == 401, r.text
    assert "Bearer" in r.json()["error"]
    r = httpx.request(method, url, json=body, headers=bearer("not-a-token"), timeout=T)
    assert r.status_code == 401, r.text
    for token in (READ, INFER):
        r = httpx.request(method, url, json=body, headers=bearer(token), timeout=T)
        assert r.status_code == 403, (token, r.text)
    assert model_ready(secured)
    admin = httpx.get(f"{secured.base}/admin/models/{MODEL}/traffic", headers=bearer(ADMIN), timeout=T)
    assert admin.status_code == 404, admin.text  # no policy was set by the refused calls
    # an admin token passes the check: a model that does not exist gets past it to a 4xx of its own
    r = httpx.request(
        method, secured.base + fill(path, "no-such-model"), json={}, headers=bearer(ADMIN), timeout=T
    )
    assert r.status_code not in (401, 403) and r.status_code < 500, r.text


def _raw_call(channel: grpc.Channel, method: str, token: str | None) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(b"", metadata=md(token) if token else None, timeout=T)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", ADMIN_GRPC)
def test_grpc_mutation_needs_an_admin_token(secured: ServerProc, method: str) -> None:
    with grpc.insecure_channel(secured.grpc_url) as ch:
        assert _raw_call(ch, method, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _raw_call(ch, method, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
        assert _raw_call(ch, method, READ) == grpc.StatusCode.PERMISSION_DENIED
        assert _raw_call(ch, method, INFER) == grpc.StatusCode.PERMISSION_DENIED
        # empty request (no model named): past the check, refused for what it asks
        code = _raw_call(ch, method, ADMIN)
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), code
        assert code != grpc.StatusCode.INTERNAL
    assert model_ready(secured)


def test_tritonclient_repository_calls_need_admin(secured: ServerProc) -> None:
    h = httpclient.InferenceServerClient(secured.http_url, network_timeout=T, connection_timeout=T)
    g = grpcclient.InferenceServerClient(secured.grpc_url)
    try:
        for fn in (h.unload_model, g.unload_model, h.load_model, g.load_model):
            with pytest.raises(InferenceServerException):
                fn(MODEL)
        with pytest.raises(InferenceServerException, match="scope"):
            h.unload_model(MODEL, headers=bearer(READ))
        with pytest.raises(InferenceServerException) as e:
            g.unload_model(MODEL, headers={"authorization": f"Bearer {READ}"})
        assert e.value.status() == "StatusCode.PERMISSION_DENIED"
        assert h.is_model_ready(MODEL) and g.is_model_ready(MODEL)  # health and readiness stay open

        h.unload_model(MODEL, headers=bearer(ADMIN))
        assert not model_ready(secured)
        h.load_model(MODEL, headers=bearer(ADMIN))
        assert model_ready(secured)
        g.unload_model(MODEL, headers={"authorization": f"Bearer {ADMIN}"})
        assert not model_ready(secured)
        g.load_model(MODEL, headers={"authorization": f"Bearer {ADMIN}"})
        assert model_ready(secured)
    finally:
        h.close()
        g.close()


def test_reads_need_read_and_the_audit_names_the_token(secured: ServerProc) -> None:
    base = f"{secured.base}/admin"
    assert httpx.get(f"{base}/audit", timeout=T).status_code == 401
    assert httpx.get(f"{base}/audit", headers=bearer(INFER), timeout=T).status_code == 403
    r = httpx.put(
        f"{base}/models/{MODEL}/traffic",
        json={"stable": "1", "reason": "audit test"},
        headers={**bearer(ADMIN), "x-turnout-user": "mallory"},
        timeout=T,
    )
    assert r.status_code == 200, r.text
    entries = httpx.get(f"{base}/audit", headers=bearer(READ), timeout=T).json()["entries"]
    last = entries[-1]
    assert last["who"] == "ops" and last["reason"] == "audit test", last
    assert "mallory" not in json.dumps(entries)
    assert (
        httpx.get(f"{base}/models/{MODEL}/traffic", headers=bearer(READ), timeout=T).json()["stable"] == "1"
    )
    sys.modules.pop("turnout.protos.turnout.admin_pb2", None)
    from turnout.protos.turnout import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(secured.grpc_url) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        stub.SetTraffic(
            admin_pb2.SetTrafficRequest(
                policy=admin_pb2.TrafficPolicy(model=MODEL, stable="2"), reason="grpc audit"
            ),
            metadata=[*md(ADMIN), ("x-turnout-user", "mallory")],
            timeout=T,
        )
        audit = stub.GetAudit(admin_pb2.AuditRequest(limit=5), metadata=md(READ), timeout=T)
        assert audit.entries[-1].who == "ops" and audit.entries[-1].reason == "grpc audit"
        with pytest.raises(grpc.RpcError) as e:
            stub.GetAudit(admin_pb2.AuditRequest(limit=5), timeout=T)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    httpx.delete(f"{base}/models/{MODEL}/traffic", headers=bearer(ADMIN), timeout=T)


def test_optional_inference_and_metrics_tokens(secured: ServerProc) -> None:
    meta = httpx.get(f"{secured.base}/v2/models/{MODEL}", timeout=T).json()
    inp = meta["inputs"][0]
    shape = [1 if d == -1 else d for d in inp["shape"]]
    body = {
        "inputs": [
            {
                "name": inp["name"],
                "datatype": inp["datatype"],
                "shape": shape,
                "data": [0.5] * int(np.prod(shape)),
            }
        ]
    }
    url = f"{secured.base}/v2/models/{MODEL}/infer"
    assert httpx.post(url, json=body, timeout=T).status_code == 401
    assert httpx.post(url, json=body, headers=bearer(READ), timeout=T).status_code == 403
    assert httpx.post(url, json=body, headers=bearer(INFER), timeout=T).status_code == 200
    assert (
        httpx.post(url, json=body, headers=bearer(ADMIN), timeout=T).status_code == 200
    )  # admin implies infer

    g = grpcclient.InferenceServerClient(secured.grpc_url)
    try:
        x = grpcclient.InferInput(inp["name"], shape, inp["datatype"])
        x.set_data_from_numpy(np.full(shape, 0.5, dtype=np.float32))
        with pytest.raises(InferenceServerException) as e:
            g.infer(MODEL, [x], client_timeout=T)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert g.infer(MODEL, [x], headers={"authorization": f"Bearer {INFER}"}, client_timeout=T) is not None
        assert g.is_server_live() and g.get_model_metadata(MODEL) is not None  # open
    finally:
        g.close()

    for path in ("/metrics", "/dashboard", "/dashboard/data", "/v2/models/stats"):
        assert httpx.get(secured.base + path, timeout=T).status_code == 401, path
        assert httpx.get(secured.base + path, headers=bearer(INFER), timeout=T).status_code == 403, path
        assert httpx.get(secured.base + path, headers=bearer(READ), timeout=T).status_code == 200, path
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/ready",
    ):
        assert httpx.get(secured.base + path, timeout=T).status_code == 200, path


# ---- without tokens: loopback only (tests/unit/test_auth_policy.py covers other addresses),
# and cross-site requests refused


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = start_server(tmp_path_factory.mktemp("noauth"), args=["--drift", "false"])
    yield server
    assert server.stop() == 0, server.log()


def test_cross_site_requests_change_nothing(open_server: ServerProc) -> None:
    base = f"{open_server.base}/admin/models/{MODEL}"
    assert (
        httpx.put(
            f"{base}/traffic", json={"stable": "1", "canaries": [{"version": "2", "weight": 0.5}]}, timeout=T
        ).status_code
        == 200
    )  # loopback, no token: allowed
    before = httpx.get(f"{base}/traffic", timeout=T).json()
    attacks = [
        ("POST", f"{base}/rollback", {"content-type": "text/plain"}, b'{"reason": "x"}'),
        ("POST", f"{base}/rollback", {"content-type": "application/x-www-form-urlencoded"}, b""),
        ("PUT", f"{base}/traffic", {"content-type": "text/plain"}, b'{"stable": "2"}'),
        ("DELETE", f"{base}/traffic", {"content-type": "text/plain"}, b""),
        (
            "POST",
            f"{base}/rollback",
            {"origin": "http://evil.example", "content-type": "application/json"},
            b"{}",
        ),
        ("PUT", f"{base}/traffic", {"origin": "null"}, b'{"stable": "2"}'),
        ("POST", f"{base}/rollback", {"sec-fetch-site": "cross-site"}, b"{}"),
        (
            "POST",
            f"{open_server.base}/v2/repository/models/{MODEL}/unload",
            {"content-type": "text/plain"},
            b"{}",
        ),
        (
            "POST",
            f"{open_server.base}/v2/repository/models/{MODEL}/unload",
            {"origin": "http://evil.example"},
            b"",
        ),
    ]
    for method, url, headers, content in attacks:
        r = httpx.request(method, url, headers=headers, content=content, timeout=T)
        assert r.status_code == 403, (method, url, headers, r.text)
        assert "cross-site" in r.json()["error"] or "JSON" in r.json()["error"]
    assert httpx.get(f"{base}/traffic", timeout=T).json() == before
    assert model_ready(open_server)
    audit = httpx.get(f"{open_server.base}/admin/audit", timeout=T).json()["entries"]
    assert [e["action"] for e in audit].count("rollback") == 0
    assert audit[-1]["who"].startswith("loopback:127.0.0.1")
    # same origin, JSON: allowed
    same = {"origin": open_server.base, "content-type": "application/json"}
    r = httpx.post(f"{base}/rollback", headers=same, content=b'{"reason": "ok"}', timeout=T)
    assert r.status_code == 200, r.text
    httpx.delete(f"{base}/traffic", timeout=T)
