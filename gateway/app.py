"""The gateway's ASGI app: OpenAI-compatible routes on /v1, KServe V2 on /v2."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import audio, kserve, openai, status, vision
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    kserve_error_response,
    openai_error_response,
)

log = logging.getLogger("gateway")


def _render(request: Request, err: GatewayError) -> Response:
    if request.url.path.startswith("/v2"):
        return kserve_error_response(err)
    return openai_error_response(err)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _render(request, exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = f"No route {request.url.path}" if exc.status_code == 404 else exc.detail
    return _render(request, InvalidRequest(detail, status=exc.status_code))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return _render(request, GatewayError(f"Internal error: {type(exc).__name__}: {exc}"))


def create_app() -> Starlette:
    """The routes only; the BentoML Gateway service puts `router` and `settings` on app.state."""
    return Starlette(
        routes=[*openai.routes, *vision.routes, *audio.routes, *kserve.routes, *status.routes],
        exception_handlers={
            GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
