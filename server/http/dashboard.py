"""``GET /dashboard/data``: the dashboard's time series and current state as JSON
(server/observe/dashboard.py). The page itself is served by server/http/app.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from turnout.server.http.app import guarded, json_response
from turnout.server.observe.dashboard import Dashboard


def dashboard_routes(dashboard: Dashboard) -> list[BaseRoute]:
    async def data(request: Request) -> Response:
        return json_response(await dashboard.data(), headers={"Cache-Control": "no-store"})

    return [Route("/dashboard/data", guarded(data), methods=["GET"])]
