"""The gateway's ASGI app: OpenAI-compatible routes on /v1, KServe V2 on /v2, behind the request
pipeline (gateway/scope/pipeline.py)."""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import audio, embeddings, lora, openai, openapi, status, vision
from gateway.errors import GatewayError, InvalidRequest, render
from gateway.kserve import http as kserve
from gateway.routing.chains import Chains
from gateway.routing.router import Router
from gateway.scope.pipeline import Pipeline, PipelineParts, configure_access_log
from settings import Settings

log = logging.getLogger("gateway")


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return render(request.url.path, exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = f"No route {request.url.path}" if exc.status_code == 404 else exc.detail
    return render(request.url.path, InvalidRequest(detail, status=exc.status_code))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return render(request.url.path, GatewayError(f"Internal error: {type(exc).__name__}: {exc}"))


def create_app() -> Starlette:
    """The routes behind the pipeline; `install` gives them their router and settings."""
    return Starlette(
        routes=[
            *openai.routes,
            *lora.routes,
            *vision.routes,
            *audio.routes,
            *embeddings.routes,
            *kserve.routes,
            *status.routes,
            *openapi.routes,
        ],
        middleware=[Middleware(Pipeline)],
        exception_handlers={
            GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )


def install(app: Starlette, *, settings: Settings, router: Router) -> None:
    """What the app serves with: call it where the serving event loop runs (a BentoML service's
    `__init__`), since the router's and the limiter's clients bind to that loop."""
    app.state.settings = settings
    app.state.started_at = time.time()
    app.state.router = router
    app.state.chains = Chains.from_settings(settings.chains, router.registry)  # checked here
    app.state.pipeline = PipelineParts.from_settings(settings)  # keys, limits, access log
    configure_access_log()


async def shutdown(app: Starlette) -> None:
    await app.state.router.aclose()
    await app.state.pipeline.aclose()
