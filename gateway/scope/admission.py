"""Admission control per backend: at most `max_inflight` requests at once (a pool's endpoints
times its per-endpoint `max_inflight`), at most `max_queue`
waiting in arrival order for at most `queue_timeout_s`; anything past that is refused at once
with a 503 + Retry-After (`BackendOverloaded`), never left to hang.

    admission = Admission("llm", max_inflight=64, max_queue=256, queue_timeout_s=30)
    async with admission.slot():
        ...  # the call (for a stream: until its last chunk)

Counts are per gateway worker process, like the backend's client and breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge

from gateway.errors import BackendOverloaded

INFLIGHT = Gauge(
    "gateway_admission_inflight",
    "Requests each backend is working on, admitted by the gateway.",
    ["backend"],
    multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "gateway_admission_queued",
    "Requests waiting in the gateway for a backend slot.",
    ["backend"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "gateway_admission_rejected",
    "Requests refused by admission control: queue_full or queue_timeout.",
    ["backend", "reason"],
)


class Admission:
    def __init__(
        self, backend: str, *, max_inflight: int, max_queue: int, queue_timeout_s: float
    ) -> None:
        self.backend = backend
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._inflight_gauge = INFLIGHT.labels(backend=backend)
        self._queued_gauge = QUEUED.labels(backend=backend)
        self._full = REJECTED.labels(backend=backend, reason="queue_full")
        self._timeout = REJECTED.labels(backend=backend, reason="queue_timeout")

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Wait for a slot (each `acquire` needs one `release`), or BackendOverloaded."""
        if self.inflight < self.max_inflight and not self._waiters:
            self._take()
            return
        if len(self._waiters) >= self.max_queue:
            self._full.inc()
            raise BackendOverloaded(
                self.backend,
                f"{self.inflight} requests in flight and {len(self._waiters)} waiting, the most "
                "this gateway admits",
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._queued_gauge.inc()
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter  # resolved by _release, which hands its slot over
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # handed a slot as it gave up
                if isinstance(exc, TimeoutError):
                    return  # just in time: use it
                self.release()
                raise
            self._waiters.remove(waiter)
            self._queued_gauge.dec()
            if isinstance(exc, TimeoutError):
                self._timeout.inc()
                raise BackendOverloaded(
                    self.backend,
                    f"waited {self.queue_timeout_s:g} s in the queue for a free slot",
                ) from None
            raise

    def resize(self, max_inflight: int) -> None:
        """A new capacity (a pool's endpoints changed): waiters take the slots it adds."""
        self.max_inflight = max_inflight
        while self._waiters and self.inflight < self.max_inflight:
            waiter = self._waiters.popleft()
            self._queued_gauge.dec()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _take(self) -> None:
        self.inflight += 1
        self._inflight_gauge.inc()

    def release(self) -> None:
        self.inflight -= 1
        self._inflight_gauge.dec()
        self.resize(self.max_inflight)
