"""Builds the router from the `routing:` configuration: one adapter and one client per backend.

    router = build_router(settings.routing, bundled={"llm": llm_adapter}, bundled_routes=[...])

Call it inside the serving event loop (a BentoML service's `__init__` is): the gRPC and aiohttp
clients of remote backends bind to the loop they are created in. `Router.aclose()` closes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from gateway.adapters.base import InferenceAdapter
from gateway.adapters.openai import OpenAIAdapter, make_client
from gateway.adapters.triton import TritonAdapter
from gateway.adapters.triton_transport import make_transport
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.metrics import BackendMetrics
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.admission import Admission
from gateway.scope.cache import ResponseCache
from settings import (
    AdmissionSettings,
    CacheSettings,
    OpenAIBackend,
    RoutingSettings,
    RunnerBackend,
    TritonBackend,
)

BackendSettings = RunnerBackend | OpenAIBackend | TritonBackend


def build_router(
    routing: RoutingSettings,
    *,
    bundled: Mapping[str, InferenceAdapter],
    bundled_routes: Iterable[Route],
    admission: Mapping[str, AdmissionSettings] | None = None,
    cache: CacheSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Router:
    """The bundled adapters plus a client for every remote backend, each behind its breaker and
    its admission limits (`admission` by backend name; others get the defaults)."""
    registry = Registry.from_settings(routing, bundled_routes)  # checks names before any client
    limits = admission or {}
    backends: dict[str, Backend] = {}
    for name, adapter in bundled.items():
        settings = routing.backends.get(name) or RunnerBackend(kind="runner")
        backends[name] = make_backend(
            adapter, settings, target="bundled", admission=limits.get(name), clock=clock
        )
    for name, settings in routing.backends.items():
        if not isinstance(settings, RunnerBackend):
            adapter = remote_adapter(name, settings)
            backends[name] = make_backend(
                adapter, settings, target=settings.url, admission=limits.get(name), clock=clock
            )
    responses = ResponseCache.from_settings(cache) if cache and cache.models else None
    return Router(registry, backends, caller_header=routing.caller_header, cache=responses)


def remote_adapter(name: str, settings: OpenAIBackend | TritonBackend) -> InferenceAdapter:
    timeout_s = settings.timeout_s or 600.0
    if isinstance(settings, OpenAIBackend):
        client = make_client(settings.url, timeout_s=timeout_s)
        return OpenAIAdapter(name, client, api_key=settings.api_key)
    transport = make_transport(name, settings.url, protocol=settings.protocol, timeout_s=timeout_s)
    return TritonAdapter(name, transport)


def make_backend(
    adapter: InferenceAdapter,
    settings: BackendSettings,
    *,
    target: str,
    admission: AdmissionSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Backend:
    metrics = BackendMetrics(adapter.name)
    limits = admission or AdmissionSettings()
    breaker = CircuitBreaker(
        **settings.breaker.model_dump(), clock=clock, listener=metrics.transition
    )
    return Backend(
        adapter,
        breaker=breaker,
        metrics=metrics,
        kind=settings.kind,
        target=target,
        required=settings.required,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        backoff_s=settings.backoff_s,
        admission=Admission(adapter.name, **limits.model_dump()),
    )
