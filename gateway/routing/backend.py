"""One backend as the router uses it: a pool of endpoints (replicas of one model server, each
an adapter behind its own circuit breaker; one for a backend given one `url`), a timeout and
retries, behind admission.

    backend = Backend(adapter, breaker=CircuitBreaker(), timeout_s=30, retries=1,
                      admission=Admission("triton", max_inflight=64, max_queue=256,
                                          queue_timeout_s=30))
    backend = Backend(pool=Pool("chat", endpoints, picker=make_picker("prefix")), ...)
    await backend.predict(request)
    opened = await backend.open_stream(request)        # OpenedStream; opened.aclose() at the end

Admission (gateway/scope/admission.py) comes first: a request waits for a slot (`max_inflight`
per endpoint, one queue per backend), in order, and holds it for the whole call with its retries
(a stream: until its last chunk); past the queue it is refused at once with a 503
(`BackendOverloaded`). Then the pool picks an endpoint (gateway/routing/pool.py).

A failure of an endpoint (`BackendError`: unreachable, 5xx, timed out) counts against its
breaker; a client error (4xx) counts as a success, since the backend answered. A call that was
refused because the endpoint could not be reached (`BackendUnavailable`, not the breaker's own
refusal, not an overload) is retried up to `retries` times: on another endpoint of the pool when
there is one (no client-visible error), else on the same one with jittered exponential backoff.
Streams are retried and timed only until their first chunk: after it the client has bytes, and a
retry could send it a second beginning.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway.adapters.base import InferenceAdapter, InferRequest, InferResponse, OpenedStream
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BreakerOpen,
    GatewayError,
)
from gateway.routing.breaker import CircuitBreaker, CircuitOpen, Permit, State
from gateway.routing.metrics import BackendMetrics
from gateway.routing.pick import Choice, RoundRobin, prompt_text, response_id_in
from gateway.routing.pool import HEALTH_TIMEOUT_S, Endpoint, Pool
from gateway.scope.admission import Admission, Ticket

T = TypeVar("T")
NO_ENDPOINT = CircuitBreaker()  # what the status page shows of a pool that found none yet


class Backend:
    def __init__(
        self,
        adapter: InferenceAdapter | None = None,
        *,
        pool: Pool | None = None,
        breaker: CircuitBreaker | None = None,
        metrics: BackendMetrics | None = None,
        kind: str = "runner",
        target: str = "",
        required: bool = False,
        timeout_s: float | None = None,
        retries: int = 0,
        backoff_s: float = 0.05,
        admission: Admission | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if pool is None:
            assert adapter is not None, "a Backend needs an adapter or a pool"
            metrics = metrics or BackendMetrics(adapter.name)
            breaker = breaker or CircuitBreaker(listener=metrics.transition)
            endpoint = Endpoint(adapter.name, target or adapter.name, adapter, breaker)
            pool = Pool(adapter.name, [endpoint], picker=RoundRobin())
        self.name = pool.backend
        self.pool = pool
        self.metrics = metrics or BackendMetrics(self.name)
        self.kind = kind
        self.target = target  # where it is, for the status page
        self.required = required
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.admission = admission or Admission(
            self.name, max_inflight=2**31, max_queue=0, queue_timeout_s=1.0
        )
        self._sleep = sleep
        self._rng = rng

    @property
    def adapter(self) -> InferenceAdapter:
        """An endpoint's adapter (the first): what the backend can do, for the router."""
        if not self.pool.endpoints:
            raise BackendUnavailable(self.name, "no endpoint found yet")
        return self.pool.endpoints[0].adapter

    @property
    def breaker(self) -> CircuitBreaker:
        """The first endpoint's breaker: the backend's own when it has one endpoint (a pool
        with none yet shows a closed one)."""
        return self.pool.endpoints[0].breaker if self.pool.endpoints else NO_ENDPOINT

    async def predict(self, request: InferRequest) -> InferResponse:
        async with self.admission.slot(ticket(request)):
            endpoint, _, result = await self._attempts(request, lambda a: a.predict(request))
            endpoint.finished()
        if request.task == "responses":
            self.pool.picker.answered(endpoint, request, result.body)
        return result

    async def open_stream(self, request: InferRequest) -> OpenedStream:
        """The stream once its first chunk has come; its `aclose()` frees its slot."""
        admitted = ticket(request)
        await self.admission.acquire(admitted)
        try:
            endpoint, _, opened = await self._attempts(
                request, lambda a: OpenedStream.open(a.stream(request))
            )
        except BaseException:
            self.admission.release(admitted)
            raise
        if request.task == "responses" and opened.first is not None:
            self.pool.picker.answered(endpoint, request, {"id": response_id_in(opened.first)})

        def done() -> None:
            endpoint.finished()
            self.admission.release(admitted)

        return opened.on_close(done)

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        """The chunks of `open_stream`, as one iterator."""
        opened = await self.open_stream(request)
        async for chunk in opened.chunks():
            yield chunk

    async def call(self, attempt: Callable[[InferenceAdapter], Awaitable[T]]) -> T:
        """`attempt(adapter)` on an endpoint, through its breaker and the timeout, retried while
        endpoints are unreachable (no admission: for metadata and such)."""
        endpoint, _, result = await self._attempts(None, attempt)
        endpoint.finished()
        return result

    async def _attempts(
        self, request: InferRequest | None, attempt: Callable[[InferenceAdapter], Awaitable[T]]
    ) -> tuple[Endpoint, Choice, T]:
        """(the endpoint, its pick, the result) of the first attempt that gets through; the
        endpoint's in-flight count stays up for the caller to end."""
        tried: list[Endpoint] = []
        retry = 0
        while True:
            endpoint, choice = await self.pool.choose(request, tried)
            endpoint.started(choice)
            if request is not None and request.context is not None:
                request.context.endpoint = endpoint.key
            try:
                result = await self._once(endpoint, functools.partial(attempt, endpoint.adapter))
            except BackendUnavailable as err:
                endpoint.answering(choice)
                endpoint.finished()
                if retry >= self.retries or not self._retryable(err):
                    raise
                self.pool.failed(endpoint)
                tried.append(endpoint)
            except BaseException:
                endpoint.answering(choice)
                endpoint.finished()
                raise
            else:
                endpoint.answering(choice)
                return endpoint, choice, result
            retry += 1
            self.metrics.retry()
            if len(tried) >= len(self.pool.live()):  # no other endpoint left: wait a little
                await self._sleep(self.backoff_s * 2 ** (retry - 1) * (0.5 + self._rng() / 2))

    async def health(self) -> bool:
        if not self.pool.dynamic:
            return bool(self.pool.endpoints) and await self._healthy(self.adapter)
        await self.pool.watching()  # a discovered pool finds its endpoints before any request
        live = self.pool.live()
        # Each check is recorded on its endpoint, so a pool ready here takes requests at once
        # (not at its watch's next round)
        return any(await asyncio.gather(*(e.check() for e in live)))

    async def model_ready(self, model: str, version: str) -> bool:
        if self.open or not self.pool.endpoints:
            return False
        check = getattr(self.adapter, "model_ready", None)
        if check is None:
            return await self.health()
        return bool(await check(model, version))

    def status(self) -> dict[str, Any]:
        breaker = self.breaker
        return {
            "state": breaker.state.value,
            "failures_in_window": breaker.failures_in_window(),
            "retry_after_s": round(breaker.retry_after_s(), 3),
            "opened_count": breaker.opened_count,
            "failure_threshold": breaker.failure_threshold,
            "window_s": breaker.window_s,
            "recovery_s": breaker.recovery_s,
        }

    @property
    def open(self) -> bool:
        """Every endpoint's breaker is open."""
        live = self.pool.live()
        return bool(live) and all(e.breaker.state is State.OPEN for e in live)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _healthy(self, adapter: InferenceAdapter) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                return bool(await adapter.health())
        except Exception:
            return False

    def _retryable(self, err: BackendUnavailable) -> bool:
        """Not the breaker's own refusal, unless another endpoint may take it."""
        return not isinstance(err, BreakerOpen) or self.pool.dynamic

    async def _once(self, endpoint: Endpoint, attempt: Callable[[], Awaitable[T]]) -> T:
        breaker = endpoint.breaker
        permit = self._admit(breaker)
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await attempt()
        except TimeoutError:
            self._failed(breaker, permit, "timeout")
            raise BackendTimeout(self.name, self.timeout_s or 0) from None
        except BackendError as err:
            self._failed(breaker, permit, _outcome(err))
            raise
        except BackendOverloaded:
            breaker.released(permit)  # alive but shedding load: no verdict
            self.metrics.call("overloaded")
            raise
        except GatewayError:
            breaker.succeeded(permit)  # the backend answered: the request was at fault
            self.metrics.call("client_error")
            raise
        except BaseException:
            breaker.released(permit)  # cancelled, or a bug: no verdict on the backend
            self.metrics.call("cancelled")
            raise
        breaker.succeeded(permit)
        self.metrics.call("ok")
        return result

    def _admit(self, breaker: CircuitBreaker) -> Permit:
        try:
            return breaker.acquire()
        except CircuitOpen as exc:
            self.metrics.call("rejected")
            raise BreakerOpen(self.name, exc.retry_after_header) from None

    def _failed(self, breaker: CircuitBreaker, permit: Permit, outcome: str) -> None:
        breaker.failed(permit)
        self.metrics.call(outcome)


def ticket(request: InferRequest) -> Ticket:
    """What admission weighs a request by: its class, its key and the key's weight, and its
    size in tokens, estimated (prompt characters / 4 + `max_tokens`, 256 when unset)."""
    ctx, body = request.context, request.payload
    key = ctx.key if ctx is not None else None
    cost = 1.0
    if isinstance(body, dict):
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        answer = limit if isinstance(limit, int) else 256
        cost = len(prompt_text(request)) / 4 + answer
    return Ticket(
        priority=request.priority,  # type: ignore[arg-type]
        key=key.name if key is not None else "",
        weight=key.weight if key is not None else 1.0,
        cost=cost,
    )


def _outcome(err: BackendError) -> str:
    if isinstance(err, BackendTimeout):
        return "timeout"
    if isinstance(err, BackendUnavailable):
        return "unavailable"
    return "error"
