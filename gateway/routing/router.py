"""The router: resolves a model name to a route and calls its backend, falling back on failure.

    router = Router(registry, {"triton": Backend(adapter, timeout_s=5), "llm": llm_adapter})
    route = router.resolve("chat", kinds=("llm",), caller="user-42")
    result = await router.predict(route, "chat", body)

Each backend sits behind its own circuit breaker (gateway/routing/backend.py). When a route's
backend fails (unreachable, breaker open, 5xx, timed out) the route's fallbacks are tried in order;
if all fail, the first failure is answered (a 503 with Retry-After while a breaker is open).
A client error (4xx) is answered at once. A stream falls back only before its first chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from gateway.adapters.base import (
    InferenceAdapter,
    InferRequest,
    InferResponse,
    OpenedStream,
    Task,
)
from gateway.errors import BackendError, InvalidRequest, ModelNotFound, WrongEndpoint
from gateway.routing.backend import Backend
from gateway.routing.metrics import fallback_used
from gateway.routing.registry import SERVED_AT, Kind, Registry, Route
from gateway.scope.cache import ResponseCache
from gateway.scope.context import RequestContext
from gateway.scope.keys import check_model
from gateway.tensors import ModelMetadata

log = logging.getLogger("gateway.routing.router")
T = TypeVar("T")


class Router:
    def __init__(
        self,
        registry: Registry,
        backends: Mapping[str, Backend | InferenceAdapter],
        *,
        caller_header: str = "X-Caller-Id",
        cache: ResponseCache | None = None,
    ) -> None:
        """`backends` by name; a bare adapter gets a `Backend` with the default breaker."""
        missing = {r.backend for r in registry.routes()} - set(backends)
        if missing:
            raise ValueError(f"routes name backends that do not exist: {sorted(missing)}")
        self.registry = registry
        self.backends = {
            name: b if isinstance(b, Backend) else Backend(b) for name, b in backends.items()
        }
        self.caller_header = caller_header
        self.cache = cache  # deterministic non-streaming answers (gateway/scope/cache.py)

    def resolve(
        self,
        model: object,
        kinds: Iterable[Kind],
        ctx: RequestContext | None = None,
        *,
        caller: str | None = None,
    ) -> Route:
        """The route for `model`, or a 4xx: 404 listing the models this endpoint serves (those
        the caller's key may use), 400 naming the endpoint of a model of another kind, 403 for a
        model the key may not use.

        With `ctx`, its caller picks a split's variant and its API key is checked; the public
        model name is recorded on it."""
        kinds = tuple(kinds)
        key = ctx.key if ctx else None
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string", param="model")
        kind = self.registry.kind_of(model)
        if kind not in kinds:
            if kind is not None and (key is None or key.allows(model)):
                served_at = SERVED_AT.get(kind, "another endpoint").replace("{name}", model)
                raise WrongEndpoint(model, kind, served_at, ctx.path if ctx else "this endpoint")
            names = self.registry.names(kinds)
            raise ModelNotFound(model, [n for n in names if key is None or key.allows(n)])
        check_model(key, model)
        if ctx is not None:
            ctx.model = model
        route = self.registry.resolve(model, caller=ctx.caller if ctx else caller)
        assert route is not None
        return route

    async def predict(
        self,
        route: Route,
        task: Task,
        payload: object,
        ctx: RequestContext | None = None,
        **options: object,
    ) -> InferResponse:
        request = InferRequest(
            task=task,
            model=route.upstream_model,
            payload=payload,
            options=options,
            request_id=ctx.request_id if ctx else None,
            priority=_priority(ctx, payload),
            context=ctx,
        )
        key = self.cache.key(route.name, task, payload, options) if self.cache else None
        if key is not None:
            assert self.cache is not None
            hit = await self.cache.get(route.name, key)
            if ctx is not None:
                ctx.cache = "miss" if hit is None else "hit"
            if hit is not None:
                if ctx is not None:
                    ctx.backend = "cache"
                return hit
        result = await self._with_fallback(
            route, lambda r: self.backends[r.backend].predict(_for(request, r)), ctx
        )
        if key is not None and self.cache is not None and result.status == 200:
            await self.cache.put(key, result)
        return result

    async def open_stream(
        self, route: Route, task: Task, payload: object, ctx: RequestContext | None = None
    ) -> OpenedStream:
        """The response stream once its first chunk has come; fails over before it, never
        after. The caller relays it and then calls its `aclose()`."""
        request = InferRequest(
            task=task,
            model=route.upstream_model,
            payload=payload,
            request_id=ctx.request_id if ctx else None,
            priority=_priority(ctx, payload),
            context=ctx,
        )
        return await self._with_fallback(
            route, lambda r: self.backends[r.backend].open_stream(_for(request, r)), ctx
        )

    async def stream(
        self, route: Route, task: Task, payload: object, ctx: RequestContext | None = None
    ) -> AsyncIterator[bytes]:
        """The chunks of `open_stream`, as one iterator."""
        opened = await self.open_stream(route, task, payload, ctx)
        async for chunk in opened.chunks():
            yield chunk

    async def metadata(self, route: Route, version: str) -> ModelMetadata:
        """KServe V2 metadata of a tensor model, under its public name and versions."""
        backend = self.backends[route.backend]
        if getattr(backend.adapter, "metadata", None) is None:
            raise InvalidRequest(f"The model '{route.name}' takes no tensors.")
        meta: ModelMetadata = await backend.call(
            lambda adapter: adapter.metadata(route.upstream_model, version)  # type: ignore[attr-defined]
        )
        return meta.renamed(route.name, route.versions)

    async def model_ready(self, route: Route, version: str) -> bool:
        return await self.backends[route.backend].model_ready(route.upstream_model, version)

    async def health(self) -> dict[str, bool]:
        names = list(self.backends)
        results = await asyncio.gather(*(self.backends[n].health() for n in names))
        return dict(zip(names, results, strict=True))

    async def ready(self) -> bool:
        """Ready when every required backend (the bundled runners by default) is healthy."""
        required = [b for b in self.backends.values() if b.required]
        return all(await asyncio.gather(*(b.health() for b in required)))

    async def status(self) -> dict[str, Any]:
        """Each backend's health and breaker, for the status page."""
        health = await self.health()
        backends = [
            {
                "name": name,
                "kind": b.kind,
                "target": b.target,
                "required": b.required,
                "healthy": health[name],
                "ready": health[name] and not b.open,
                "breaker": b.status(),
                **({"endpoints": b.pool.status()} if b.pool.dynamic else {}),
            }
            for name, b in self.backends.items()
        ]
        ready = all(b["healthy"] for b in backends if b["required"])
        return {"ready": ready, "backends": backends}

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()
        for backend in self.backends.values():
            try:
                await backend.aclose()
            except Exception:
                log.exception("closing backend %s failed", backend.name)

    async def _with_fallback(
        self,
        route: Route,
        call: Callable[[Route], Awaitable[T]],
        ctx: RequestContext | None = None,
    ) -> T:
        failures: list[BackendError] = []
        for candidate in self.registry.chain(route):
            if ctx is not None:
                ctx.backend = candidate.backend
            try:
                result = await call(candidate)
            except BackendError as err:
                failures.append(err)
                log.warning("model %s on backend %s failed: %s", candidate.name, err.backend, err)
                continue
            if candidate is not route:
                fallback_used(route.name, candidate.name)
            return result
        raise failures[0]


def _priority(ctx: RequestContext | None, payload: object) -> str:
    """The request's class: its body's `service_tier` (OpenAI's own field) if it names one,
    else what the request scope took from `X-Priority`; capped by the key's ceiling."""
    if ctx is None:
        return "normal"
    if isinstance(payload, dict):
        ctx.ask_priority(payload.get("service_tier"))
    return ctx.priority


def _for(request: InferRequest, route: Route) -> InferRequest:
    if request.model == route.upstream_model:
        return request
    return dataclasses.replace(request, model=route.upstream_model)
