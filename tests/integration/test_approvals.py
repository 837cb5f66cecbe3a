"""Approval steps end to end, on two workers sharing a state directory: a rollout waits at its
approval step, a read-only token is refused, an admin token approves (HTTP) and the rollout
goes on; a second rollout's deadline passes and it rolls back; a third is rejected over gRPC.
The audit log names the tokens."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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


def call(
    s: ServerProc, method: str, path: str, headers: dict[str, str], body: object = None
) -> httpx.Response:
    return httpx.request(method, f"{s.base}/admin{path}", json=body, headers=headers, timeout=10)


def wait_for(s: ServerProc, done: str, timeout: float = 30.0) -> dict[str, object]:
    """Poll the rollout status until ``done`` ("approval" or a final status) holds."""
    deadline = time.monotonic() + timeout
    while True:
        rollout: dict[str, object] = call(s, "GET", "/models/clf/rollout", VIEWER).json()["rollout"]
        if (done == "approval" and rollout["approval"]) or rollout["status"] == done:
            return rollout
        assert time.monotonic() < deadline, rollout
        time.sleep(0.1)


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
        assert call(s, "GET", "/models/clf/rollout", VIEWER).json()["rollout"]["step_index"] == 1
        denied = call(s, "POST", "/models/clf/rollout/approve", VIEWER, {"reason": "me too"})
        assert denied.status_code == 403, denied.text
        ok = call(s, "POST", "/models/clf/rollout/approve", ADMIN, {"reason": "metrics look fine"})
        assert ok.status_code == 200, ok.text
        wait_for(s, "succeeded")
        assert call(s, "GET", "/models/clf/traffic", VIEWER).json()["stable"] == "2"

        # 2. nobody approves within the deadline: rolled back
        body = {"canary": "3", "plan": plan(1.5), "reason": "try v3"}
        assert call(s, "POST", "/models/clf/rollout", ADMIN, body).status_code == 201
        waiting = wait_for(s, "approval")
        approval = waiting["approval"]
        assert isinstance(approval, dict) and approval["deadline"] == approval["since"] + 1.5  # type: ignore[operator]
        assert ", deadline 20" in str(approval["summary"])
        rolled = wait_for(s, "rolled_back")
        assert "no approval within" in str(rolled["reason"])
        assert call(s, "GET", "/models/clf/traffic", VIEWER).json()["stable"] == "2"

        # 3. rejected over gRPC (ControlRollout REJECT) by the admin token
        body = {"canary": "3", "plan": plan(None), "reason": "try v3 again"}
        assert call(s, "POST", "/models/clf/rollout", ADMIN, body).status_code == 201
        wait_for(s, "approval")
        _reject_over_grpc(s)
        wait_for(s, "rolled_back")

        entries = call(s, "GET", "/audit?limit=100&model=clf", VIEWER).json()["entries"]
        seen = [(e["action"], e["who"]) for e in entries]
        assert ("rollout_approve", "release-manager") in seen
        assert ("rollout_reject", "release-manager") in seen
        assert seen.count(("rollout_start", "release-manager")) == 3
        timeout = [e for e in entries if e["action"] == "rollout_rolled_back"]
        assert len(timeout) == 1 and timeout[0]["who"] == "controller"
        assert "no approval within" in timeout[0]["reason"]
        assert not any(who == "viewer" for _, who in seen)


def _reject_over_grpc(s: ServerProc) -> None:
    import grpc

    sys.modules.pop("protos.turnout.admin_pb2", None)
    from protos.turnout import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(s.grpc_url) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
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
