"""The inference endpoint as a bare ASGI handler in front of the Starlette app.

``POST /v2/models/{m}[/versions/{v}]/infer`` is the request that matters for throughput, so
it skips the router, the middleware stack and the Request/Response objects: the path is
split once, the body read with the size limit enforced before buffering, and the reply
sent as two ASGI messages. Every other path goes to the Starlette app unchanged.

A request takes one of ``max_inflight`` slots only once its body has arrived, so clients that
send headers and never a body hold nothing but their own connection (which the protocol's
request timeout closes).

With --auth-infer the bearer token is checked here (server/auth.py); the protocol's fast path
checks it too, and leaves a request it refuses to this route, which answers the error."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from turnout.server.auth import Authorizer, Need
from turnout.server.core import Core
from turnout.server.errors import QueueFull, TurnoutError
from turnout.server.http.body import receive_body
from turnout.server.http.codec import decode_infer_request, encode_infer_response
from turnout.server.http.errors import error_answer

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


def parse_infer_path(path: str) -> tuple[str, str] | None:
    """(model, version) for an inference path, else None."""
    if not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class InferRoute:
    def __init__(
        self,
        app: ASGIApp,
        core: Core,
        max_request_bytes: int,
        max_inflight: int,
        fast_path: bool = True,
        auth: Authorizer | None = None,
    ) -> None:
        self.app = app
        self.core = core
        self.limit = max_request_bytes
        self.max_inflight = max_inflight
        # who may infer; None: anyone (no --auth-infer)
        self.auth = auth if auth is not None and auth.enforces(Need.INFER) else None
        # may the HTTP protocol answer requests itself (protocol.py; it checks tokens with ``authorized``)
        self.fast_path = fast_path
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = parse_infer_path(scope["path"])
            if target is not None:
                if self.auth is not None:
                    try:
                        client = scope.get("client")
                        self.authorize(scope["headers"], client[0] if client else None)
                    except Exception as exc:
                        await _reply(send, *error_answer(exc), _JSON, ())
                        return
                await self.infer(scope, receive, send, target[0], target[1])
                return
        await self.app(scope, receive, send)

    def authorize(self, headers: Iterable[tuple[bytes, bytes]], host: str | None) -> None:
        """Raise unless the request's bearer token may infer (only with --auth-infer)."""
        assert self.auth is not None
        authorization = None
        for k, v in headers:
            if k == b"authorization":
                authorization = v.decode("latin-1")
        self.auth.require(Need.INFER, authorization, host)

    def authorized(self, headers: Iterable[tuple[bytes, bytes]], host: str | None) -> bool:
        try:
            self.authorize(headers, host)
        except TurnoutError:
            return False
        return True

    async def infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str) -> None:
        content_length, header_length, routing_key = infer_headers(scope["headers"])
        try:
            body = await receive_body(receive, content_length, self.limit)
        except Exception as exc:
            await _reply(send, *error_answer(exc), _JSON, ())
            return
        if self.inflight >= self.max_inflight:  # shed before decoding anything
            await _reply(send, *self.busy())
            return
        self.inflight += 1
        try:
            answer = await self.answer(model, version, body, header_length, routing_key)
        finally:
            self.inflight -= 1
        await _reply(send, *answer)

    def busy(self) -> Answer:
        """The answer to a whole request that finds every slot taken."""
        exc = QueueFull(f"server busy: {self.inflight} inference requests in progress (--max-inflight)")
        return (*error_answer(exc), _JSON, ())

    async def answer(
        self, model: str, version: str, body: bytes, header_length: str | None, routing_key: str | None
    ) -> Answer:
        """Status, body, content type and extra headers for one inference request's body."""
        try:
            req = decode_infer_request(model, version, body, header_length)
            if req.routing_key is None:
                req.routing_key = routing_key
            resp = await self.core.infer(req)
            payload, json_length = encode_infer_response(resp, req)
        except Exception as exc:
            return (*error_answer(exc), _JSON, ())
        extra: tuple[tuple[bytes, bytes], ...] = ((b"x-model-version", resp.model_version.encode()),)
        if json_length is None:
            return 200, payload, _JSON, extra
        extra += ((b"inference-header-content-length", str(json_length).encode()),)
        return 200, payload, _BINARY, extra


Answer = tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]


def infer_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, str | None, str | None]:
    """Content-Length, the binary extension's JSON length and the routing key, if sent."""
    header_length = routing_key = None
    content_length = None
    for k, v in headers:
        if k == b"content-length":
            content_length = v
        elif k == b"inference-header-content-length":
            header_length = v.decode("latin-1")
        elif k == b"x-routing-key":
            routing_key = v.decode("latin-1")
    return content_length, header_length, routing_key


async def _reply(
    send: Send, status: int, body: bytes, content_type: bytes, extra: tuple[tuple[bytes, bytes], ...]
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
