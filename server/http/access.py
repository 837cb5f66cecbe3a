"""Puts the access policy (server/auth.py) in front of every Starlette route: the cross-site
refusal for state-changing methods, then the scope the policy table names. The caller is
left in ``request.state.principal`` for the audit log."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from turnout.server.auth import HTTP_POLICY, Authorizer, Need, Principal, cross_site_refusal
from turnout.server.errors import PermissionDenied
from turnout.server.http.app import Endpoint, error_response


def principal(request: Request) -> Principal:
    """The caller :func:`secure_routes` admitted (AttributeError for an unsecured route)."""
    p: Principal = request.state.principal
    return p


def secure(endpoint: Endpoint, need: Need, auth: Authorizer) -> Endpoint:
    async def checked(request: Request) -> Response:
        try:
            refusal = cross_site_refusal(request.method, request.headers, request.url.scheme)
            if refusal is not None:
                raise PermissionDenied(refusal)
            host = request.client.host if request.client else None
            request.state.principal = auth.require(need, request.headers.get("authorization"), host)
        except Exception as exc:
            return error_response(exc)
        return await endpoint(request)

    return checked


def secure_routes(routes: list[BaseRoute], auth: Authorizer) -> list[BaseRoute]:
    """Each route again, its endpoint behind the check its policy entry names. A route with
    no entry (or a method without one) is an error: nothing is served unguarded by accident."""
    out: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            raise TypeError(f"no access policy for route {route!r}")
        methods = sorted(m for m in route.methods if m != "HEAD") or ["HEAD"]
        needs: set[Need] = set()
        for method in methods:
            need = HTTP_POLICY.get((method, route.path))
            if need is None:
                raise LookupError(f"no access policy for {method} {route.path} (server/auth.py HTTP_POLICY)")
            needs.add(need)
        if len(needs) != 1:
            raise LookupError(f"{route.path}: one route, one policy ({sorted(methods)} differ)")
        out.append(Route(route.path, secure(route.endpoint, needs.pop(), auth), methods=methods))
    return out
