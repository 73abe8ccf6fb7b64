"""Request-reading helpers shared by the /v1 and /v2 routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.router import Router


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def caller_of(request: Request) -> str | None:
    """Who is calling, when the configured header says (A/B splits keep a caller's variant)."""
    return request.headers.get(router_of(request).caller_header) or None


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refusing anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
    return bytes(body)


async def read_json_object(request: Request, *, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"Expected a JSON body with Content-Type: application/json, got '{ctype}'."
        )
    raw = await read_body(request, limit=limit)
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data
