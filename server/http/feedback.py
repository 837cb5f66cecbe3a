"""Ground-truth feedback and live performance over HTTP:
``POST /v2/models/{model}/feedback`` and ``GET /v2/models/{model}[/versions/{version}]/performance``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from turnout.server.errors import InvalidInput, Unimplemented
from turnout.server.http.app import Endpoint, guarded, json_response, read_body
from turnout.server.http.codec import loads
from turnout.server.observe.feedback import Feedback

FEEDBACK_BODY_LIMIT = 8 << 20


def feedback_routes(feedback: Feedback | None) -> list[BaseRoute]:
    def need() -> Feedback:
        if feedback is None:
            raise Unimplemented("feedback is off (--feedback-models names no model)")
        return feedback

    async def post_feedback(request: Request) -> Response:
        fb = need()
        body = loads(await read_body(request, FEEDBACK_BODY_LIMIT))
        if not isinstance(body, dict) or "feedback" not in body:
            raise InvalidInput('the body must be {"feedback": [{"id": ..., "label": ...}, ...]}')
        return json_response(await fb.apply_async(request.path_params["model"], body["feedback"]))

    async def version_performance(request: Request) -> Response:
        p = request.path_params
        return json_response(need().report(p["model"], p["version"]))

    async def model_performance(request: Request) -> Response:
        fb = need()
        model = request.path_params["model"]
        return json_response({"model": model, "versions": [fb.report(model, v) for v in fb.versions(model)]})

    def r(path: str, fn: Endpoint, methods: list[str]) -> Route:
        return Route(path, guarded(fn), methods=methods)

    return [
        r("/v2/models/{model}/feedback", post_feedback, ["POST"]),
        r("/v2/models/{model}/performance", model_performance, ["GET"]),
        r("/v2/models/{model}/versions/{version}/performance", version_performance, ["GET"]),
    ]
