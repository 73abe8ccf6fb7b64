"""The endpoints of one backend: replicas of the same model server, each with its own breaker,
health and load, found from a fixed list or by DNS, and picked per request (routing/pick.py).

    pool = Pool("chat", [endpoint], picker=make_picker("prefix"))        # a fixed list
    pool = Pool("chat", [], picker=..., make=make_endpoint,              # a headless Service
                discovery=Discovery("llm-engine", 8100, every_s=2))
    endpoint, choice = await pool.choose(request, exclude=set())

Per endpoint: the gateway's own requests in flight (always fresh), the engine's load read from
its /metrics every `load_every_s` (vLLM's `num_requests_waiting`, `num_requests_running`,
`kv_cache_usage_perc`, or SGLang's; a failed read is not a failure of the endpoint), its health
(the adapter's check, every `every_s`), and its circuit breaker. An endpoint that is unhealthy,
draining (its health check answers 503) or whose breaker is open gets no new requests. Discovery
adds a new address within one interval, and drops a gone one once its requests have ended.

A pool of one fixed endpoint (`url:`) runs no background work: it is today's one backend.
A pool whose engines serve LoRA adapters (`on_adapters`) also reads each engine's /v1/models on
every health check, one endpoint or many: the adapters found become models of the registry, and
a request for one goes to an endpoint that holds it (pick.adapter_tier). Load is read only where
there is a pick to make (more than one endpoint, or discovered): an engine's /metrics is not free
(tens of ms of its API server's time when it shares BentoML's multiprocess directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.adapters.base import InferenceAdapter
from gateway.errors import BackendUnavailable, BreakerOpen
from gateway.routing.breaker import CircuitBreaker, State
from gateway.routing.metrics import ENDPOINT_INFLIGHT, ENDPOINT_REQUESTS, PICKS
from gateway.routing.pick import Choice, Picker, adapter_tier, lora_info, use_adapter

log = logging.getLogger("gateway.routing.pool")

HEALTH_TIMEOUT_S = 5.0
# Failed checks in a row that take an endpoint out: one slow answer from a busy engine is not
# an outage (a refused request takes it out at once, `Pool.failed`).
CHECKS_TO_FAIL = 2

# An engine's load on its /metrics: vLLM's names, then SGLang's.
LOAD_METRICS = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "sglang:num_queue_reqs": "waiting",
    "sglang:num_running_reqs": "running",
    "sglang:token_usage": "kv_usage",
}


def parse_load(text: str) -> dict[str, float]:
    """The load figures of a Prometheus text page (summed over label sets)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(("vllm:", "sglang:")):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        field = LOAD_METRICS.get(name)
        if field is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        found[field] = found.get(field, 0.0) + value
    return found


class Endpoint:
    """One replica: its adapter (with its own client), breaker and what is known of its load."""

    def __init__(
        self, backend: str, key: str, adapter: InferenceAdapter, breaker: CircuitBreaker
    ) -> None:
        self.backend = backend
        self.key = key  # its address, as configured or discovered
        self.adapter = adapter
        self.breaker = breaker
        self.inflight = 0
        self.pending_blocks = 0.0
        self.waiting = 0
        self.others = 0  # requests on the engine that are not this worker's (at the last read)
        self.running = 0
        self.kv_usage: float | None = None
        self.load_read_at: float | None = None
        self.healthy = True  # until checks say otherwise
        self.failed_checks = 0
        self.gone = False  # discovery no longer finds it: dropped once idle
        # LoRA (pools with `lora`): the adapters its engine has registered (its /v1/models, and
        # this gateway's loads), those in its slots (this worker's sends and the engine's gauge
        # of adapters with requests), and how many slots it has
        self.adapters: dict[str, str] = {}
        self.slots: OrderedDict[str, None] = OrderedDict()
        self.max_loras = 1
        self._requests = ENDPOINT_REQUESTS.labels(backend=backend, endpoint=key)
        self._inflight = ENDPOINT_INFLIGHT.labels(backend=backend, endpoint=key)

    @property
    def eligible(self) -> bool:
        return not self.gone and self.healthy and self.breaker.state is not State.OPEN

    def started(self, choice: Choice) -> None:
        self.inflight += 1
        self.pending_blocks += choice.uncached_blocks
        self._requests.inc()
        self._inflight.inc()

    def answering(self, choice: Choice) -> None:
        """Its first byte came back: its prompt is no longer queued for prefill."""
        self.pending_blocks = max(0.0, self.pending_blocks - choice.uncached_blocks)

    def finished(self) -> None:
        self.inflight -= 1
        self._inflight.dec()

    async def check(self) -> bool:
        """Ask its health now; two failures in a row make it unhealthy, one success healthy."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                ok = bool(await self.adapter.health())
        except Exception:
            ok = False
        self.failed_checks = 0 if ok else self.failed_checks + 1
        if ok or self.failed_checks >= CHECKS_TO_FAIL or not self.healthy:
            self.healthy = ok
        return ok

    async def read_load(self) -> None:
        read = getattr(self.adapter, "engine_metrics", None)
        if read is None:
            return
        try:
            text = await read()
        except Exception:  # a failed read is not a failure of the endpoint
            return
        if text is None:
            return
        load = parse_load(text)
        self.waiting = int(load.get("waiting", 0))
        self.running = int(load.get("running", 0))
        self.others = max(0, self.waiting + self.running - self.inflight)
        self.kv_usage = load.get("kv_usage")
        self.load_read_at = time.monotonic()
        max_lora, active = lora_info(text)
        if max_lora is not None:
            self.max_loras = max_lora
            for adapter in active - set(self.slots):
                use_adapter(self, adapter)

    async def read_adapters(self) -> None:
        """The LoRA adapters its engine serves, from the engine's own /v1/models."""
        read = getattr(self.adapter, "models", None)
        models = await read() if read is not None else None
        if models is None:
            return  # unread: keep what is known
        self.adapters = {str(m["id"]): str(m["parent"]) for m in models if m.get("parent")}
        for gone in set(self.slots) - set(self.adapters):
            del self.slots[gone]

    def status(self) -> dict[str, Any]:
        breaker = self.breaker
        return {
            "endpoint": self.key,
            "state": "gone" if self.gone else "ready" if self.eligible else "unready",
            "healthy": self.healthy,
            "inflight": self.inflight,
            "waiting": self.waiting,
            "running": self.running,
            "kv_cache_usage": self.kv_usage,
            "breaker": breaker.state.value,
            "retry_after_s": round(breaker.retry_after_s(), 3),
            **({"adapters": sorted(self.adapters)} if self.adapters else {}),
        }

    async def aclose(self) -> None:
        await self.adapter.aclose()


@dataclass(frozen=True)
class Discovery:
    """Endpoints from a DNS name's addresses (a Kubernetes headless Service), at `port`."""

    dns: str
    port: int
    every_s: float = 2.0
    scheme: str = "http"  # "": host:port (Triton)

    async def addresses(self) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            self.dns, self.port, type=socket.SOCK_STREAM
        )
        hosts = sorted({str(info[4][0]) for info in infos})
        return [self.address(host) for host in hosts]

    def address(self, host: str) -> str:
        host = f"[{host}]" if ":" in host else host
        base = f"{host}:{self.port}"
        return f"{self.scheme}://{base}" if self.scheme else base


class Pool:
    def __init__(
        self,
        backend: str,
        endpoints: Iterable[Endpoint],
        *,
        picker: Picker,
        per_endpoint: int = 2**31,
        make: Callable[[str], Endpoint] | None = None,
        discovery: Discovery | None = None,
        every_s: float = 2.0,
        load_every_s: float = 1.0,
        on_change: Callable[[int], None] | None = None,
        on_adapters: Callable[[Mapping[str, tuple[str, int]]], None] | None = None,
    ) -> None:
        """With `on_adapters`, the pool watches the LoRA adapters its engines serve, tells it
        which (name -> (parent, endpoints holding it)) after each look, and picks an endpoint
        holding a request's adapter first (pick.adapter_tier)."""
        self.backend = backend
        self.endpoints: list[Endpoint] = list(endpoints)
        self.picker = picker
        self.per_endpoint = per_endpoint
        self._make = make
        self.discovery = discovery
        self.every_s = discovery.every_s if discovery else every_s
        self.load_every_s = min(load_every_s, self.every_s)
        self._on_change = on_change
        self._on_adapters = on_adapters
        self._task: asyncio.Task[None] | None = None
        self._discovered = asyncio.Event()
        self._picks = {r: PICKS.labels(backend=backend, reason=r) for r in PICK_REASONS}
        if self.lora:  # its adapters are models before any request comes
            with contextlib.suppress(RuntimeError):  # built outside an event loop: on first use
                asyncio.get_running_loop()
                self._start()

    @property
    def lora(self) -> bool:
        return self._on_adapters is not None

    @property
    def dynamic(self) -> bool:
        """Whether it watches its endpoints (more than one, or discovered)."""
        return self.discovery is not None or len(self.endpoints) > 1

    def live(self) -> list[Endpoint]:
        return [e for e in self.endpoints if not e.gone]

    async def choose(
        self, request: Any, exclude: Sequence[Endpoint] = ()
    ) -> tuple[Endpoint, Choice]:
        """The endpoint for `request`, not one of `exclude` if another is eligible; the pick is
        counted and recorded in the picker. BreakerOpen when every breaker is open, else
        BackendUnavailable when no endpoint is eligible."""
        await self.watching()
        if not self.dynamic:  # one endpoint: its breaker answers for itself, as a backend's
            if not self.endpoints:
                raise self._none_eligible()
            self._used(self.endpoints[0], request)
            return self.endpoints[0], ONLY
        eligible = [e for e in self.endpoints if e.eligible]
        if not eligible:
            raise self._none_eligible()
        fresh = [e for e in eligible if e not in exclude] or eligible
        roomy = [e for e in fresh if e.inflight < self.per_endpoint] or fresh
        adapter = self._adapter_of(request)
        if adapter is not None:
            roomy = adapter_tier(roomy, adapter)
        one = len(roomy) == 1
        choice = Choice(roomy[0], "only") if one else self.picker.pick(roomy, request)
        if adapter is not None and len(roomy) < len(fresh):
            choice = Choice(choice.endpoint, "adapter", choice.uncached_blocks)
        self._used(choice.endpoint, request)
        if exclude:
            choice = Choice(choice.endpoint, "retry", choice.uncached_blocks)
        self.picker.sent(choice, request)
        self._picks[choice.reason].inc()
        endpoint: Endpoint = choice.endpoint
        return endpoint, choice

    def _adapter_of(self, request: Any) -> str | None:
        """The request's LoRA adapter, when its model is one that this pool's engines serve."""
        model = getattr(request, "model", None)
        if not self.lora or not isinstance(model, str):
            return None
        return model if any(model in e.adapters for e in self.endpoints) else None

    def _used(self, endpoint: Endpoint, request: Any) -> None:
        if (adapter := self._adapter_of(request)) is not None:
            use_adapter(endpoint, adapter)

    def loaded(self, endpoint: Endpoint, adapter: str, parent: str) -> None:
        """This gateway loaded `adapter` on `endpoint` (or unloaded it: parent "")."""
        if parent:
            endpoint.adapters[adapter] = parent
        else:
            endpoint.adapters.pop(adapter, None)
            endpoint.slots.pop(adapter, None)
        self._report_adapters()

    def _report_adapters(self) -> None:
        if self._on_adapters is None:
            return
        found: dict[str, tuple[str, int]] = {}
        for endpoint in self.live():
            for name, parent in endpoint.adapters.items():
                found[name] = (parent, found.get(name, (parent, 0))[1] + 1)
        self._on_adapters(found)

    def failed(self, endpoint: Endpoint) -> None:
        """It could not be reached or answered 503: no new requests until its health check
        passes again (pools that watch their endpoints only)."""
        if self.dynamic:
            endpoint.healthy = False
            endpoint.failed_checks = CHECKS_TO_FAIL

    def status(self) -> list[dict[str, Any]]:
        return [e.status() for e in self.endpoints]

    async def refresh(self, *, health: bool = True) -> None:
        """One round of the watch: discovery, then each endpoint's health and load."""
        if self.discovery is not None:
            await self._rediscover()
        live = self.live()
        if health:
            await asyncio.gather(*(e.check() for e in live))
        if health and self.lora:
            await asyncio.gather(*(e.read_adapters() for e in live))
            self._report_adapters()
        if self.dynamic:  # load is for picking: one endpoint has none to make
            await asyncio.gather(*(e.read_load() for e in live))
        await self._drop_idle_gone()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for endpoint in self.endpoints:
            try:
                await endpoint.aclose()
            except Exception:
                log.exception("closing endpoint %s of %s failed", endpoint.key, self.backend)

    async def watching(self) -> None:
        """Start watching the endpoints (once), and wait for the first DNS answer (at most
        HEALTH_TIMEOUT_S): a readiness check must not wait for a first request to look."""
        self._start()
        if self.discovery is not None and not self._discovered.is_set():
            await self._first_discovery()

    # -- the watch ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and (self.dynamic or self.lora):
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        next_health = 0.0
        while True:
            now = time.monotonic()
            try:
                await self.refresh(health=now >= next_health)
            except Exception:
                log.exception("watching the endpoints of %s failed", self.backend)
            if now >= next_health:
                next_health = now + self.every_s
            await asyncio.sleep(self.load_every_s)

    async def _first_discovery(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._discovered.wait()

    async def _rediscover(self) -> None:
        assert self.discovery is not None and self._make is not None
        try:
            found = await self.discovery.addresses()
        except OSError as exc:  # keep what we have: a resolver hiccup is not a scale-down
            log.warning("discovering %s (%s) failed: %s", self.backend, self.discovery.dns, exc)
            self._discovered.set()
            return
        known = {e.key: e for e in self.endpoints}
        changed = False
        for key in found:
            endpoint = known.get(key)
            if endpoint is None:
                self.endpoints.append(self._make(key))
                changed = True
            elif endpoint.gone:
                endpoint.gone, changed = False, True
        for key, endpoint in known.items():
            if key not in found and not endpoint.gone:
                endpoint.gone, changed = True, True
        self._discovered.set()
        if changed:
            self._changed()

    async def _drop_idle_gone(self) -> None:
        for endpoint in [e for e in self.endpoints if e.gone and e.inflight == 0]:
            self.endpoints.remove(endpoint)
            self.picker.forget(endpoint.key)
            ENDPOINT_INFLIGHT.remove(self.backend, endpoint.key)
            await endpoint.aclose()

    def _changed(self) -> None:
        live = len(self.live())
        log.info("%s: %d endpoints", self.backend, live)
        if self._on_change is not None:
            self._on_change(live)

    def _none_eligible(self) -> BackendUnavailable:
        live = self.live()
        if not live:
            where = self.discovery.dns if self.discovery else "its configuration"
            return BackendUnavailable(self.backend, f"no endpoint found (from {where})")
        if all(e.breaker.state is State.OPEN for e in live):
            wait = min(e.breaker.retry_after_s() for e in live)
            return BreakerOpen(self.backend, str(max(1, int(wait + 0.999))))
        return BackendUnavailable(
            self.backend, f"none of its {len(live)} endpoints is healthy right now"
        )


PICK_REASONS = ("prefix", "least_load", "session", "round_robin", "retry", "only", "adapter")
ONLY = Choice(None, "only")
