"""Drain logic in process: the middleware's answers while draining, the drain's timing, and the
signal hand-over from uvicorn. The real signals on a real bundle: tests/integration/."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import lifecycle
from lifecycle import Drain, DrainMiddleware, install_drain, tune_gc


@pytest.fixture(autouse=True)
def drain(monkeypatch: pytest.MonkeyPatch) -> Drain:
    fresh = Drain()
    monkeypatch.setattr(lifecycle, "DRAIN", fresh)
    return fresh


class FakeServer:
    """What uvicorn.Server offers the drain: its config and should_exit."""

    class Config:
        timeout_graceful_shutdown: float | None = None

    def __init__(self) -> None:
        self.config = self.Config()
        self.should_exit = False

    def handle_exit(self, sig: int, frame: object) -> None:
        raise AssertionError("uvicorn's handler must have been replaced")


@pytest.fixture
def client(drain: Drain) -> Iterator[TestClient]:
    async def work(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"in flight: {lifecycle.DRAIN.inflight}")

    async def readyz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ready")

    app = Starlette(routes=[Route("/v1/work", work), Route("/readyz", readyz),
                            Route("/livez", readyz), Route("/v2/work", work)])  # fmt: skip
    with TestClient(DrainMiddleware(app)) as c:
        yield c


def test_requests_are_counted_in_flight_and_probes_are_not(client: TestClient) -> None:
    assert client.get("/v1/work").text == "in flight: 1"
    assert client.get("/readyz").text == "ready"
    assert lifecycle.DRAIN.inflight == 0


def test_a_draining_worker_refuses_new_work_with_retry_after_and_closes_the_connection(
    client: TestClient, drain: Drain
) -> None:
    drain.draining, drain.refuse_new, drain.retry_after_s = True, True, 7
    refused = client.get("/v1/work")
    assert refused.status_code == 503 and "shutting down" in refused.text
    assert refused.headers["retry-after"] == "7" and refused.headers["connection"] == "close"
    assert client.get("/readyz").status_code == 503
    assert client.get("/livez").status_code == 200  # draining is not dead


def test_paths_left_to_another_layer_pass_through_uncounted(drain: Drain) -> None:
    async def work(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"in flight: {lifecycle.DRAIN.inflight}")

    app = Starlette(routes=[Route("/v1/work", work), Route("/status", work)])
    drain.draining, drain.refuse_new = True, True
    with TestClient(DrainMiddleware(app, leave=lambda p: p.startswith("/v1/"))) as c:
        assert c.get("/v1/work").text == "in flight: 0"  # the request scope counts and refuses
        assert c.get("/status").status_code == 503


def test_a_draining_runner_still_serves_its_client(client: TestClient, drain: Drain) -> None:
    drain.draining, drain.refuse_new = True, False
    assert client.get("/v1/work").status_code == 200
    assert client.get("/readyz").status_code == 503


async def test_an_idle_worker_stops_at_once(drain: Drain) -> None:
    server = FakeServer()
    drain.timeout_s, drain.final_grace_s = 30, 2
    started = time.monotonic()
    drain.begin(server)
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit and not drain.past_deadline
    assert time.monotonic() - started < 1
    assert server.config.timeout_graceful_shutdown == 2


async def test_requests_in_flight_are_waited_for_until_the_deadline(drain: Drain) -> None:
    server = FakeServer()
    drain.timeout_s, drain.final_grace_s = 0.3, 0.2
    drain.started()
    drain.begin(server)
    await asyncio.sleep(0.2)
    assert drain.draining and not drain.past_deadline and not server.should_exit
    await asyncio.sleep(0.2)
    assert drain.past_deadline and not server.should_exit  # the final grace for cut streams
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit


async def test_a_request_that_finishes_lets_the_worker_stop_before_the_deadline(
    drain: Drain,
) -> None:
    server = FakeServer()
    drain.timeout_s = 30
    drain.started()
    drain.begin(server)
    await asyncio.sleep(0.1)
    drain.finished()
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit and not drain.past_deadline


async def test_work_the_worker_does_not_count_holds_the_drain_until_it_is_done(
    drain: Drain,
) -> None:
    """The LLM service: the engine's own requests (`busy`), which the gateway may send to the
    engine's port directly, keep its worker up; a probe that fails says idle."""
    server = FakeServer()
    drain.timeout_s = 30
    engine = {"busy": True, "asked": 0}

    async def busy() -> bool:
        engine["asked"] += 1
        return engine["busy"]

    drain.busy = busy
    drain.begin(server)
    await asyncio.sleep(0.8)
    assert not server.should_exit
    assert 1 <= engine["asked"] <= 3  # at most twice a second
    engine["busy"] = False
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit and not drain.past_deadline


async def test_a_busy_probe_that_fails_does_not_hold_the_drain(drain: Drain) -> None:
    server = FakeServer()
    drain.timeout_s = 30

    async def broken() -> bool:
        raise ConnectionRefusedError("engine gone")

    drain.busy = broken
    drain.begin(server)
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit and not drain.past_deadline


async def test_a_second_signal_goes_straight_to_the_deadline(drain: Drain) -> None:
    server = FakeServer()
    drain.timeout_s, drain.final_grace_s = 30, 0.1
    drain.started()
    drain.begin(server)
    drain.begin(server)
    assert drain.past_deadline
    await asyncio.wait_for(drain._task, 5)  # type: ignore[arg-type]
    assert server.should_exit


async def test_sigterm_is_taken_over_from_uvicorn(drain: Drain) -> None:
    server = FakeServer()
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        install_drain(timeout_s=5, final_grace_s=1, retry_after_s=3, refuse_new=True)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if server.should_exit:
                break
        assert drain.draining and server.should_exit and drain.refuse_new
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_takes_the_startup_heap_out_of_every_collection(restore_gc: None) -> None:
    startup = [[i] for i in range(1000)]  # a service's imports, model and app
    tune_gc()
    after = [[i] for i in range(10)]  # what serving makes
    tracked = {id(o) for o in gc.get_objects()}  # every generation the collector walks
    assert not any(id(o) in tracked for o in startup)
    assert all(id(o) in tracked for o in after)
    assert gc.get_freeze_count() >= len(startup)
    assert gc.get_threshold() == lifecycle.GC_THRESHOLD


# BentoML's TimeoutMiddleware (traffic.timeout), as lifecycle mends it on import.


def timeout_middleware(app: Any, timeout: float) -> Any:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    return TimeoutMiddleware(app, timeout=timeout)


async def call(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    return sent


def answering(*, delay_s: float = 0.0, chunks: int = 1, gap_s: float = 0.0) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(chunks):
            await asyncio.sleep(gap_s)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def live_timers() -> int:
    loop = asyncio.get_running_loop()
    return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]


async def test_bentomls_request_timeout_leaves_no_timer_behind() -> None:
    """BentoML's own armed a timer per request for the whole traffic.timeout (the gateway's:
    3600 s), never cancelled: a worker's memory grew ~0.7 MB per 1,000 requests."""
    middleware = timeout_middleware(answering(), timeout=3600)
    before = live_timers()
    for _ in range(200):
        assert (await call(middleware))[0]["status"] == 200
    assert live_timers() == before


async def test_a_request_that_sends_nothing_in_time_gets_bentomls_504() -> None:
    sent = await call(timeout_middleware(answering(delay_s=1.0), timeout=0.05))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]


async def test_a_response_that_has_started_may_outlast_the_timeout() -> None:
    sent = await call(timeout_middleware(answering(chunks=5, gap_s=0.03), timeout=0.05))
    assert sent[0]["status"] == 200
    assert [m.get("body") for m in sent[1:]] == [b"x"] * 5 + [b""]


async def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("the backend's")

    # (BentoML's own waited here for the whole timeout: nothing was sent to end its wait)
    with pytest.raises(TimeoutError, match="the backend's"):
        await asyncio.wait_for(call(timeout_middleware(app, timeout=3600)), 5)
