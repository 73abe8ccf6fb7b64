"""runners/batching.py against BentoML's real dispatcher: after a burst, a lone request is held
no longer than max_hold_ms (without the cap, about as long as requests queued in the burst)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from runners import batching

BATCH_S = 0.02  # each batch "runs" this long


async def after_a_burst() -> tuple[float, float]:
    """(the optimizer's learned hold, the latency of one lone request), after bursts of 80
    concurrent requests at max batch 4: each burst's requests queue behind running batches."""
    dispatcher = CorkDispatcher(
        max_latency_in_ms=60_000, max_batch_size=4, fallback=lambda: None,
        get_batch_size=lambda _: 1,
    )  # fmt: skip

    async def run(batch: Sequence[int]) -> list[int]:
        await asyncio.sleep(BATCH_S)
        return list(batch)

    call = dispatcher(run)
    try:
        for _ in range(3):  # past the dispatcher's training batches (their waits count as 0)
            assert await asyncio.gather(*(call(i) for i in range(80))) == list(range(80))
        dispatcher.optimizer.trigger_refresh()
        start = time.perf_counter()
        assert await call(7) == 7
        return dispatcher.optimizer.wait, time.perf_counter() - start
    finally:
        dispatcher.shutdown()


def test_a_lone_request_after_a_burst_is_held_at_most_max_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Optimizer, "trigger_refresh", Optimizer.trigger_refresh)  # restored after
    learned, uncapped = asyncio.run(after_a_burst())
    assert learned > 4 * BATCH_S  # BentoML's own: the burst's queueing became the hold
    assert uncapped > learned * 0.8

    batching.cap_batch_hold(10)
    capped_hold, capped = asyncio.run(after_a_burst())
    assert capped_hold == pytest.approx(0.010)
    assert capped < BATCH_S + 0.010 + 0.1 < uncapped  # hold + the batch + scheduling slack


def test_no_hold_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Optimizer, "trigger_refresh", Optimizer.trigger_refresh)
    batching.cap_batch_hold(0)
    hold, _ = asyncio.run(after_a_burst())
    assert hold == 0.0
