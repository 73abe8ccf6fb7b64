"""A backend over a pool of endpoints: retries on another endpoint, breakers per endpoint,
admission per endpoint, discovery that follows scaling, engine load from /metrics."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import BackendUnavailable, BreakerOpen
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker, State
from gateway.routing.pick import LeastLoad, RoundRobin
from gateway.routing.pool import Discovery, Endpoint, Pool, parse_load
from gateway.scope.admission import Admission
from gateway.scope.context import RequestContext
from tests.fakes import FakeAdapter

VLLM_METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="demo-llm"} 3.0
vllm:num_requests_running{engine="0",model_name="demo-llm"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="demo-llm"} 0.25
vllm:prefix_cache_hits_total{engine="0",model_name="demo-llm"} 1280.0
"""


class Metered(FakeAdapter):
    """A fake engine with a /metrics page."""

    def __init__(self, name: str, page: str | None = None) -> None:
        super().__init__(name)
        self.page = page

    async def engine_metrics(self) -> str | None:
        return self.page


def endpoint(key: str, adapter: FakeAdapter | None = None, **breaker: Any) -> Endpoint:
    return Endpoint("chat", key, adapter or FakeAdapter("chat"), CircuitBreaker(**breaker))


def pool_backend(*endpoints: Endpoint, per_endpoint: int = 8, **kwargs: Any) -> Backend:
    queue = Admission("chat", max_inflight=per_endpoint * len(endpoints), max_queue=8,
                      queue_timeout_s=5)  # fmt: skip
    pool = Pool("chat", endpoints, picker=RoundRobin(), per_endpoint=per_endpoint, **kwargs)
    return Backend(pool=pool, retries=2, admission=queue)


def request(ctx: RequestContext | None = None) -> InferRequest:
    return InferRequest("chat", "m", {"messages": []}, context=ctx)


def test_the_load_figures_of_vllm_and_sglang_pages() -> None:
    assert parse_load(VLLM_METRICS) == {"waiting": 3.0, "running": 5.0, "kv_usage": 0.25}
    sglang = 'sglang:num_queue_reqs{model_name="m"} 2\nsglang:num_running_reqs{model_name="m"} 4\n'
    assert parse_load(sglang) == {"waiting": 2.0, "running": 4.0}
    assert parse_load("garbage\nvllm:num_requests_waiting oops\n") == {}


async def test_an_unreachable_endpoint_is_retried_on_another_without_a_client_error() -> None:
    a, b = FakeAdapter("chat"), FakeAdapter("chat")
    a.enqueue(BackendUnavailable("chat", "connection refused"))
    b.enqueue(InferResponse({"ok": "b"}))
    backend = pool_backend(endpoint("a", a), endpoint("b", b))
    ctx = RequestContext("id", "POST", "/v1/chat/completions")
    result = await backend.predict(request(ctx))
    assert result.body == {"ok": "b"} and ctx.endpoint == "b"
    first, second = backend.pool.endpoints
    assert not first.healthy and second.healthy  # no new requests until a check passes
    assert (first.inflight, second.inflight) == (0, 0)
    await backend.aclose()


async def test_endpoints_with_an_open_breaker_get_nothing_and_all_open_is_503() -> None:
    a, b = FakeAdapter("chat"), FakeAdapter("chat")
    backend = pool_backend(
        endpoint("a", a, failure_threshold=1, recovery_s=30),
        endpoint("b", b, failure_threshold=1, recovery_s=30),
    )
    backend.pool.endpoints[0].breaker.failed(backend.pool.endpoints[0].breaker.acquire())
    b.enqueue(InferResponse({"ok": 1}), InferResponse({"ok": 2}))
    for _ in range(2):
        await backend.predict(request())
    assert len(a.requests) == 0 and len(b.requests) == 2
    backend.pool.endpoints[1].breaker.failed(backend.pool.endpoints[1].breaker.acquire())
    assert backend.open
    with pytest.raises(BreakerOpen) as err:
        await backend.predict(request())
    assert err.value.status == 503 and int(err.value.headers["Retry-After"]) >= 29


async def test_max_inflight_is_per_endpoint_with_one_queue_in_front() -> None:
    adapters = [FakeAdapter("chat"), FakeAdapter("chat")]
    gates = [asyncio.get_running_loop().create_future() for _ in range(3)]
    adapters[0].enqueue(gates[0], gates[2])
    adapters[1].enqueue(gates[1])
    backend = pool_backend(endpoint("a", adapters[0]), endpoint("b", adapters[1]), per_endpoint=1)
    calls = [asyncio.create_task(backend.predict(request())) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert [e.inflight for e in backend.pool.endpoints] == [1, 1]  # two run, one per endpoint
    assert backend.admission.queued == 1
    gates[0].set_result(InferResponse(0))
    await asyncio.sleep(0.01)
    assert backend.admission.queued == 0 and backend.pool.endpoints[0].inflight == 1
    gates[1].set_result(InferResponse(1))
    gates[2].set_result(InferResponse(2))
    results = await asyncio.gather(*calls)
    assert [r.body for r in results] == [0, 1, 2]


async def test_a_stream_holds_its_endpoint_and_slot_until_it_is_closed() -> None:
    a = FakeAdapter("chat")
    a.enqueue([b"one", b"two"])
    backend = pool_backend(endpoint("a", a), endpoint("b"))
    opened = await backend.open_stream(request())
    assert opened.first == b"one"
    assert backend.pool.endpoints[0].inflight == 1 and backend.admission.inflight == 1
    assert [c async for c in opened.chunks()] == [b"one", b"two"]
    assert backend.pool.endpoints[0].inflight == 0 and backend.admission.inflight == 0


class Names(Discovery):
    """The DNS answer, set by the test (the real resolver is used by the integration test)."""

    answer: list[str]

    async def addresses(self) -> list[str]:
        return [self.address(host) for host in self.answer]


async def test_discovery_adds_new_endpoints_and_drops_gone_ones_once_idle() -> None:
    made: list[str] = []

    def make(key: str) -> Endpoint:
        made.append(key)
        adapter = FakeAdapter("chat")
        adapter.enqueue(*[InferResponse(key)] * 10)
        return endpoint(key, adapter)

    names = Names("llm-engine", 8100, every_s=0.05)
    object.__setattr__(names, "answer", ["10.0.0.1"])
    sizes: list[int] = []
    pool = Pool("chat", [], picker=LeastLoad(random.Random(0)), make=make, discovery=names,
                on_change=sizes.append)  # fmt: skip
    backend = Backend(pool=pool)
    assert (await backend.predict(request())).body == "http://10.0.0.1:8100"
    object.__setattr__(names, "answer", ["10.0.0.1", "10.0.0.2"])
    await pool.refresh()
    assert [e.key for e in pool.live()] == ["http://10.0.0.1:8100", "http://10.0.0.2:8100"]
    first = pool.endpoints[0]
    first.inflight = 1  # a request still running on the replica being scaled away
    object.__setattr__(names, "answer", ["10.0.0.2"])
    await pool.refresh()
    assert first.gone and first in pool.endpoints  # kept until its request ends
    assert (await backend.predict(request())).body == "http://10.0.0.2:8100"
    first.inflight = 0
    await pool.refresh()
    assert first not in pool.endpoints and sizes == [1, 2, 1]
    await backend.aclose()


async def test_engine_load_read_from_metrics_steers_least_load() -> None:
    busy, idle = Metered("chat", VLLM_METRICS), Metered("chat", None)
    idle.enqueue(InferResponse("idle"))
    pool = Pool("chat", [endpoint("busy", busy), endpoint("idle", idle)],
                picker=LeastLoad(random.Random(0)))  # fmt: skip
    await pool.refresh()
    assert pool.endpoints[0].waiting == 3 and pool.endpoints[0].running == 5
    assert pool.endpoints[0].others == 8  # none of them this worker's
    assert (await Backend(pool=pool).predict(request())).body == "idle"
    status = pool.status()[0]
    assert status["waiting"] == 3 and status["kv_cache_usage"] == 0.25
    await pool.aclose()


async def test_unhealthy_endpoints_get_no_requests_until_they_recover() -> None:
    a, b = FakeAdapter("chat", healthy=False), FakeAdapter("chat")
    b.enqueue(InferResponse("b"), InferResponse("b"))
    pool = Pool("chat", [endpoint("a", a), endpoint("b", b)], picker=RoundRobin())
    await pool.refresh()
    assert pool.endpoints[0].eligible  # one slow or failed answer is not an outage
    await pool.refresh()
    assert not pool.endpoints[0].eligible
    backend = Backend(pool=pool)
    assert [(await backend.predict(request())).body for _ in range(2)] == ["b", "b"]
    b.healthy = False
    await pool.refresh()
    await pool.refresh()
    with pytest.raises(BackendUnavailable, match="none of its 2 endpoints is healthy"):
        await backend.predict(request())
    assert pool.endpoints[0].breaker.state is State.CLOSED  # health is not the breaker's verdict
    a.healthy = True
    await pool.refresh()  # one good answer brings it back
    a.enqueue(InferResponse("a"))
    assert (await backend.predict(request())).body == "a"
    await pool.aclose()


async def test_a_name_that_resolves_to_nothing_is_a_503_naming_it_and_status_still_shows() -> None:
    names = Names("nothing-here", 8100, every_s=0.05)
    object.__setattr__(names, "answer", [])
    pool = Pool("chat", [], picker=RoundRobin(), make=endpoint, discovery=names)
    backend = Backend(pool=pool)
    with pytest.raises(BackendUnavailable, match=r"no endpoint found \(from nothing-here\)"):
        await backend.predict(request())
    assert backend.status()["state"] == "closed" and not await backend.health()
    assert not await backend.model_ready("m", "")
    await backend.aclose()


async def test_a_discovered_pool_looks_its_name_up_for_a_readiness_check() -> None:
    """Before any request: a gateway that is not ready gets none, so readiness must look."""
    names = Names("llm-engine", 8100, every_s=0.05)
    object.__setattr__(names, "answer", ["10.0.0.1"])
    pool = Pool("chat", [], picker=RoundRobin(), make=endpoint, discovery=names)
    backend = Backend(pool=pool)
    assert await backend.health()
    assert [e.key for e in pool.live()] == ["http://10.0.0.1:8100"]
    await backend.aclose()
