"""Traffic routing end to end: weighted split, sticky keys across restarts and processes,
shadow traffic, rollback under load, automated rollouts, persistence and admin auth."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from scipy.stats import chisquare

from tests.integration import routing_models as rm
from tests.integration.load import LoadDriver
from tests.server_proc import ServerProc, running_server, start_server

CONFIG = "max_batch_size: 8\nversion_policy: { all {} }\ndynamic_batching { }\n"


def make_repo(tmp: Path, versions: dict[str, bytes]) -> Path:
    repo = tmp / "repo"
    (repo / "clf").mkdir(parents=True)
    (repo / "clf" / "config.pbtxt").write_text(CONFIG)
    for v, content in versions.items():
        (repo / "clf" / v).mkdir()
        (repo / "clf" / v / "model.onnx").write_bytes(content)
    return repo


def admin(s: ServerProc, method: str, path: str, body: object = None, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{s.base}/admin{path}", json=body, timeout=10, **kw)  # type: ignore[arg-type]


def body_for(x: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}
        ]
    }


async def _send_many(
    s: ServerProc, n: int, key: Callable[[int], str | None], concurrency: int = 16
) -> list[str]:
    """n ModelInfer calls over one gRPC channel (pre-serialized request): fast enough for
    statistics over tens of thousands of requests."""
    import grpc
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="clf")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(rm.row(1).tobytes())
    payload = req.SerializeToString()
    out: list[str] = [""] * n
    async with grpc.aio.insecure_channel(s.grpc_url) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                k = key(i)
                resp = await call(payload, metadata=(("x-routing-key", k),) if k else None, timeout=30)
                out[i] = resp.model_version

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def send_many(s: ServerProc, n: int, key: Callable[[int], str | None] = lambda i: None) -> list[str]:
    return asyncio.run(_send_many(s, n, key))


async def _send_many_http(s: ServerProc, keys: list[str]) -> list[str]:
    x = body_for(rm.row(1))
    async with httpx.AsyncClient(base_url=s.base, timeout=30) as c:
        rs = await asyncio.gather(
            *(c.post("/v2/models/clf/infer", json=x, headers={"x-routing-key": k}) for k in keys)
        )
    return [r.json()["model_version"] for r in rs]


def test_weighted_split_and_sticky_keys(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"1": rm.good(), "2": rm.good_clone(), "3": rm.good()})
    state = tmp_path / "state"
    args = ["--state-dir", str(state)]
    s = start_server(tmp_path, repo, args)
    try:
        r = admin(
            s,
            "PUT",
            "/models/clf/traffic",
            {"stable": "1", "canaries": [{"version": "2", "weight": 0.2}, {"version": "3", "weight": 0.1}]},
        )
        assert r.status_code == 200, r.text
        versions = send_many(s, 20000)
        counts = [versions.count(v) for v in ("1", "2", "3")]
        assert sum(counts) == 20000
        p = chisquare(counts, [14000, 4000, 2000]).pvalue
        assert p > 0.001, (counts, p)

        keys = [f"user-{i}" for i in range(300)]
        first = send_many(s, 300, lambda i: keys[i])
        again = send_many(s, 300, lambda i: keys[i])
        assert first == again
        assert asyncio.run(_send_many_http(s, keys)) == first  # the HTTP header routes the same way
        assert set(first) == {"1", "2", "3"}
        # gRPC metadata carries the key too, and lands on the same version
        g = grpcclient.InferenceServerClient(s.grpc_url)
        inp = grpcclient.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(rm.row(1))
        for i in range(0, 300, 37):
            res = g.infer("clf", [inp], headers={"x-routing-key": keys[i]})
            assert res.get_response().model_version == first[i]

        # a second server process reading the same state routes every key the same way
        s2 = start_server(tmp_path, repo, args)
        try:
            assert send_many(s2, 300, lambda i: keys[i]) == first
        finally:
            assert s2.stop() == 0
    finally:
        assert s.stop() == 0
    # ... and so does the first one after a restart
    with running_server(tmp_path, repo, args) as s3:
        assert admin(s3, "GET", "/models/clf/traffic").json()["canaries"][0] == {
            "version": "2",
            "weight": 0.2,
        }
        assert send_many(s3, 300, lambda i: keys[i]) == first
        # a pinned version bypasses the policy
        r = httpx.post(
            f"{s3.base}/v2/models/clf/versions/3/infer",
            json=body_for(rm.row(2)),
            headers={"x-routing-key": keys[0]},
        )
        assert r.json()["model_version"] == "3"


def test_policy_refused_for_unloaded_or_incompatible(tmp_path: Path) -> None:
    from tests.server_proc import DEMO_REPO

    repo = make_repo(tmp_path, {"1": rm.good(), "2": (DEMO_REPO / "iris" / "1" / "model.onnx").read_bytes()})
    (repo / "clf" / "config.pbtxt").write_text("version_policy: { all {} }\n")
    with running_server(tmp_path, repo) as s:
        r = admin(s, "PUT", "/models/clf/traffic", {"stable": "2", "canary": {"version": "9", "weight": 0.5}})
        assert r.status_code == 409 and "not loaded" in r.json()["error"]
        r = admin(s, "PUT", "/models/clf/traffic", {"stable": "2", "canary": {"version": "1", "weight": 0.5}})
        assert r.status_code == 409 and "incompatible signature" in r.json()["error"]
        r = admin(s, "PUT", "/models/clf/traffic", {"stable": "2", "canary": {"version": "1", "weight": 1.5}})
        assert r.status_code == 400


def test_shadow_failures_never_reach_clients(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"1": rm.good(), "2": rm.failing(), "3": rm.disagreeing()})
    with running_server(tmp_path, repo) as s:
        r = admin(
            s,
            "PUT",
            "/models/clf/traffic",
            {
                "stable": "1",
                "shadows": [{"version": "2", "fraction": 1.0}, {"version": "3", "fraction": 1.0}],
            },
        )
        assert r.status_code == 200, r.text
        driver = LoadDriver(
            s.grpc_url, s.http_url, "clf", rm.row, threads_per_protocol=2, max_requests=1500, max_seconds=60
        ).start()
        while driver.count() < 1500 and driver._threads[0].is_alive():
            time.sleep(0.05)
        outcomes = driver.stop()
        assert [o.error for o in outcomes if o.error] == []
        assert {o.version for o in outcomes} == {"1"}
        time.sleep(0.5)
        pairs = {
            (p["primary_version"], p["shadow_version"]): p
            for p in admin(s, "GET", "/models/clf/shadow").json()["pairs"]
        }
        assert pairs[("1", "2")]["shadow_errors"] > 0
        bad = pairs[("1", "3")]
        assert bad["classified_rows"] > 500
        assert 0.2 < bad["disagreement_rate"] < 0.4, bad
        metrics = httpx.get(f"{s.base}/metrics").text
        assert 'turnout_shadow_requests_total{model="clf",outcome="sent",version="3"}' in metrics
        assert 'turnout_shadow_disagreement{model="clf",primary="1",shadow="3"}' in metrics


def test_rollback_under_load(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"1": rm.good(), "2": rm.good_clone()})
    with running_server(tmp_path, repo) as s:
        assert admin(s, "PUT", "/models/clf/traffic", {"stable": "1"}).status_code == 200
        assert admin(s, "PUT", "/models/clf/traffic", {"stable": "2"}).status_code == 200
        driver = LoadDriver(
            s.grpc_url, s.http_url, "clf", rm.row, threads_per_protocol=2, max_seconds=60
        ).start()
        time.sleep(1.0)
        r = admin(s, "POST", "/models/clf/rollback", {"reason": "v2 misbehaves"})
        after_rollback = time.monotonic()
        assert r.status_code == 200 and r.json()["stable"] == "1"
        time.sleep(1.0)
        outcomes = driver.stop()
        assert [o.error for o in outcomes if o.error] == []
        late = [o for o in outcomes if o.t0 > after_rollback]
        assert late and all(o.version == "1" for o in late)  # every request sent after the call: version 1
        assert any(o.version == "2" for o in outcomes if o.t1 < after_rollback)
        entry = admin(s, "GET", "/audit?limit=1").json()["entries"][-1]
        assert (entry["action"], entry["reason"], entry["detail"]["to"]) == ("rollback", "v2 misbehaves", "1")


def _run_rollout(tmp_path: Path, canary: bytes, expect: str) -> None:
    repo = make_repo(tmp_path, {"1": rm.good(), "2": canary})
    with running_server(tmp_path, repo, ["--state-dir", str(tmp_path / "state")]) as s:
        r = admin(
            s, "PUT", "/models/clf/traffic", {"stable": "1", "shadow": {"version": "2", "fraction": 1.0}}
        )
        assert r.status_code == 200, r.text
        plan = {
            "steps": [0.1, 0.5, 1.0],
            "hold_seconds": 0.5,
            "min_requests": 40,
            "gates": {"max_disagreement": 0.05, "min_requests": 40, "max_p99_ratio": 50.0},
        }
        r = admin(s, "POST", "/models/clf/rollout", {"canary": "2", "plan": plan, "reason": "ship v2"})
        assert r.status_code == 201, r.text
        driver = LoadDriver(
            s.grpc_url, s.http_url, "clf", rm.row, threads_per_protocol=2, max_seconds=90
        ).start()
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            status = admin(s, "GET", "/models/clf/rollout").json()["rollout"]["status"]
            if status not in ("running", "paused"):
                break
            time.sleep(0.2)
        outcomes = driver.stop()
        assert status == expect, admin(s, "GET", "/models/clf/rollout").json()
        assert [o.error for o in outcomes if o.error] == []
        policy = admin(s, "GET", "/models/clf/traffic").json()
        audit = admin(s, "GET", "/audit?limit=50").json()["entries"]
        if expect == "rolled_back":
            assert policy["stable"] == "1" and policy["canaries"] == []
            last = [
                e
                for e in audit
                if e["action"] in ("rollout_rolled_back", "rolled_back", "rollback") or "roll" in e["action"]
            ][-1]
            assert "disagreement" in str(last), last
        else:
            assert policy["stable"] == "2"
    # survives a restart: the policy and the audit trail
    with running_server(tmp_path, repo, ["--state-dir", str(tmp_path / "state")]) as s:
        assert admin(s, "GET", "/models/clf/traffic").json()["stable"] == (
            "1" if expect == "rolled_back" else "2"
        )
        actions = [e["action"] for e in admin(s, "GET", "/audit?limit=100").json()["entries"]]
        assert "set_policy" in actions and any("rollout" in a for a in actions)


def test_rollout_of_a_bad_canary_rolls_back_by_itself(tmp_path: Path) -> None:
    _run_rollout(tmp_path, rm.disagreeing(), "rolled_back")


def test_rollout_of_a_good_canary_reaches_full_traffic(tmp_path: Path) -> None:
    _run_rollout(tmp_path, rm.good_clone(), "succeeded")


def test_admin_auth(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"1": rm.good()})
    with running_server(tmp_path, repo, env={"TURNOUT_ADMIN_TOKEN": "s3cret"}) as s:
        assert admin(s, "GET", "/audit").status_code == 401
        assert admin(s, "GET", "/audit", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = admin(
            s,
            "PUT",
            "/models/clf/traffic",
            {"stable": "1"},
            headers={"authorization": "Bearer s3cret", "x-turnout-user": "ops"},
        )
        assert ok.status_code == 200
        # the audit log names the token (--admin-token is the token "admin"), not the claimed user
        assert (
            admin(s, "GET", "/audit", headers={"authorization": "Bearer s3cret"}).json()["entries"][-1]["who"]
            == "admin"
        )
        # the CLI speaks the same API
        cli = [sys.executable, "-m", "turnout", "traffic", "get", "clf", "--url", s.base, "--token", "s3cret"]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and '"stable": "1"' in out.stdout, out.stderr


def test_admin_grpc(tmp_path: Path) -> None:
    import grpc

    sys.modules.pop("turnout.protos.turnout.admin_pb2", None)
    from turnout.protos.turnout import (  # separate package: no clash with tritonclient's stubs
        admin_pb2,
        admin_pb2_grpc,
    )

    repo = make_repo(tmp_path, {"1": rm.good(), "2": rm.good_clone()})
    with running_server(tmp_path, repo) as s, grpc.insecure_channel(s.grpc_url) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        p = stub.SetTraffic(
            admin_pb2.SetTrafficRequest(
                policy=admin_pb2.TrafficPolicy(
                    model="clf", stable="1", canaries=[admin_pb2.Canary(version="2", weight=0.5)]
                )
            )
        )
        assert p.stable == "1" and p.canaries[0].weight == 0.5
        assert stub.Rollback(admin_pb2.ChangeRequest(model="clf", reason="test")).canaries == []
        with pytest.raises(grpc.RpcError) as e:
            stub.SetTraffic(
                admin_pb2.SetTrafficRequest(policy=admin_pb2.TrafficPolicy(model="clf", stable="8"))
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert [a.action for a in stub.GetAudit(admin_pb2.AuditRequest(limit=10)).entries][-1] == "rollback"
