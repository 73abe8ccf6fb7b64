"""The router over fake backends: breakers, fallbacks, retries, timeouts, streams, status."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from gateway.adapters.base import InferResponse
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BreakerOpen,
    InvalidRequest,
    ModelNotFound,
    WrongEndpoint,
)
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker, State
from gateway.routing.metrics import BackendMetrics
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from tests.fakes import FakeAdapter
from tests.gateway.routing.test_breaker import Clock

OK = InferResponse({"ok": True})
DOWN = BackendUnavailable("primary", "ConnectError: refused")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def backend(
    adapter: FakeAdapter, clock: Clock, *, threshold: int = 2, **options: object
) -> Backend:
    metrics = BackendMetrics(adapter.name)
    breaker = CircuitBreaker(
        failure_threshold=threshold, window_s=60, recovery_s=10, clock=clock,
        listener=metrics.transition,
    )  # fmt: skip
    return Backend(adapter, breaker=breaker, metrics=metrics, rng=lambda: 1.0, **options)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def primary() -> FakeAdapter:
    return FakeAdapter("primary")


@pytest.fixture
def spare() -> FakeAdapter:
    return FakeAdapter("spare")


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def router(primary: FakeAdapter, spare: FakeAdapter, clock: Clock, sleeps: Sleeps) -> Router:
    routes = [
        Route("big", "llm", "primary", "big-upstream", fallback=("small",)),
        Route("solo", "llm", "primary", "solo-upstream"),
        Route("small", "llm", "spare", "small-upstream"),
    ]
    backends = {
        "primary": backend(primary, clock, retries=1, backoff_s=0.1, sleep=sleeps),
        "spare": backend(spare, clock),
    }
    return Router(Registry(routes), backends)


def route(router: Router, name: str) -> Route:
    return router.resolve(name, kinds=("llm",))


async def test_calls_the_backend_under_the_upstream_name(
    router: Router, primary: FakeAdapter
) -> None:
    primary.enqueue(OK)
    assert await router.predict(route(router, "solo"), "chat", {"x": 1}, top_k=2) == OK
    sent = primary.requests[0]
    assert (sent.model, sent.payload, sent.options) == ("solo-upstream", {"x": 1}, {"top_k": 2})


def test_unknown_models_are_404_and_wrong_kind_ones_400(router: Router) -> None:
    with pytest.raises(ModelNotFound, match="Available models: big, small, solo"):
        router.resolve("nope", kinds=("llm",))
    with pytest.raises(WrongEndpoint, match="'big' is of kind 'llm', served on /v1/chat") as err:
        router.resolve("big", kinds=("image",))
    assert err.value.status == 400 and err.value.code == "wrong_endpoint"


async def test_unreachable_backend_is_retried_with_backoff(
    router: Router, primary: FakeAdapter, sleeps: Sleeps
) -> None:
    primary.enqueue(DOWN, OK)
    assert await router.predict(route(router, "solo"), "chat", {}) == OK
    assert len(primary.requests) == 2 and sleeps.delays == [0.1]


@pytest.mark.parametrize(
    "error",
    [BackendError("primary", "HTTP 500"), BackendTimeout("primary", 1), InvalidRequest("bad")],
)
async def test_errors_other_than_unreachable_are_not_retried(
    router: Router, primary: FakeAdapter, error: Exception
) -> None:
    primary.enqueue(error)
    with pytest.raises(type(error)):
        await router.predict(route(router, "solo"), "chat", {})
    assert len(primary.requests) == 1


async def test_an_overload_is_not_retried(router: Router, primary: FakeAdapter) -> None:
    primary.enqueue(BackendOverloaded("primary", "queue full"))
    with pytest.raises(BackendOverloaded) as shed:
        await router.predict(route(router, "solo"), "chat", {})
    assert len(primary.requests) == 1
    assert shed.value.headers == {"Retry-After": "1"} and shed.value.status == 503


async def test_breaker_opens_then_fails_fast_with_retry_after_naming_the_backend(
    router: Router, primary: FakeAdapter, clock: Clock
) -> None:
    primary.enqueue(DOWN, DOWN)  # one request, retried once: two failures, the threshold
    with pytest.raises(BackendUnavailable):
        await router.predict(route(router, "solo"), "chat", {})
    assert router.backends["primary"].breaker.state is State.OPEN
    clock.advance(2.5)
    with pytest.raises(BreakerOpen) as refused:
        await router.predict(route(router, "solo"), "chat", {})
    assert len(primary.requests) == 2  # the open breaker did not call the backend
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "8"}
    assert (
        "'primary'" in refused.value.message and "circuit breaker is open" in refused.value.message
    )


async def test_half_open_probe_closes_the_breaker_again(
    router: Router, primary: FakeAdapter, clock: Clock
) -> None:
    primary.enqueue(DOWN, DOWN)
    with pytest.raises(BackendUnavailable):
        await router.predict(route(router, "solo"), "chat", {})
    clock.advance(10)
    assert router.backends["primary"].breaker.state is State.HALF_OPEN
    primary.enqueue(OK)
    assert await router.predict(route(router, "solo"), "chat", {}) == OK
    assert router.backends["primary"].breaker.state is State.CLOSED


async def test_client_errors_do_not_count_against_the_backend(
    router: Router, primary: FakeAdapter
) -> None:
    primary.enqueue(*[InvalidRequest("bad")] * 5)
    for _ in range(5):
        with pytest.raises(InvalidRequest):
            await router.predict(route(router, "solo"), "chat", {})
    assert router.backends["primary"].breaker.state is State.CLOSED


async def test_load_shedding_is_no_verdict_on_the_backend(
    router: Router, primary: FakeAdapter
) -> None:
    primary.enqueue(*[BackendOverloaded("primary", "process is overloaded")] * 5)
    for _ in range(5):
        with pytest.raises(BackendOverloaded) as shed:
            await router.predict(route(router, "solo"), "chat", {})
        assert shed.value.status == 503 and shed.value.headers == {"Retry-After": "1"}
    assert router.backends["primary"].breaker.state is State.CLOSED


async def test_failure_falls_back_to_the_next_model(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    before = REGISTRY.get_sample_value(
        "gateway_fallbacks_total", {"model": "big", "fallback": "small"}
    )
    primary.enqueue(BackendError("primary", "HTTP 500"))
    spare.enqueue(OK)
    assert await router.predict(route(router, "big"), "chat", {}) == OK
    assert spare.requests[0].model == "small-upstream"
    after = REGISTRY.get_sample_value(
        "gateway_fallbacks_total", {"model": "big", "fallback": "small"}
    )
    assert after == (before or 0) + 1


async def test_open_breaker_goes_straight_to_the_fallback(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    primary.enqueue(DOWN, DOWN)
    spare.enqueue(OK, OK)
    await router.predict(route(router, "big"), "chat", {})
    assert router.backends["primary"].open
    assert await router.predict(route(router, "big"), "chat", {}) == OK
    assert len(primary.requests) == 2 and len(spare.requests) == 2


async def test_when_every_fallback_fails_the_first_failure_is_answered(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    primary.enqueue(BackendError("primary", "HTTP 500"))
    spare.enqueue(BackendError("spare", "HTTP 502"))
    with pytest.raises(BackendError, match="'primary' failed: HTTP 500"):
        await router.predict(route(router, "big"), "chat", {})


async def test_a_client_error_is_not_sent_to_the_fallback(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    primary.enqueue(InvalidRequest("max_tokens too large"))
    with pytest.raises(InvalidRequest):
        await router.predict(route(router, "big"), "chat", {})
    assert spare.requests == []


async def test_slow_backend_times_out_and_counts_as_a_failure(clock: Clock) -> None:
    slow = FakeAdapter("slow")
    loop = asyncio.get_running_loop()
    slow.enqueue(loop.create_future(), loop.create_future())  # never resolved
    router = Router(
        Registry([Route("m", "llm", "slow", "m")]),
        {"slow": backend(slow, clock, timeout_s=0.05)},
    )
    for _ in range(2):
        with pytest.raises(BackendTimeout, match=r"within 0\.05 s"):
            await router.predict(route(router, "m"), "chat", {})
    assert router.backends["slow"].open


async def test_stream_falls_back_before_the_first_chunk(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    primary.enqueue([BackendUnavailable("primary", "refused")], [BackendUnavailable("p", "x")])
    spare.enqueue([b"a", b"b"])
    chunks = [c async for c in router.stream(route(router, "big"), "chat", {})]
    assert chunks == [b"a", b"b"]
    assert len(primary.requests) == 2  # retried once before the fallback


async def test_stream_is_never_retried_after_the_first_chunk(
    router: Router, primary: FakeAdapter, spare: FakeAdapter
) -> None:
    primary.enqueue([b"first", BackendUnavailable("primary", "stream broke off")])
    stream = router.stream(route(router, "big"), "chat", {})
    assert await anext(stream) == b"first"
    with pytest.raises(BackendUnavailable):
        await anext(stream)
    assert len(primary.requests) == 1 and spare.requests == []


async def test_stream_first_chunk_is_bounded_by_the_timeout(clock: Clock) -> None:
    slow = FakeAdapter("slow")
    late: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    slow.enqueue([late])
    router = Router(
        Registry([Route("m", "llm", "slow", "m")]),
        {"slow": backend(slow, clock, timeout_s=0.05)},
    )
    with pytest.raises(BackendTimeout):
        await anext(router.stream(route(router, "m"), "chat", {}))


async def test_a_cancelled_probe_leaves_the_breaker_half_open(clock: Clock) -> None:
    slow = FakeAdapter("slow")
    b = backend(slow, clock, threshold=1)
    router = Router(Registry([Route("m", "llm", "slow", "m")]), {"slow": b})
    slow.enqueue(DOWN)
    with pytest.raises(BackendUnavailable):
        await router.predict(route(router, "m"), "chat", {})
    clock.advance(10)
    slow.enqueue(asyncio.get_running_loop().create_future(), OK)
    task = asyncio.create_task(router.predict(route(router, "m"), "chat", {}))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.breaker.state is State.HALF_OPEN
    assert await router.predict(route(router, "m"), "chat", {}) == OK  # the next probe runs
    assert b.breaker.state is State.CLOSED


async def test_breaker_state_and_transitions_are_exported(
    router: Router, primary: FakeAdapter
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    opened = sample(
        "gateway_breaker_transitions_total", backend="primary", from_state="closed", to_state="open"
    )
    primary.enqueue(DOWN, DOWN)
    with pytest.raises(BackendUnavailable):
        await router.predict(route(router, "solo"), "chat", {})
    assert sample("gateway_breaker_state", backend="primary") == 2
    assert (
        sample(
            "gateway_breaker_transitions_total",
            backend="primary",
            from_state="closed",
            to_state="open",
        )
        == opened + 1
    )
    assert sample("gateway_backend_calls_total", backend="primary", outcome="unavailable") >= 2


async def test_status_shows_an_open_backend_as_not_ready(
    router: Router, primary: FakeAdapter
) -> None:
    primary.enqueue(DOWN, DOWN)
    with pytest.raises(BackendUnavailable):
        await router.predict(route(router, "solo"), "chat", {})
    status = {b["name"]: b for b in (await router.status())["backends"]}
    assert status["primary"]["healthy"] and not status["primary"]["ready"]
    assert status["primary"]["breaker"]["state"] == "open"
    assert status["primary"]["breaker"]["retry_after_s"] == 10
    assert status["spare"]["ready"] and status["spare"]["breaker"]["state"] == "closed"


async def test_readiness_counts_only_required_backends(clock: Clock) -> None:
    required, optional = FakeAdapter("runner"), FakeAdapter("remote", healthy=False)
    router = Router(
        Registry([Route("a", "llm", "runner", "a"), Route("b", "llm", "remote", "b")]),
        {"runner": Backend(required, required=True), "remote": Backend(optional)},
    )
    assert await router.ready()
    required.healthy = False
    assert not await router.ready()


async def test_bare_adapters_get_a_default_breaker_and_close_with_the_router() -> None:
    adapter = FakeAdapter("plain")
    router = Router(Registry([Route("m", "llm", "plain", "m")]), {"plain": adapter})
    assert router.backends["plain"].breaker.state is State.CLOSED
    await router.aclose()
    assert adapter.closed


def test_routes_must_name_existing_backends() -> None:
    with pytest.raises(ValueError, match="nowhere"):
        Router(Registry([Route("m", "llm", "nowhere", "m")]), {})
