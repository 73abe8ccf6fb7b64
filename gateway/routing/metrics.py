"""Prometheus metrics of the router, served on the bundle's /metrics.

BentoML runs its workers with PROMETHEUS_MULTIPROC_DIR set and its /metrics aggregates every
process's values, so these appear there next to BentoML's own. The state gauge keeps the worst
state over the live gateway workers (`livemax`): a breaker open in any worker shows as open.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from gateway.routing.breaker import State

STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
    ["backend"],
    multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "gateway_breaker_transitions",
    "Circuit breaker state changes per backend.",
    ["backend", "from_state", "to_state"],
)
BACKEND_CALLS = Counter(
    "gateway_backend_calls",
    "Calls to each backend by outcome: ok, client_error, error, unavailable, timeout, "
    "rejected (breaker open), cancelled.",
    ["backend", "outcome"],
)
RETRIES = Counter("gateway_backend_retries", "Retried calls per backend.", ["backend"])
ENDPOINT_REQUESTS = Counter(
    "gateway_endpoint_requests",
    "Requests sent to each endpoint (replica) of a backend's pool.",
    ["backend", "endpoint"],
)
ENDPOINT_INFLIGHT = Gauge(
    "gateway_endpoint_inflight",
    "The gateway's requests in flight to each endpoint of a backend's pool.",
    ["backend", "endpoint"],
    multiprocess_mode="livesum",
)
PICKS = Counter(
    "gateway_pick",
    "Endpoint picks per backend by reason: prefix (a cached prefix won), least_load, session, "
    "round_robin, retry (another endpoint after a failure), only (one eligible).",
    ["backend", "reason"],
)
FALLBACKS = Counter(
    "gateway_fallbacks",
    "Requests served by a fallback model because the model's own backend failed.",
    ["model", "fallback"],
)


class BackendMetrics:
    """The metrics of one backend, with its label values bound once."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._state = BREAKER_STATE.labels(backend=backend)
        self._state.set(STATE_VALUES[State.CLOSED])
        self._retries = RETRIES.labels(backend=backend)
        self._calls = {
            outcome: BACKEND_CALLS.labels(backend=backend, outcome=outcome)
            for outcome in (
                "ok", "client_error", "error", "unavailable", "overloaded", "timeout", "rejected",
                "cancelled",
            )
        }  # fmt: skip

    def transition(self, old: State, new: State, *, state: State | None = None) -> None:
        """A breaker moved; the backend's state gauge shows `state` (a pool's: open only while
        every endpoint's breaker is), else the breaker's new state."""
        self._state.set(STATE_VALUES[new if state is None else state])
        BREAKER_TRANSITIONS.labels(self.backend, old.value, new.value).inc()

    def call(self, outcome: str) -> None:
        self._calls[outcome].inc()

    def retry(self) -> None:
        self._retries.inc()


def fallback_used(model: str, fallback: str) -> None:
    FALLBACKS.labels(model=model, fallback=fallback).inc()
