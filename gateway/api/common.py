"""Request-reading helpers shared by the /v1 and /v2 routes."""

from __future__ import annotations

import zlib
from typing import Any

import pydantic_core
from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.routing.router import Router
from gateway.scope.context import RequestContext, context_of


def router_of(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def context(request: Request) -> RequestContext:
    """The pipeline's context of this request (gateway/scope/context.py)."""
    ctx = context_of(request)
    if ctx.caller is None:  # the app without its pipeline (in-process use)
        ctx.caller = request.headers.get(router_of(request).caller_header) or None
    return ctx


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refusing anything over `limit` bytes before reading it all.

    A gzip or deflate body (Content-Encoding) is inflated as it arrives, in bounded steps, and
    its inflated size counts against `limit`: a small bomb is refused after `limit` bytes of
    output, never inflated whole into memory.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit} bytes.")
    encoding = request.headers.get("content-encoding", "").strip().lower()
    inflater = _inflater(encoding)
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        if inflater is None:
            body += chunk
            continue
        data = chunk
        while data:
            try:
                body += inflater.decompress(data, limit + 1 - len(body))
            except zlib.error as exc:
                raise InvalidRequest(f"The body is not valid {encoding} data: {exc}") from None
            if len(body) > limit:
                raise PayloadTooLarge(
                    f"The {encoding} body inflates to more than the limit of {limit} bytes."
                )
            data = inflater.unconsumed_tail
    if inflater is not None and received and not inflater.eof:
        raise InvalidRequest(f"The body is not valid {encoding} data: it ends early.")
    return bytes(body)


def _inflater(encoding: str) -> Any:
    """A zlib decompressor for the Content-Encoding, None for identity, 415 for others."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise UnsupportedMediaType(
        f"Unsupported Content-Encoding '{encoding}': send identity, gzip or deflate."
    )


async def read_json_object(request: Request, *, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"Expected a JSON body with Content-Type: application/json, got '{ctype}'."
        )
    raw = await read_body(request, limit=limit)
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:  # pydantic's parser, as on /v2: nesting past ~200 levels is an error, not a crash
        data = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data
