"""The HTTP/REST endpoints of the Open Inference Protocol (plus Triton's repository and
statistics extensions) on Starlette: decode, call the core, encode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from turnout.server.core import Core
from turnout.server.errors import InvalidInput, Unimplemented
from turnout.server.http.body import receive_body
from turnout.server.http.codec import dumps, loads
from turnout.server.http.errors import JSON, error_answer, error_body
from turnout.server.http.protojson import to_json
from turnout.server.observe.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: BaseException) -> Response:
    """The answer for ``exc`` (server/http/errors.py: status, JSON body, internal errors logged)."""
    status, body = error_answer(exc)
    return Response(body, status_code=status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing one larger than ``limit`` before buffering it."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


def guarded(fn: Endpoint) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return endpoint


class Endpoints:
    def __init__(self, core: Core, max_request_bytes: int) -> None:
        self.core = core
        self.limit = max_request_bytes

    # The health answers carry the protocol's JSON body ({"live": bool}, {"ready": bool},
    # {"name": ..., "ready": bool}) as well as the status code: tritonclient reads the code,
    # the KServe SDK reads the body.
    async def live(self, request: Request) -> Response:
        live = self.core.live
        return json_response({"live": live}, 200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = self.core.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.core.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        p = request.path_params
        return json_response(self.core.model_metadata(p["model"], p.get("version", "")))

    async def model_ready(self, request: Request) -> Response:
        p = request.path_params
        ready = self.core.model_ready(p["model"], p.get("version", ""))
        return json_response({"name": p["model"], "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: Request) -> Response:
        p = request.path_params
        config = self.core.model_config(p["model"], p.get("version", ""))
        return json_response(to_json(config))

    async def model_stats(self, request: Request) -> Response:
        p = request.path_params
        stats = self.core.statistics(p.get("model", ""), p.get("version", ""))
        return json_response({"model_stats": [s.to_json() for s in stats]})

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.limit)
        ready = False
        if body.strip():
            obj = loads(body)
            if not isinstance(obj, dict):
                raise InvalidInput("the request body must be a JSON object")
            ready = bool(obj.get("ready", False))
        entries = self.core.index(ready)
        out = []
        for e in entries:
            d: dict[str, Any] = {"name": e.name, "state": e.state}
            if e.version:
                d["version"] = e.version
            if e.reason:
                d["reason"] = e.reason
            if e.sha256:
                d["sha256"] = e.sha256
            out.append(d)
        return json_response(out)

    async def load(self, request: Request) -> Response:
        body = await read_body(request, self.limit)
        if body.strip():
            obj = loads(body)
            if isinstance(obj, dict) and obj.get("parameters"):
                raise InvalidInput("load parameters (config override, files) are not supported by Turnout")
        await self.core.load(request.path_params["model"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self.core.unload(request.path_params["model"])
        return Response(status_code=200)


def build_routes(core: Core, max_request_bytes: int, metrics: Metrics, drift: Any = None) -> list[BaseRoute]:
    e = Endpoints(core, max_request_bytes)

    async def drift_report(request: Request) -> Response:
        p = request.path_params
        if drift is None:
            raise Unimplemented("drift monitoring is off (--drift false)")
        q = request.query_params
        histograms = q.get("histograms", "true").lower() not in ("0", "false", "no")
        return json_response(
            await drift.report_async(p["model"], p.get("version", ""), q.get("view", "window"), histograms)
        )

    async def drift_counts(request: Request) -> Response:
        p = request.path_params
        if drift is None:
            raise Unimplemented("drift monitoring is off (--drift false)")
        return json_response(await drift.counts_async(p["model"], p["version"]))

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    dashboard_html = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()

    async def dashboard(request: Request) -> Response:
        return Response(dashboard_html, media_type="text/html; charset=utf-8")

    def r(path: str, fn: Endpoint, methods: list[str]) -> Route:
        return Route(path, guarded(fn), methods=methods)

    routes: list[BaseRoute] = [
        r("/v2/health/live", e.live, ["GET"]),
        r("/v2/health/ready", e.ready, ["GET"]),
        r("/v2", e.server_metadata, ["GET"]),
        r("/v2/models/stats", e.model_stats, ["GET"]),
        r("/v2/repository/index", e.repository_index, ["POST"]),
        r("/v2/repository/models/{model}/load", e.load, ["POST"]),
        r("/v2/repository/models/{model}/unload", e.unload, ["POST"]),
        r("/metrics", prometheus, ["GET"]),
        r("/dashboard", dashboard, ["GET"]),
        r("/", dashboard, ["GET"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            r(prefix, e.model_metadata, ["GET"]),
            r(prefix + "/ready", e.model_ready, ["GET"]),
            r(prefix + "/config", e.model_config, ["GET"]),
            r(prefix + "/stats", e.model_stats, ["GET"]),
            r(prefix + "/drift", drift_report, ["GET"]),
        ]
    # a replica's mergeable drift counts (turnout drift merge); a version, as counts are per version
    routes.append(r("/v2/models/{model}/versions/{version}/drift/counts", drift_counts, ["GET"]))
    return routes


def build_app(routes: list[BaseRoute]) -> Starlette:
    async def not_found(request: Request, exc: Exception) -> Response:
        return Response(error_body(f"no route for {request.method} {request.url.path}"), 404, media_type=JSON)

    async def bad_method(request: Request, exc: Exception) -> Response:
        message = f"method {request.method} not allowed on {request.url.path}"
        return Response(error_body(message), 405, media_type=JSON)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
