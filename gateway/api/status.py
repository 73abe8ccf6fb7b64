"""GET /status: every backend's health and circuit breaker, and the models routed to them.

    {"ready": true,
     "backends": [{"name": "triton", "kind": "triton", "target": "10.0.0.5:8001",
                   "required": false, "healthy": true, "ready": false,
                   "breaker": {"state": "open", "failures_in_window": 0, "retry_after_s": 7.5,
                               "opened_count": 1, ...}}, ...],
     "models": [{"name": "resnet-trt", "kind": "tensor", "backend": "triton", ...}, ...]}

A backend is ready when it answers its health check and its breaker is not open. `ready` at the
top is the gateway's own readiness (its required backends), as /readyz reports it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.common import router_of
from gateway.routing.registry import Route as ModelRoute
from gateway.routing.registry import Split


async def status(request: Request) -> Response:
    router = router_of(request)
    body = await router.status()
    registry = router.registry
    body["models"] = [_model(entry, registry.aliases_of(entry.name)) for entry in registry]
    return JSONResponse(body)


def _model(entry: ModelRoute | Split, aliases: list[str]) -> dict[str, Any]:
    if isinstance(entry, Split):
        variants = [{"model": v.model, "weight": v.weight} for v in entry.variants]
        return {"name": entry.name, "kind": entry.kind, "variants": variants, "aliases": aliases}
    return {
        "name": entry.name,
        "kind": entry.kind,
        "backend": entry.backend,
        "upstream": entry.upstream_model,
        "versions": list(entry.versions),
        "fallback": list(entry.fallback),
        "aliases": aliases,
    }


routes = [Route("/status", status, methods=["GET"])]
