"""One backend as the router uses it: an adapter behind a circuit breaker, a timeout and retries.

    backend = Backend(adapter, breaker=CircuitBreaker(), timeout_s=30, retries=1,
                      admission=Admission("triton", max_inflight=64, max_queue=256,
                                          queue_timeout_s=30))
    await backend.predict(request)

Admission (gateway/scope/admission.py) comes first: a request waits for one of the backend's
slots, in order, and holds it for the whole call with its retries (a stream: until its last
chunk); past the queue it is refused at once with a 503 (`BackendOverloaded`).

A failure of the backend (`BackendError`: unreachable, 5xx, timed out) counts against its
breaker; a client error (4xx) counts as a success, since the backend answered. A call that was
refused because the backend could not be reached (`BackendUnavailable`, not the breaker's own
refusal, not an overload) is retried up to `retries` times with jittered
exponential backoff. Streams are retried and timed only until their first chunk: after it the
client has bytes, and a retry could send it a second beginning.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from gateway.adapters.base import InferenceAdapter, InferRequest, InferResponse
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
from gateway.scope.admission import Admission

T = TypeVar("T")
HEALTH_TIMEOUT_S = 5.0


class Backend:
    def __init__(
        self,
        adapter: InferenceAdapter,
        *,
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
        self.name = adapter.name
        self.adapter = adapter
        self.metrics = metrics or BackendMetrics(adapter.name)
        self.breaker = breaker or CircuitBreaker(listener=self.metrics.transition)
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

    async def predict(self, request: InferRequest) -> InferResponse:
        async with self.admission.slot():
            return await self.call(lambda: self.adapter.predict(request))

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        async with self.admission.slot():
            first, rest = await self.call(lambda: _open_stream(self.adapter, request))
            try:
                if first is not None:
                    yield first
                    async for chunk in rest:
                        yield chunk
            finally:
                await close_stream(rest)

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` through the breaker and timeout, retried while the backend is unreachable."""
        retry = 0
        while True:
            try:
                return await self._once(attempt)
            except BackendUnavailable as err:
                if retry >= self.retries or not _retryable(err):
                    raise
            retry += 1
            self.metrics.retry()
            await self._sleep(self.backoff_s * 2 ** (retry - 1) * (0.5 + self._rng() / 2))

    async def health(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                return bool(await self.adapter.health())
        except Exception:
            return False

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
        return self.breaker.state is State.OPEN

    async def aclose(self) -> None:
        await self.adapter.aclose()

    async def _once(self, attempt: Callable[[], Awaitable[T]]) -> T:
        permit = self._admit()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await attempt()
        except TimeoutError:
            self._failed(permit, "timeout")
            raise BackendTimeout(self.name, self.timeout_s or 0) from None
        except BackendError as err:
            self._failed(permit, _outcome(err))
            raise
        except BackendOverloaded:
            self.breaker.released(permit)  # alive but shedding load: no verdict
            self.metrics.call("overloaded")
            raise
        except GatewayError:
            self.breaker.succeeded(permit)  # the backend answered: the request was at fault
            self.metrics.call("client_error")
            raise
        except BaseException:
            self.breaker.released(permit)  # cancelled, or a bug: no verdict on the backend
            self.metrics.call("cancelled")
            raise
        self.breaker.succeeded(permit)
        self.metrics.call("ok")
        return result

    def _admit(self) -> Permit:
        try:
            return self.breaker.acquire()
        except CircuitOpen as exc:
            self.metrics.call("rejected")
            raise BreakerOpen(self.name, exc.retry_after_header) from None

    def _failed(self, permit: Permit, outcome: str) -> None:
        self.breaker.failed(permit)
        self.metrics.call(outcome)


async def _open_stream(
    adapter: InferenceAdapter, request: InferRequest
) -> tuple[bytes | None, AsyncIterator[bytes]]:
    chunks = adapter.stream(request)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        return None, chunks
    except BaseException:
        await close_stream(chunks)
        raise


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Close a stream even in a cancelled task (the client went away): shielded. A generator
    that has run to its end has nothing left to close (the common case: no cancel scope)."""
    close = getattr(chunks, "aclose", None)
    if close is None or getattr(chunks, "ag_frame", True) is None:
        return
    with anyio.CancelScope(shield=True):
        await close()


def _retryable(err: BackendUnavailable) -> bool:
    return not isinstance(err, BreakerOpen)


def _outcome(err: BackendError) -> str:
    if isinstance(err, BackendTimeout):
        return "timeout"
    if isinstance(err, BackendUnavailable):
        return "unavailable"
    return "error"
