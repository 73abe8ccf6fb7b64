"""A circuit breaker per backend: closed, open, half-open.

    closed ──(failure_threshold failures within window_s)──> open
    open ──(recovery_s elapsed, seen on the next call or status read)──> half_open
    half_open ──(half_open_max_calls probes succeed)──> closed
    half_open ──(any probe fails)──> open (a new recovery period)

Only real traffic moves it: health checks never do. While open, `acquire()` raises
`CircuitOpen` at once, carrying how long until a probe is allowed. In half-open at most
`half_open_max_calls` probes are in flight; other calls are refused like in open.

Every call is `permit = breaker.acquire()` then exactly one of `succeeded(permit)`,
`failed(permit)` or `released(permit)` (the call ended with no verdict on the backend, e.g. it was
cancelled). A permit from before the last transition is stale and ignored, so a slow call that
started while closed cannot close a breaker that opened meanwhile.

    breaker = CircuitBreaker(failure_threshold=5, window_s=30, recovery_s=10)
    permit = breaker.acquire()       # raises CircuitOpen while open
    try:
        result = await call()
    except BackendError:
        breaker.failed(permit)
        raise
    breaker.succeeded(permit)
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class State(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitOpen(Exception):
    """The breaker refuses calls for now; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker open; retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(frozen=True)
class Permit:
    generation: int  # the breaker's transition count when the call was admitted
    probe: bool  # admitted as a half-open probe


Listener = Callable[[State, State], None]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        window_s: float = 30.0,
        recovery_s: float = 10.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        if failure_threshold < 1 or half_open_max_calls < 1:
            raise ValueError("failure_threshold and half_open_max_calls must be at least 1")
        if window_s <= 0 or recovery_s <= 0:
            raise ValueError("window_s and recovery_s must be positive")
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.recovery_s = recovery_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._listener = listener
        self._state = State.CLOSED
        self._generation = 0
        self._failures: deque[float] = deque()  # times of recent failures while closed
        self._opened_at = 0.0
        self._probes = 0  # half-open probes in flight
        self._probe_successes = 0
        self.opened_count = 0
        self.last_transition_at: float | None = None

    @property
    def state(self) -> State:
        """The current state, moving open -> half-open once the recovery time is up."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.recovery_s:
            self._move(State.HALF_OPEN)
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.recovery_s - self._clock())

    def failures_in_window(self) -> int:
        self._trim(self._clock())
        return len(self._failures)

    def acquire(self) -> Permit:
        state = self.state
        if state is State.CLOSED:
            return Permit(self._generation, probe=False)
        if state is State.HALF_OPEN and self._probes < self.half_open_max_calls:
            self._probes += 1
            return Permit(self._generation, probe=True)
        raise CircuitOpen(self.retry_after_s() if state is State.OPEN else 1.0)

    def succeeded(self, permit: Permit) -> None:
        if not self._current(permit):
            return
        if permit.probe:
            self._probes -= 1
            self._probe_successes += 1
            if self._probe_successes >= self.half_open_max_calls:
                self._move(State.CLOSED)

    def failed(self, permit: Permit) -> None:
        if not self._current(permit):
            return
        if permit.probe:
            self._open()
            return
        now = self._clock()
        self._failures.append(now)
        self._trim(now)
        if len(self._failures) >= self.failure_threshold:
            self._open()

    def released(self, permit: Permit) -> None:
        if self._current(permit) and permit.probe:
            self._probes -= 1

    def _current(self, permit: Permit) -> bool:
        return permit.generation == self._generation

    def _trim(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self.window_s:
            self._failures.popleft()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self.opened_count += 1
        self._move(State.OPEN)

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._failures.clear()
        self._probes = 0
        self._probe_successes = 0
        self.last_transition_at = self._clock()
        if self._listener is not None:
            self._listener(old, new)
