"""The router: resolves a model name to its backend and calls the backend's adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

from gateway.adapters.base import InferenceAdapter, InferRequest, InferResponse, Task
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.registry import Kind, Registry, Route


class Router:
    def __init__(self, registry: Registry, adapters: Mapping[str, InferenceAdapter]) -> None:
        missing = {r.backend for r in registry} - set(adapters)
        if missing:
            raise ValueError(f"routes name backends that do not exist: {sorted(missing)}")
        self.registry = registry
        self.adapters = dict(adapters)

    def resolve(self, model: object, kinds: Iterable[Kind]) -> Route:
        """The route for `model`, or a 4xx that lists the models this endpoint serves."""
        kinds = tuple(kinds)
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string", param="model")
        route = self.registry.get(model)
        if route is None or route.kind not in kinds:
            raise ModelNotFound(model, self.registry.names(kinds))
        return route

    async def predict(self, route: Route, task: Task, payload: object, **options: object) -> InferResponse:
        request = InferRequest(task=task, model=route.upstream_model, payload=payload, options=options)
        return await self.adapters[route.backend].predict(request)

    def stream(self, route: Route, task: Task, payload: object) -> AsyncIterator[bytes]:
        request = InferRequest(task=task, model=route.upstream_model, payload=payload)
        return self.adapters[route.backend].stream(request)

    async def health(self) -> dict[str, bool]:
        return {name: await adapter.health() for name, adapter in self.adapters.items()}

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()
