"""Admission control per backend: slots, an ordered queue with a timeout, refusal past it."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import BackendOverloaded, render
from gateway.routing.backend import Backend
from gateway.scope.admission import Admission
from tests.fakes import FakeAdapter


def admission(inflight: int = 1, queue: int = 1, timeout_s: float = 5.0) -> Admission:
    return Admission("llm", max_inflight=inflight, max_queue=queue, queue_timeout_s=timeout_s)


async def hold(adm: Admission, started: list[int], release: asyncio.Event, n: int) -> None:
    async with adm.slot():
        started.append(n)
        await release.wait()


async def test_past_inflight_and_queue_a_request_is_refused_at_once_with_retry_after() -> None:
    adm, release, started = admission(inflight=2, queue=1), asyncio.Event(), []
    holders = [asyncio.create_task(hold(adm, started, release, n)) for n in range(3)]
    await asyncio.sleep(0)
    assert (adm.inflight, adm.queued) == (2, 1)
    t0 = time.perf_counter()
    with pytest.raises(BackendOverloaded) as refused:
        async with adm.slot():
            pass
    assert time.perf_counter() - t0 < 0.05
    response = render("/v1/chat/completions", refused.value)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert b'"overloaded_error"' in response.body and b"'llm'" in response.body
    release.set()
    await asyncio.gather(*holders)
    assert started == [0, 1, 2] and (adm.inflight, adm.queued) == (0, 0)


async def test_queued_requests_are_served_in_arrival_order() -> None:
    adm, release, started = admission(inflight=1, queue=10), asyncio.Event(), []
    holders = []
    for n in range(6):
        holders.append(asyncio.create_task(hold(adm, started, release, n)))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*holders)
    assert started == list(range(6))


async def test_a_request_that_waits_too_long_is_refused_and_leaves_the_queue() -> None:
    adm, release, started = admission(inflight=1, queue=5, timeout_s=0.05), asyncio.Event(), []
    holder = asyncio.create_task(hold(adm, started, release, 0))
    await asyncio.sleep(0)
    with pytest.raises(BackendOverloaded) as refused:
        async with adm.slot():
            pass
    assert "waited 0.05 s" in refused.value.message
    assert adm.queued == 0
    release.set()
    await holder
    async with adm.slot():  # the slot is free again
        assert adm.inflight == 1


async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    adm, release, started = admission(inflight=1, queue=5), asyncio.Event(), []
    first = asyncio.create_task(hold(adm, started, release, 0))
    await asyncio.sleep(0)
    gone = asyncio.create_task(hold(adm, started, release, 1))
    last = asyncio.create_task(hold(adm, started, release, 2))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, last)
    assert started == [0, 2] and (adm.inflight, adm.queued) == (0, 0)


async def test_a_backend_holds_its_slot_until_a_stream_ends() -> None:
    fake = FakeAdapter("llm")
    gate: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    fake.enqueue([b"one", gate], InferResponse({"ok": True}))
    backend = Backend(fake, admission=admission(inflight=1, queue=0))
    stream = backend.stream(InferRequest("chat", "m", {}))
    assert await anext(stream) == b"one"
    with pytest.raises(BackendOverloaded):  # the stream still holds the only slot
        await backend.predict(InferRequest("chat", "m", {}))
    gate.set_result(b"two")
    assert [chunk async for chunk in stream] == [b"two"]
    assert (await backend.predict(InferRequest("chat", "m", {}))).body == {"ok": True}
