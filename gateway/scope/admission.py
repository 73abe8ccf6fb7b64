"""Admission control per backend: at most `max_inflight` requests at once (a pool's endpoints
times its per-endpoint `max_inflight`), at most `max_queue` waiting for at most
`queue_timeout_s`; anything past that is refused at once with a 503 + Retry-After
(`BackendOverloaded`), never left to hang.

    admission = Admission("llm", max_inflight=64, max_queue=256, queue_timeout_s=30)
    async with admission.slot(Ticket(priority="low", key="team-a", weight=1, cost=900)):
        ...  # the call (for a stream: until its last chunk)

Who gets a slot that frees (`policy: fair`, the default):

- **Classes.** `high` before `normal` before `low` (a request's class: gateway/scope/context.py).
  A waiter moves ahead one class for every `promote_after_s` it has waited, up to `normal`, so
  `low` is never starved for ever (its place in the order changes, not what it may take). A
  `high` or `normal` request that finds the queue full takes the place of the newest queued
  request of a lower class, which is refused (503 `overloaded_error`, "preempted").
- **Fair across keys within a class, by tokens**: a virtual token counter per key (VTC, as in
  AIBrix and "Fairness in Serving Large Language Models", OSDI '24): each admitted request adds
  its estimated tokens divided by the key's `weight` to its key's counter, and the waiting key with
  the lowest counter goes first; a key that starts waiting is lifted to the lowest counter among
  those waiting, so idle time banks no credit. Chosen over deficit round-robin because it needs no
  quantum to tune and charges a request once, by its size, whatever order requests arrive in; the
  cost is an estimate (prompt characters / 4 + `max_tokens`), since the real count is known only
  after the slot is given.
- **Work-conserving, and a reserve above it**: `low` requests may take every one of the
  `max_inflight` slots. While they hold some, `high` and `normal` requests may go over
  `max_inflight` by up to `reserved_fraction` of it (at least one slot), never by more than the
  slots `low` holds: a `normal` request finds a slot at once even while a flood of long `low`
  requests holds them all, and the engine's own priority scheduling (the bundled vLLM's
  `--scheduling-policy priority`, which gets the class) serves it first. A stream cannot be taken
  back once it runs, so a reserve carved out of `max_inflight` could only trade the flood's
  throughput against the interactive requests' waits; lent on top, it costs neither, only the
  engine's queue holds more while `low` runs. The default, half of `max_inflight`, covers the
  bursts of interactive traffic at a tenth of the capacity (bench.fairness: at 0.1 the lent
  slots covered its mean but not its bursts, and its TTFT p99 rose 3.6x under a flood).

`policy: fifo` is one queue in arrival order (what the gateway did before priorities).
Counts are per gateway worker process, like the backend's client and breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from gateway.errors import BackendOverloaded

Priority = Literal["high", "normal", "low"]
RANKS: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
CLASSES: tuple[Priority, ...] = ("high", "normal", "low")
LOW = RANKS["low"]

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
    "Requests refused by admission control: queue_full, queue_timeout or preempted.",
    ["backend", "reason"],
)
QUEUED_BY_CLASS = Gauge(
    "gateway_admission_class_queued",
    "Requests waiting for a backend slot, by priority class.",
    ["backend", "priority"],
    multiprocess_mode="livesum",
)
ADMITTED = Counter(
    "gateway_admission_admitted",
    "Requests given a backend slot, by priority class and API key.",
    ["backend", "priority", "key"],
)
PREEMPTED = Counter(
    "gateway_admission_preempted",
    "Queued requests refused to make room for a higher class, by their class and API key.",
    ["backend", "priority", "key"],
)
WAITED = Histogram(
    "gateway_admission_wait_seconds",
    "Time from arrival to a backend slot, by priority class.",
    ["backend", "priority"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True)
class Ticket:
    """What admission knows of a request: its class, its key (and the key's weight), and its
    estimated size in tokens."""

    priority: Priority = "normal"
    key: str = ""
    weight: float = 1.0
    cost: float = 1.0


ANONYMOUS = Ticket()


@dataclass(eq=False)
class _Waiter:
    ticket: Ticket
    rank: int
    arrived: float
    future: asyncio.Future[None] = field(repr=False)


class Admission:
    def __init__(
        self,
        backend: str,
        *,
        max_inflight: int,
        max_queue: int,
        queue_timeout_s: float,
        policy: Literal["fair", "fifo"] = "fair",
        reserved_fraction: float = 0.5,
        promote_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.policy = policy
        self.reserved_fraction = reserved_fraction
        self.promote_after_s = promote_after_s
        self.inflight = 0
        self.low_inflight = 0  # the slots `low` requests hold
        self._clock = clock
        self._waiters: list[_Waiter] = []
        self._served: dict[str, float] = {}  # the virtual token counter of each key
        self._inflight_gauge = INFLIGHT.labels(backend=backend)
        self._queued_gauge = QUEUED.labels(backend=backend)
        self._by_class = {c: QUEUED_BY_CLASS.labels(backend=backend, priority=c) for c in CLASSES}
        self._waited = {c: WAITED.labels(backend=backend, priority=c) for c in CLASSES}
        self._rejected = {
            r: REJECTED.labels(backend=backend, reason=r)
            for r in ("queue_full", "queue_timeout", "preempted")
        }

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def reserved(self) -> int:
        """Slots above `max_inflight` lent to `high` and `normal` while `low` holds slots."""
        if self.policy == "fifo" or self.reserved_fraction <= 0 or self.max_inflight < 2:
            return 0
        return max(1, math.floor(self.max_inflight * self.reserved_fraction))

    @contextlib.asynccontextmanager
    async def slot(self, ticket: Ticket = ANONYMOUS) -> AsyncIterator[None]:
        await self.acquire(ticket)
        try:
            yield
        finally:
            self.release(ticket)

    async def acquire(self, ticket: Ticket = ANONYMOUS) -> None:
        """Wait for a slot (each `acquire` needs one `release`), or BackendOverloaded."""
        rank = RANKS[ticket.priority] if self.policy == "fair" else RANKS["normal"]
        arrived = self._clock()
        if not self._waiters and self._fits(rank):
            self._admit(ticket, arrived)
            return
        if len(self._waiters) >= self.max_queue:
            self._make_room(rank, ticket)
        waiter = _Waiter(ticket, rank, arrived, asyncio.get_running_loop().create_future())
        self._enqueue(waiter)
        self._dispatch()  # a free slot the queue's head may not take (reserved) may be its
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter.future  # resolved by _dispatch, which hands a slot over
        except BaseException as exc:
            if isinstance(exc, BackendOverloaded):  # preempted by a higher class
                raise
            if waiter.future.done() and not waiter.future.cancelled():  # handed a slot as it
                if isinstance(exc, TimeoutError):  # gave up: just in time, use it
                    return
                self.release(ticket)
                raise
            self._dequeue(waiter)
            if isinstance(exc, TimeoutError):
                self._rejected["queue_timeout"].inc()
                raise BackendOverloaded(
                    self.backend,
                    f"waited {self.queue_timeout_s:g} s in the queue for a free slot",
                ) from None
            raise

    def release(self, ticket: Ticket = ANONYMOUS) -> None:
        """Give back the slot `acquire(ticket)` took."""
        self.inflight -= 1
        if self._is_low(ticket):
            self.low_inflight -= 1
        self._inflight_gauge.dec()
        self._dispatch()

    def resize(self, max_inflight: int) -> None:
        """A new capacity (a pool's endpoints changed): waiters take the slots it adds."""
        self.max_inflight = max_inflight
        self._dispatch()

    # -- who goes next ------------------------------------------------------------------------

    def _fits(self, rank: int) -> bool:
        """A slot for a request of class `rank` (its own, not its promoted one)."""
        if rank >= LOW:
            return self.inflight < self.max_inflight
        lent = min(self.reserved, self.low_inflight)
        return self.inflight < self.max_inflight + lent

    def _is_low(self, ticket: Ticket) -> bool:
        return self.policy == "fair" and ticket.priority == "low"

    def _dispatch(self) -> None:
        while self._waiters:
            waiter = self._next()
            if waiter is None:
                return  # no waiter fits a free slot
            self._dequeue(waiter)
            if not waiter.future.done():
                self._admit(waiter.ticket, waiter.arrived)
                waiter.future.set_result(None)

    def _next(self) -> _Waiter | None:
        if self.policy == "fifo":
            head = self._waiters[0]
            return head if self._fits(head.rank) else None
        now = self._clock()
        best: _Waiter | None = None
        best_order: tuple[int, float, float] = (99, 0.0, 0.0)
        for waiter in self._waiters:
            if not self._fits(waiter.rank):
                continue
            order = (self._rank_now(waiter, now), self._served.get(waiter.ticket.key, 0.0),
                     waiter.arrived)  # fmt: skip
            if best is None or order < best_order:
                best, best_order = waiter, order
        return best

    def _rank_now(self, waiter: _Waiter, now: float) -> int:
        """Its place in the order: its class, moved ahead once for every `promote_after_s` it
        has waited, up to `normal` (a promoted request never passes an asked-for `high`)."""
        promoted = waiter.rank - int((now - waiter.arrived) / self.promote_after_s)
        return max(min(waiter.rank, RANKS["normal"]), promoted)

    def _admit(self, ticket: Ticket, arrived: float) -> None:
        self.inflight += 1
        if self._is_low(ticket):
            self.low_inflight += 1
        self._inflight_gauge.inc()
        if self.policy == "fair":
            self._served[ticket.key] = (
                self._served.get(ticket.key, 0.0) + ticket.cost / ticket.weight
            )
        ADMITTED.labels(self.backend, ticket.priority, ticket.key).inc()
        self._waited[ticket.priority].observe(self._clock() - arrived)

    def _enqueue(self, waiter: _Waiter) -> None:
        key = waiter.ticket.key
        if self.policy == "fair" and not any(w.ticket.key == key for w in self._waiters):
            waiting = [self._served.get(w.ticket.key, 0.0) for w in self._waiters]
            if waiting:  # lifted to the lowest counter waiting: idle time banks no credit
                self._served[key] = max(self._served.get(key, 0.0), min(waiting))
        self._waiters.append(waiter)
        self._queued_gauge.inc()
        self._by_class[waiter.ticket.priority].inc()

    def _dequeue(self, waiter: _Waiter) -> None:
        if waiter not in self._waiters:  # taken out already (cancelled as a slot was handed)
            return
        self._waiters.remove(waiter)
        self._queued_gauge.dec()
        self._by_class[waiter.ticket.priority].dec()

    def _make_room(self, rank: int, ticket: Ticket) -> None:
        """The queue is full: preempt the newest waiter of the lowest class below `rank`, or
        refuse this request."""
        lower = [
            w for w in self._waiters if w.rank > rank and not w.future.done()
        ] if self.policy == "fair" else []  # fmt: skip
        if not lower:
            self._rejected["queue_full"].inc()
            raise BackendOverloaded(
                self.backend,
                f"{self.inflight} requests in flight and {len(self._waiters)} waiting, the most "
                "this gateway admits",
            )
        victim = max(lower, key=lambda w: (w.rank, w.arrived))
        self._dequeue(victim)
        self._rejected["preempted"].inc()
        PREEMPTED.labels(self.backend, victim.ticket.priority, victim.ticket.key).inc()
        victim.future.set_exception(
            BackendOverloaded(
                self.backend,
                f"this {victim.ticket.priority}-priority request was preempted from the full "
                f"queue by a {ticket.priority}-priority one",
            )
        )
