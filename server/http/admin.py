"""The control plane over HTTP JSON (/admin/...): traffic policies, rollback, rollouts,
shadow comparisons and the audit log. Same operations as protos/turnout/admin.proto.

Access is checked before these endpoints run (server/http/access.py); the audit log records
the caller it admitted, never a name the client sends."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from turnout.router.controller import NotConfigured, TrafficController
from turnout.server.errors import InvalidInput
from turnout.server.http.access import principal
from turnout.server.http.app import Endpoint, guarded, json_response, read_body
from turnout.server.http.codec import loads

ADMIN_BODY_LIMIT = 1 << 20


class AdminEndpoints:
    def __init__(self, controller: TrafficController) -> None:
        self.c = controller

    def who(self, request: Request) -> str:
        return principal(request).name

    async def body(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, ADMIN_BODY_LIMIT)
        if not raw.strip():
            return {}
        obj = loads(raw)
        if not isinstance(obj, dict):
            raise InvalidInput("the request body must be a JSON object")
        return obj

    async def get_traffic(self, request: Request) -> Response:
        model = request.path_params["model"]
        policy = self.c.get_policy(model)
        if policy is None:
            raise NotConfigured(f"model '{model}' has no traffic policy (requests go to its latest version)")
        return json_response(policy.to_json())

    async def put_traffic(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        reason = str(body.pop("reason", ""))
        policy = self.c.set_policy(request.path_params["model"], body, who, reason)
        return json_response(policy.to_json())

    async def delete_traffic(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        self.c.delete_policy(request.path_params["model"], who, str(body.get("reason", "")))
        return Response(status_code=204)

    async def rollback(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        policy = self.c.rollback(request.path_params["model"], who, str(body.get("reason", "")))
        return json_response(policy.to_json())

    async def start_rollout(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        canary = body.get("canary")
        if not isinstance(canary, str | int) or isinstance(canary, bool):
            raise InvalidInput("a rollout needs 'canary': the version to roll out")
        stable = body.get("stable")
        self.c.start_rollout(
            request.path_params["model"],
            str(canary),
            body.get("plan"),
            who,
            str(body.get("reason", "")),
            stable=str(stable) if stable is not None else None,
        )
        return json_response(self.c.rollout_status(request.path_params["model"]), 201)

    async def get_rollout(self, request: Request) -> Response:
        model = request.path_params["model"]
        status = self.c.rollout_status(model)
        if status is None:
            raise NotConfigured(f"model '{model}' has no rollout")
        return json_response(status)

    async def abort_rollout(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        self.c.abort_rollout(request.path_params["model"], who, str(body.get("reason", "")))
        return json_response(self.c.rollout_status(request.path_params["model"]))

    async def rollout_action(self, request: Request) -> Response:
        who = self.who(request)
        body = await self.body(request)
        model, action = request.path_params["model"], request.path_params["action"]
        reason = str(body.get("reason", ""))
        if action == "pause":
            self.c.pause_rollout(model, who, reason)
        elif action == "resume":
            self.c.resume_rollout(model, who, reason)
        elif action == "promote":
            self.c.promote_rollout(model, who, reason, full=bool(body.get("full", True)))
        elif action == "abort":
            self.c.abort_rollout(model, who, reason)
        elif action == "approve":
            self.c.approve_rollout(model, who, reason)
        elif action == "reject":
            self.c.reject_rollout(model, who, reason)
        else:
            raise InvalidInput(
                f"unknown rollout action '{action}' (pause, resume, promote, abort, approve, reject)"
            )
        return json_response(self.c.rollout_status(model))

    async def shadow(self, request: Request) -> Response:
        model = request.path_params["model"]
        return json_response({"model": model, "pairs": [p.to_json() for p in self.c.pair_stats(model)]})

    async def audit(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise InvalidInput("limit must be an integer") from None
        records = self.c.audit(limit, request.query_params.get("model"))
        return json_response({"entries": [r.to_json() for r in records]})

    async def policies(self, request: Request) -> Response:
        return json_response({m: p.to_json() for m, p in self.c.policies().items()})


def admin_routes(controller: TrafficController) -> list[BaseRoute]:
    e = AdminEndpoints(controller)

    def r(path: str, fn: Endpoint, methods: list[str]) -> Route:
        return Route(path, guarded(fn), methods=methods)

    return [
        r("/admin/traffic", e.policies, ["GET"]),
        r("/admin/models/{model}/traffic", e.get_traffic, ["GET"]),
        r("/admin/models/{model}/traffic", e.put_traffic, ["PUT"]),
        r("/admin/models/{model}/traffic", e.delete_traffic, ["DELETE"]),
        r("/admin/models/{model}/rollback", e.rollback, ["POST"]),
        r("/admin/models/{model}/rollout", e.start_rollout, ["POST"]),
        r("/admin/models/{model}/rollout", e.get_rollout, ["GET"]),
        r("/admin/models/{model}/rollout", e.abort_rollout, ["DELETE"]),
        r("/admin/models/{model}/rollout/{action}", e.rollout_action, ["POST"]),
        r("/admin/models/{model}/shadow", e.shadow, ["GET"]),
        r("/admin/audit", e.audit, ["GET"]),
    ]
