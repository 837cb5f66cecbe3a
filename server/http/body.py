"""Reading a request body under a size limit, for the Starlette endpoints and the raw ASGI
inference route alike."""

from __future__ import annotations

from starlette.types import Receive

from turnout.server.errors import InvalidInput, PayloadTooLarge


async def receive_body(receive: Receive, content_length: str | bytes | None, limit: int) -> bytes:
    """The whole body from ASGI ``receive``. A declared Content-Length over ``limit`` is refused
    before anything is read, and a body that grows past it is refused as soon as it does."""
    if content_length is not None:
        try:
            size = int(content_length)
        except ValueError:
            raise InvalidInput("Content-Length is not an integer") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    chunks = [body]
    total = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
