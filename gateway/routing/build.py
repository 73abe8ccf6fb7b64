"""Builds the router from the `routing:` configuration: one adapter and one client per backend.

    router = build_router(settings.routing, bundled={"llm": llm_adapter}, bundled_routes=[...])

Call it inside the serving event loop (a BentoML service's `__init__` is): the gRPC and aiohttp
clients of remote backends bind to the loop they are created in. `Router.aclose()` closes them.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.adapters.base import InferenceAdapter
from gateway.adapters.openai import OpenAIAdapter, UpstreamClient, make_client
from gateway.adapters.tfserving import TFServingAdapter
from gateway.adapters.torchserve import make_adapter as torchserve_adapter
from gateway.adapters.triton import TritonAdapter
from gateway.adapters.triton_transport import make_transport
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker, State
from gateway.routing.metrics import BackendMetrics
from gateway.routing.pick import make_picker
from gateway.routing.pool import Discovery, Endpoint, Pool
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.admission import Admission
from gateway.scope.cache import ResponseCache
from settings import (
    AdmissionSettings,
    Balance,
    CacheSettings,
    Discover,
    OpenAIBackend,
    RoutingSettings,
    RunnerBackend,
    TFServingBackend,
    TorchServeBackend,
    TritonBackend,
)

BackendSettings = (
    RunnerBackend | OpenAIBackend | TritonBackend | TFServingBackend | TorchServeBackend
)
RemoteSettings = OpenAIBackend | TritonBackend | TFServingBackend | TorchServeBackend


def build_router(
    routing: RoutingSettings,
    *,
    bundled: Mapping[str, InferenceAdapter | PoolSpec],
    bundled_routes: Iterable[Route],
    admission: Mapping[str, AdmissionSettings] | None = None,
    cache: CacheSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Router:
    """The bundled adapters plus a client for every remote endpoint, each behind its breaker,
    and each backend behind its admission limits (`admission` by backend name; others get the
    defaults)."""
    registry = Registry.from_settings(routing, bundled_routes)  # checks names before any client
    limits = admission or {}
    backends: dict[str, Backend] = {}
    for name, adapter in bundled.items():
        settings = routing.backends.get(name) or RunnerBackend(kind="runner")
        spec = adapter if isinstance(adapter, PoolSpec) else one_endpoint(adapter, "bundled")
        backends[name] = pool_backend(
            name, spec, settings, admission=limits.get(name), clock=clock, registry=registry
        )
    for name, settings in routing.backends.items():
        if isinstance(settings, RemoteSettings):
            spec = remote_pool(name, settings, models=upstream_models(routing, name))
            backends[name] = pool_backend(
                name, spec, settings, admission=limits.get(name), clock=clock, registry=registry
            )
    responses = ResponseCache.from_settings(cache) if cache and cache.models else None
    return Router(registry, backends, caller_header=routing.caller_header, cache=responses)


@dataclass(frozen=True)
class PoolSpec:
    """A backend's endpoints: fixed addresses or a DNS name, how to make each one's adapter,
    and how requests are spread over them."""

    addresses: tuple[str, ...]
    make_adapter: Callable[[str], InferenceAdapter]
    balance: Balance
    target: str
    discover: Discover | None = None
    scheme: str = "http"  # of discovered addresses; "": host:port (Triton)
    load_every_s: float = 1.0
    lora: bool = False  # its engines serve LoRA adapters, found on their /v1/models


def one_endpoint(adapter: InferenceAdapter, target: str, *, lora: bool = False) -> PoolSpec:
    """A pool of one endpoint: an adapter made already (a bundled runner's)."""
    return PoolSpec((target,), lambda _address: adapter, "least_load", target, lora=lora)


def upstream_models(routing: RoutingSettings, backend: str) -> tuple[str, ...]:
    """The names at `backend` of the models routed to it."""
    names = (m.upstream or n for n, m in routing.models.items() if m.backend == backend)
    return tuple(dict.fromkeys(names))


def remote_pool(name: str, settings: RemoteSettings, *, models: tuple[str, ...] = ()) -> PoolSpec:
    timeout_s = settings.timeout_s or 600.0
    discover = settings.discover
    if isinstance(settings, OpenAIBackend):

        def make_adapter(url: str) -> InferenceAdapter:
            return OpenAIAdapter(
                name,
                make_client(url, timeout_s=timeout_s),
                api_key=settings.api_key,
                send_priority=settings.priority,
                health=health_client(url, discover, timeout_s=timeout_s),
                health_path=(discover and discover.health_path) or "/health",
            )

    elif isinstance(settings, TFServingBackend):

        def make_adapter(url: str) -> InferenceAdapter:
            return TFServingAdapter(
                name,
                make_client(url, timeout_s=timeout_s),
                format=settings.format,
                formats=settings.formats,
                models=models,
            )

    elif isinstance(settings, TorchServeBackend):

        def make_adapter(url: str) -> InferenceAdapter:
            port = settings.management_port
            return torchserve_adapter(name, url, management_port=port, timeout_s=timeout_s)

    else:

        def make_adapter(url: str) -> InferenceAdapter:
            transport = make_transport(name, url, protocol=settings.protocol, timeout_s=timeout_s)
            return TritonAdapter(name, transport)

    default: Balance = "prefix" if isinstance(settings, OpenAIBackend) else "least_load"
    return PoolSpec(
        tuple(settings.addresses),
        make_adapter,
        settings.balance or default,
        settings.target,
        discover=discover,
        scheme="" if isinstance(settings, TritonBackend) else "http",
        load_every_s=settings.load_every_s,
        lora=isinstance(settings, OpenAIBackend) and settings.lora,
    )


def health_client(
    url: str, discover: Discover | None, *, timeout_s: float
) -> UpstreamClient | None:
    """A client of the endpoint's health port when it differs from its traffic's."""
    if discover is None or discover.health_port is None:
        return None
    parts = urllib.parse.urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return make_client(f"{parts.scheme}://{host}:{discover.health_port}", timeout_s=timeout_s)


def pool_backend(
    name: str,
    spec: PoolSpec,
    settings: BackendSettings,
    *,
    admission: AdmissionSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
    registry: Registry | None = None,
) -> Backend:
    """A backend over the endpoints of `spec`: `max_inflight` per endpoint, one queue; with
    `spec.lora`, the LoRA adapters its engines serve become models of `registry`."""
    metrics = BackendMetrics(name)
    limits = admission or AdmissionSettings()
    single = len(spec.addresses) == 1 and spec.discover is None
    pool: Pool

    def make(address: str) -> Endpoint:
        listener = (
            metrics.transition
            if single
            else lambda old, new: metrics.transition(
                old, new, state=State.OPEN if pool_open() else State.CLOSED
            )
        )
        breaker = CircuitBreaker(**settings.breaker.model_dump(), clock=clock, listener=listener)
        return Endpoint(name, address, spec.make_adapter(address), breaker)

    def pool_open() -> bool:
        live = pool.live()
        return bool(live) and all(e.breaker.state is State.OPEN for e in live)

    queue = Admission(name, **limits.model_dump())
    found = spec.discover
    discovery: Discovery | None = None
    if found is not None:
        discovery = Discovery(found.dns, found.port, every_s=found.every_s, scheme=spec.scheme)
    pool = Pool(
        name,
        [make(a) for a in spec.addresses],
        picker=make_picker(spec.balance),
        per_endpoint=limits.max_inflight,
        make=make,
        discovery=discovery,
        load_every_s=spec.load_every_s,
        on_change=lambda live: queue.resize(limits.max_inflight * max(1, live)),
        on_adapters=(
            (lambda found: registry.set_adapters(name, found))
            if spec.lora and registry is not None
            else None
        ),
    )
    queue.resize(limits.max_inflight * max(1, len(spec.addresses)))
    return Backend(
        pool=pool,
        metrics=metrics,
        kind=settings.kind,
        target=spec.target,
        required=settings.required,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        backoff_s=settings.backoff_s,
        admission=queue,
    )
