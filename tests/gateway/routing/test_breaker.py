"""The circuit breaker's states and transitions, on a fake clock."""

from __future__ import annotations

import pytest

from gateway.routing.breaker import CircuitBreaker, CircuitOpen, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def transitions() -> list[tuple[State, State]]:
    return []


@pytest.fixture
def breaker(clock: Clock, transitions: list[tuple[State, State]]) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        window_s=10,
        recovery_s=5,
        half_open_max_calls=2,
        clock=clock,
        listener=lambda old, new: transitions.append((old, new)),
    )


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.failed(breaker.acquire())


def open_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.failure_threshold)
    assert breaker.state is State.OPEN


def test_opens_after_threshold_failures_within_the_window(
    breaker: CircuitBreaker, transitions: list[tuple[State, State]]
) -> None:
    fail(breaker, 2)
    assert breaker.state is State.CLOSED and breaker.failures_in_window() == 2
    fail(breaker)
    assert breaker.state is State.OPEN
    assert transitions == [(State.CLOSED, State.OPEN)]
    assert breaker.opened_count == 1


def test_failures_older_than_the_window_do_not_count(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 2)
    clock.advance(10.5)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    assert breaker.failures_in_window() == 2


def test_successes_do_not_erase_failures_in_the_window(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.succeeded(breaker.acquire())
    fail(breaker)
    assert breaker.state is State.OPEN


def test_open_refuses_at_once_with_the_time_left(breaker: CircuitBreaker, clock: Clock) -> None:
    open_breaker(breaker)
    clock.advance(1.5)
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert refused.value.retry_after_s == pytest.approx(3.5)
    assert refused.value.retry_after_header == "4"  # whole seconds, rounded up


def test_half_open_after_recovery_then_closed_after_enough_probes(
    breaker: CircuitBreaker, clock: Clock, transitions: list[tuple[State, State]]
) -> None:
    open_breaker(breaker)
    clock.advance(5)
    assert breaker.state is State.HALF_OPEN and breaker.retry_after_s() == 0
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpen):  # only half_open_max_calls probes at a time
        breaker.acquire()
    breaker.succeeded(first)
    assert breaker.state is State.HALF_OPEN
    breaker.succeeded(second)
    assert breaker.state is State.CLOSED
    assert [new for _, new in transitions] == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    assert breaker.failures_in_window() == 0


def test_a_failed_probe_opens_again_for_a_new_recovery_period(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    open_breaker(breaker)
    clock.advance(5)
    breaker.failed(breaker.acquire())
    assert breaker.state is State.OPEN and breaker.opened_count == 2
    clock.advance(4.9)
    assert breaker.state is State.OPEN
    clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN


def test_a_released_probe_frees_its_slot(breaker: CircuitBreaker, clock: Clock) -> None:
    open_breaker(breaker)
    clock.advance(5)
    probes = [breaker.acquire(), breaker.acquire()]
    breaker.released(probes[0])  # e.g. the client went away: no verdict on the backend
    third = breaker.acquire()
    breaker.succeeded(probes[1])
    breaker.succeeded(third)
    assert breaker.state is State.CLOSED


def test_late_results_from_before_a_transition_are_ignored(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    slow = breaker.acquire()  # admitted while closed
    open_breaker(breaker)
    breaker.succeeded(slow)
    assert breaker.state is State.OPEN
    clock.advance(5)
    probe = breaker.acquire()
    breaker.failed(slow)  # stale: must not reopen the half-open breaker
    assert breaker.state is State.HALF_OPEN
    breaker.succeeded(probe)
    breaker.succeeded(breaker.acquire())
    assert breaker.state is State.CLOSED


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(recovery_s=0)
