"""The control plane over gRPC (turnout.admin.v1.Admin): the same operations as /admin.

Every method is checked against its entry in server/auth.py's GRPC_POLICY (a method without
one fails at import); the audit log records the caller that check admitted."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from turnout.protos.turnout import admin_pb2 as pb
from turnout.protos.turnout import admin_pb2_grpc
from turnout.router.controller import NotConfigured, TrafficController
from turnout.router.policy import TrafficPolicy
from turnout.server.auth import GRPC_POLICY, Authorizer, grpc_peer_host
from turnout.server.errors import InvalidInput, Unimplemented
from turnout.server.grpc import failure
from turnout.server.observe.feedback import Feedback

DriftReport = Callable[[str, str], Awaitable[dict[str, Any]]]
SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name


def _policy_msg(p: TrafficPolicy) -> pb.TrafficPolicy:
    return pb.TrafficPolicy(
        model=p.model,
        stable=p.stable,
        canaries=[pb.Canary(version=c.version, weight=c.weight) for c in p.canaries],
        shadows=[pb.Shadow(version=s.version, fraction=s.fraction) for s in p.shadows],
        previous_stable=p.previous_stable or "",
        generation=p.generation,
    )


def _status_msg(model: str, status: dict[str, Any] | None) -> pb.RolloutStatus:
    if status is None:
        return pb.RolloutStatus(model=model, status="none")
    r = status["rollout"]
    return pb.RolloutStatus(
        model=model,
        stable=str(r.get("stable", "")),
        canary=str(r.get("canary", "")),
        status=str(r.get("status", "")),
        step_index=int(r.get("step_index", 0)),
        weight=float(r.get("weight", 0.0)),
        reason=str((r.get("approval") or {}).get("summary") or r.get("reason", "")),
        detail_json=json.dumps(status, default=str),
    )


def metadata_value(ctx: Any, key: str) -> str | None:
    for k, v in ctx.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


def _guard(fn: Callable[[Any, Any, Any, str], Awaitable[Any]]) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    need = GRPC_POLICY[f"/{SERVICE}/{fn.__name__}"]  # KeyError at import: no method without a policy

    async def method(self: AdminServicer, req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        try:
            caller = self.auth.require(need, metadata_value(ctx, "authorization"), grpc_peer_host(ctx.peer()))
            return await fn(self, req, ctx, caller.name)
        except Exception as exc:
            await failure.abort(ctx, exc)

    return method


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        controller: TrafficController,
        auth: Authorizer,
        drift: DriftReport | None,
        feedback: Feedback | None = None,
    ) -> None:
        self.c = controller
        self.auth = auth
        self.drift = drift
        self.feedback = feedback

    def _feedback(self) -> Feedback:
        if self.feedback is None:
            raise Unimplemented("feedback is off (--feedback-models names no model)")
        return self.feedback

    @_guard
    async def GetTraffic(self, req: pb.ModelRef, ctx: Any, who: str) -> pb.TrafficPolicy:
        p = self.c.get_policy(req.model)
        if p is None:
            raise NotConfigured(f"model '{req.model}' has no traffic policy")
        return _policy_msg(p)

    @_guard
    async def SetTraffic(self, req: pb.SetTrafficRequest, ctx: Any, who: str) -> pb.TrafficPolicy:
        p = req.policy
        body: dict[str, Any] = {"stable": p.stable}
        if p.canaries:
            body["canaries"] = [{"version": c.version, "weight": c.weight} for c in p.canaries]
        if p.shadows:
            body["shadows"] = [{"version": s.version, "fraction": s.fraction} for s in p.shadows]
        return _policy_msg(self.c.set_policy(p.model, body, who, req.reason))

    @_guard
    async def Rollback(self, req: pb.ChangeRequest, ctx: Any, who: str) -> pb.TrafficPolicy:
        return _policy_msg(self.c.rollback(req.model, who, req.reason))

    @_guard
    async def StartRollout(self, req: pb.StartRolloutRequest, ctx: Any, who: str) -> pb.RolloutStatus:
        plan: dict[str, Any] | None = None
        if req.plan_json:
            try:
                plan = json.loads(req.plan_json)
            except ValueError:
                raise InvalidInput("plan_json is not JSON") from None
        elif req.HasField("plan"):
            plan = {}
            if req.plan.steps:
                plan["steps"] = list(req.plan.steps)
            if req.plan.hold_seconds:
                plan["hold_seconds"] = req.plan.hold_seconds
            if req.plan.min_requests:
                plan["min_requests"] = req.plan.min_requests
            if req.plan.HasField("gates"):
                g = req.plan.gates
                gates = {
                    "max_error_rate_increase": g.max_error_rate_increase or None,
                    "max_p99_ratio": g.max_p99_ratio or None,
                    "max_disagreement": g.max_disagreement or None,
                    "max_drift_status": g.max_drift_status or None,
                    "min_requests": g.min_requests or None,
                    "max_accuracy_drop": g.max_accuracy_drop or None,
                    "accuracy_alpha": g.accuracy_alpha or None,
                    "min_labelled": g.min_labelled or None,
                }
                plan["gates"] = {k: v for k, v in gates.items() if v is not None}
        self.c.start_rollout(req.model, req.canary, plan, who, req.reason)
        return _status_msg(req.model, self.c.rollout_status(req.model))

    @_guard
    async def GetRollout(self, req: pb.ModelRef, ctx: Any, who: str) -> pb.RolloutStatus:
        return _status_msg(req.model, self.c.rollout_status(req.model))

    @_guard
    async def ControlRollout(self, req: pb.ControlRolloutRequest, ctx: Any, who: str) -> pb.RolloutStatus:
        a = pb.ControlRolloutRequest
        if req.action == a.PAUSE:
            self.c.pause_rollout(req.model, who, req.reason)
        elif req.action == a.RESUME:
            self.c.resume_rollout(req.model, who, req.reason)
        elif req.action == a.ABORT:
            self.c.abort_rollout(req.model, who, req.reason)
        elif req.action == a.PROMOTE:
            self.c.promote_rollout(req.model, who, req.reason)
        elif req.action == a.APPROVE:
            self.c.approve_rollout(req.model, who, req.reason)
        elif req.action == a.REJECT:
            self.c.reject_rollout(req.model, who, req.reason)
        else:
            raise InvalidInput("action must be PAUSE, RESUME, ABORT, PROMOTE, APPROVE or REJECT")
        return _status_msg(req.model, self.c.rollout_status(req.model))

    @_guard
    async def GetAudit(self, req: pb.AuditRequest, ctx: Any, who: str) -> pb.AuditResponse:
        records = self.c.audit(req.limit or 100)
        return pb.AuditResponse(
            entries=[
                pb.AuditEntry(
                    ts=r.ts,
                    who=r.who,
                    action=r.action,
                    model=r.model,
                    detail_json=json.dumps(r.detail, default=str),
                    reason=r.reason,
                )
                for r in records
            ]
        )

    @_guard
    async def GetDrift(self, req: pb.DriftRequest, ctx: Any, who: str) -> pb.DriftReport:
        if self.drift is None:
            raise NotConfigured("drift monitoring is off")
        report = await self.drift(req.model, req.version)
        return pb.DriftReport(
            status=str(report.get("status", "")), report_json=json.dumps(report, default=str)
        )

    @_guard
    async def PostFeedback(self, req: pb.FeedbackRequest, ctx: Any, who: str) -> pb.FeedbackResponse:
        items: list[dict[str, Any]] = []
        for item in req.feedback:
            kind = item.WhichOneof("label")
            if kind == "number":
                value = item.number
                label: Any = int(value) if value.is_integer() else value
            elif kind == "text":
                label = item.text
            elif kind == "json":
                try:
                    label = json.loads(item.json)
                except ValueError:
                    raise InvalidInput(f"feedback for '{item.id}': label json is not JSON") from None
            else:
                items.append({"id": item.id})  # no label: counted invalid
                continue
            items.append({"id": item.id, "label": label})
        return pb.FeedbackResponse(**await self._feedback().apply_async(req.model, items))

    @_guard
    async def GetPerformance(self, req: pb.PerformanceRequest, ctx: Any, who: str) -> pb.PerformanceReport:
        report = self._feedback().report(req.model, req.version)
        accuracy = report.get("accuracy")
        return pb.PerformanceReport(
            labelled=int(report.get("labelled", 0)),
            accuracy=float("nan") if accuracy is None else float(accuracy),
            report_json=json.dumps(report, default=str),
        )
