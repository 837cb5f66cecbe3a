"""Approval steps end to end, on two workers sharing a state directory: a rollout waits at its
approval step, a read-only token is refused, an admin token approves (HTTP) and the rollout
goes on; a second rollout's deadline passes and it rolls back; a third is rejected over gRPC.
The audit log names the tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration import routing_models as rm
from tests.integration.test_routing import make_repo
from tests.server_proc import ServerProc, running_server

TOKENS = {
    "tokens": [
        {"name": "release-manager", "scopes": ["admin"], "token": "rm-token-123"},
        {"name": "viewer", "scopes": ["read"], "token": "viewer-token-123"},
    ]
}
ADMIN = {"authorization": "Bearer rm-token-123"}
VIEWER = {"authorization": "Bearer viewer-token-123"}
READ_MD = [("authorization", "Bearer viewer-token-123")]


def call(
    s: ServerProc, method: str, path: str, headers: dict[str, str], body: object = None
) -> httpx.Response:
    return httpx.request(method, f"{s.base}/admin{path}", json=body, headers=headers, timeout=10)


def poll(
    s: ServerProc, path: str, holds: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """GET ``path`` until ``holds`` its JSON. The two workers follow each other's changes
    within a tick (0.5 s), so the one that answers may not have seen the last change yet."""
    deadline = time.monotonic() + timeout
    while True:
        r = call(s, "GET", path, VIEWER)
        if r.status_code == 200 and holds(r.json()):
            return dict(r.json())
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def wait_for(s: ServerProc, done: str) -> dict[str, Any]:
    """The rollout once ``done`` ("approval", or a status) holds."""

    def holds(body: dict[str, Any]) -> bool:
        rollout = body["rollout"]
        return bool(rollout["approval"]) if done == "approval" else rollout["status"] == done

    return dict(poll(s, "/models/clf/rollout", holds)["rollout"])


def stable_is(s: ServerProc, version: str) -> None:
    poll(s, "/models/clf/traffic", lambda p: p["stable"] == version)


def plan(deadline: float | None) -> dict[str, object]:
    approval = {} if deadline is None else {"deadline_seconds": deadline}
    return {
        "steps": [0.2, {"approval": approval}, 1.0],
        "hold_seconds": 0.3,
        "min_requests": 0,
        "gates": {"min_requests": 0},
    }


def test_approval_steps(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"1": rm.good(), "2": rm.good_clone(), "3": rm.good_clone()})
    args = ["--workers", "2", "--state-dir", str(tmp_path / "state")]
    env = {"TURNOUT_AUTH_TOKENS": json.dumps(TOKENS)}
    with running_server(tmp_path, repo, args, env=env) as s:
        # 1. waits for approval; a read-only token may not approve; the admin token does
        body = {"canary": "2", "stable": "1", "plan": plan(None), "reason": "ship v2"}
        assert call(s, "POST", "/models/clf/rollout", ADMIN, body).status_code == 201
        waiting = wait_for(s, "approval")
        assert waiting["status"] == "running" and waiting["step_index"] == 1 and waiting["weight"] == 0.2
        approval = waiting["approval"]
        assert isinstance(approval, dict) and approval["deadline"] is None
        assert str(approval["summary"]).startswith("waiting for approval since ")
        time.sleep(1.0)  # it does not move on by itself
        for _ in range(4):  # whichever worker answers
            assert call(s, "GET", "/models/clf/rollout", VIEWER).json()["rollout"]["step_index"] == 1
        denied = call(s, "POST", "/models/clf/rollout/approve", VIEWER, {"reason": "me too"})
        assert denied.status_code == 403, denied.text
        ok = call(s, "POST", "/models/clf/rollout/approve", ADMIN, {"reason": "metrics look fine"})
        assert ok.status_code == 200, ok.text
        wait_for(s, "succeeded")
        stable_is(s, "2")

        # 2. nobody approves within the deadline: rolled back
        body = {"canary": "3", "plan": plan(1.5), "reason": "try v3"}
        assert call(s, "POST", "/models/clf/rollout", ADMIN, body).status_code == 201
        waiting = poll(
            s, "/models/clf/rollout", lambda b: b["rollout"]["canary"] == "3" and b["rollout"]["approval"]
        )
        approval = waiting["rollout"]["approval"]
        assert isinstance(approval, dict) and approval["deadline"] == approval["since"] + 1.5  # type: ignore[operator]
        assert ", deadline 20" in str(approval["summary"])
        rolled = wait_for(s, "rolled_back")
        assert "no approval within" in str(rolled["reason"])
        stable_is(s, "2")

        # 3. the CLI reads approval steps (the rollout waits for 100 canary requests: aborted)
        cli = [sys.executable, "-m", "turnout", "rollout", "start", "clf", "--canary", "3", "--url", s.base]
        cli += ["--steps", "0.2,approval:90,1", "--hold", "0.3", "--token", "rm-token-123"]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        steps = [0.2, {"approval": {"deadline_seconds": 90.0}}, 1.0]
        poll(
            s,
            "/models/clf/rollout",
            lambda b: b["rollout"]["canary"] == "3" and b["rollout"]["plan"]["steps"] == steps,
        )
        assert call(s, "DELETE", "/models/clf/rollout", ADMIN).status_code == 200

        # 4. rejected over gRPC (ControlRollout REJECT) by the admin token
        body = {"canary": "3", "plan": plan(None), "reason": "try v3 again"}
        assert call(s, "POST", "/models/clf/rollout", ADMIN, body).status_code == 201
        _reject_over_grpc(s)
        wait_for(s, "rolled_back")

        # 5. over gRPC only: StartRollout with plan_json (approval steps), ControlRollout APPROVE
        _start_and_approve_over_grpc(s)
        wait_for(s, "succeeded")
        stable_is(s, "3")

        entries = call(s, "GET", "/audit?limit=100&model=clf", VIEWER).json()["entries"]
        seen = [(e["action"], e["who"]) for e in entries]
        assert seen.count(("rollout_approve", "release-manager")) == 2
        assert ("rollout_reject", "release-manager") in seen
        assert seen.count(("rollout_start", "release-manager")) == 5
        timeout = [e for e in entries if e["action"] == "rollout_rolled_back"]
        assert len(timeout) == 1 and timeout[0]["who"] == "controller"
        assert "no approval within" in timeout[0]["reason"]
        assert not any(who == "viewer" for _, who in seen)


def _stub() -> tuple[Any, Any]:
    sys.modules.pop("turnout.protos.turnout.admin_pb2", None)
    from turnout.protos.turnout import admin_pb2, admin_pb2_grpc  # separate package from tritonclient's stubs

    return admin_pb2, admin_pb2_grpc


def _wait_for_approval_over_grpc(stub: Any, pb: Any, with_deadline: bool) -> None:
    """Until the rollout waits for approval (one with a deadline or one without: a worker that
    has not caught up yet may still show the previous rollout waiting)."""
    deadline = time.monotonic() + 30
    while True:
        status = stub.GetRollout(pb.ModelRef(model="clf"), metadata=READ_MD)
        approval = json.loads(status.detail_json)["rollout"]["approval"]
        if approval and (approval["deadline"] is not None) == with_deadline:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def _start_and_approve_over_grpc(s: ServerProc) -> None:
    import grpc

    admin_pb2, admin_pb2_grpc = _stub()
    with grpc.insecure_channel(s.grpc_url) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        start = admin_pb2.StartRolloutRequest(model="clf", canary="3", plan_json=json.dumps(plan(600)))
        status = stub.StartRollout(start, metadata=[("authorization", "Bearer rm-token-123")])
        assert status.status == "running"
        _wait_for_approval_over_grpc(stub, admin_pb2, with_deadline=True)
        status = stub.GetRollout(admin_pb2.ModelRef(model="clf"), metadata=READ_MD)
        assert status.reason.startswith("waiting for approval since ") and ", deadline 20" in status.reason
        approve = admin_pb2.ControlRolloutRequest(model="clf", action=admin_pb2.ControlRolloutRequest.APPROVE)
        status = stub.ControlRollout(approve, metadata=[("authorization", "Bearer rm-token-123")])
        assert status.step_index == 2 and status.weight == 1.0


def _reject_over_grpc(s: ServerProc) -> None:
    import grpc

    admin_pb2, admin_pb2_grpc = _stub()
    with grpc.insecure_channel(s.grpc_url) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        _wait_for_approval_over_grpc(stub, admin_pb2, with_deadline=False)
        req = admin_pb2.ControlRolloutRequest(
            model="clf", action=admin_pb2.ControlRolloutRequest.REJECT, reason="not this week"
        )
        try:
            stub.ControlRollout(req, metadata=[("authorization", "Bearer viewer-token-123")])
            raise AssertionError("a read-only token rejected a rollout")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        status = stub.ControlRollout(req, metadata=[("authorization", "Bearer rm-token-123")])
        assert status.status == "rolled_back"
