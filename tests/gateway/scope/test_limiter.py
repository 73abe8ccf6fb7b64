"""Per-key rate limits on limits' memory storage (no server; tests/integration has Redis).

limits reads the wall clock itself, so nothing here waits for a window to slide: the tests
check what is counted and refused, and the headers' values, within one window.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from limits.aio.storage import MemoryStorage
from prometheus_client import REGISTRY

from gateway.errors import BackendUnavailable, RateLimited
from gateway.scope.keys import ApiKey
from gateway.scope.limiter import NO_LIMITS, MemorySlots, RateLimiter, format_reset
from settings import RateLimitSettings
from tests.servers.process import free_port

RESET = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def key(
    name: str = "alice",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    max_parallel: int | None = None,
) -> ApiKey:
    return ApiKey(name, "0" * 64, rpm=rpm, tpm=tpm, max_parallel=max_parallel)


def storage_errors() -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_storage_errors_total") or 0.0


@pytest.fixture
async def limiter() -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter.from_settings(RateLimitSettings())
    yield limiter
    await limiter.aclose()


async def refused(limiter: RateLimiter, k: ApiKey) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(k)
    return caught.value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.012, "12ms"), (0.9994, "1s"), (1, "1s"), (8.64, "8.64s"), (59.5, "59.5s"),
     (360, "6m0s"), (90.25, "1m30.25s"), (3600, "1h0m0s"), (-3, "0ms")],
)  # fmt: skip
def test_format_reset_writes_durations_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


async def test_a_key_without_limits_gets_the_shared_no_op_lease() -> None:
    # Storage that fails on every use: a key without limits must never reach it.
    limiter = RateLimiter(BrokenStorage(), BrokenSlots(), fail_open=False)
    before = storage_errors()
    lease = await limiter.admit(key())
    assert lease is NO_LIMITS
    assert lease.headers() == {}
    await lease.add_tokens(1000)
    await lease.release()
    assert storage_errors() == before


async def test_rpm_counts_admitted_requests_and_refuses_past_the_limit(
    limiter: RateLimiter,
) -> None:
    k = key(rpm=3)
    remaining = []
    for _ in range(3):
        lease = await limiter.admit(k)
        headers = lease.headers()
        remaining.append(headers["x-ratelimit-remaining-requests"])
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert RESET.match(headers["x-ratelimit-reset-requests"])
        assert not any("tokens" in name for name in headers)  # the key has no tpm
    assert remaining == ["2", "1", "0"]

    error = await refused(limiter, k)
    assert error.status == 429
    assert "requests per minute" in error.message
    assert "'alice'" in error.message and "limit 3" in error.message
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    assert f"in {error.headers['retry-after']} s" in error.message
    # Another key's window is its own.
    assert (await limiter.admit(key("bob", rpm=3))).headers()[
        "x-ratelimit-remaining-requests"
    ] == "2"


async def test_tpm_counts_tokens_after_the_fact_and_refuses_once_reached(
    limiter: RateLimiter,
) -> None:
    k = key(tpm=100)
    lease = await limiter.admit(k)
    assert lease.headers()["x-ratelimit-remaining-tokens"] == "100"
    await lease.add_tokens(60)
    assert lease.headers()["x-ratelimit-remaining-tokens"] == "40"
    assert lease.headers()["x-ratelimit-limit-tokens"] == "100"

    second = await limiter.admit(k)  # 40 left: admitted, its size is unknown until it ends
    assert second.headers()["x-ratelimit-remaining-tokens"] == "40"
    await second.add_tokens(60)  # more than is left: counted up to the limit

    error = await refused(limiter, k)
    assert "tokens per minute" in error.message and "limit 100" in error.message
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["x-ratelimit-limit-tokens"] == "100"
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert not any("requests" in name for name in error.headers)  # the key has no rpm


async def test_tokens_over_the_whole_limit_still_fill_the_window(limiter: RateLimiter) -> None:
    k = key(tpm=100)
    lease = await limiter.admit(k)
    await lease.add_tokens(5000)  # limits refuses a cost over the limit and counts nothing
    assert lease.headers()["x-ratelimit-remaining-tokens"] == "0"
    await refused(limiter, k)


async def test_zero_tokens_count_nothing(limiter: RateLimiter) -> None:
    k = key(tpm=10)
    lease = await limiter.admit(k)
    await lease.add_tokens(0)
    assert (await limiter.admit(k)).headers()["x-ratelimit-remaining-tokens"] == "10"


async def test_max_parallel_counts_requests_in_flight(limiter: RateLimiter) -> None:
    k = key(max_parallel=2)
    first, second = await limiter.admit(k), await limiter.admit(k)
    error = await refused(limiter, k)
    assert "parallel requests" in error.message and "limit 2" in error.message
    assert error.headers == {"retry-after": "1"}  # no per-minute limits: no x-ratelimit-*
    assert first.headers() == {}

    await first.release()
    await first.release()  # idempotent: frees one slot, not two
    third = await limiter.admit(k)
    await refused(limiter, k)
    await second.release()
    await third.release()
    for _ in range(2):  # both slots are free again, and only two
        await limiter.admit(k)
    await refused(limiter, k)


async def test_concurrent_admits_get_exactly_max_parallel_slots(limiter: RateLimiter) -> None:
    results = await asyncio.gather(
        *(limiter.admit(key(max_parallel=3)) for _ in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))


async def test_limits_are_checked_parallel_then_rpm_then_tpm(limiter: RateLimiter) -> None:
    k = key(max_parallel=1, rpm=1, tpm=10)
    held = await limiter.admit(k)
    await held.add_tokens(10)  # now over all three
    error = await refused(limiter, k)
    assert "parallel requests" in error.message
    # A refusal carries the trios of every per-minute limit the key has.
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    await held.release()
    assert "requests per minute" in (await refused(limiter, k)).message


async def test_tpm_is_checked_when_rpm_has_room_and_refusals_cost_no_request(
    limiter: RateLimiter,
) -> None:
    k = key(rpm=5, tpm=10)
    lease = await limiter.admit(k)
    await lease.add_tokens(10)
    for _ in range(3):
        error = await refused(limiter, k)
        assert "tokens per minute" in error.message
        assert error.headers["x-ratelimit-remaining-requests"] == "4"  # only the admitted one


async def test_a_refusal_frees_the_slot_it_took() -> None:
    slots = MemorySlots()
    limiter = RateLimiter(MemoryStorage(), slots)
    k = key(max_parallel=5, rpm=1)
    await (await limiter.admit(k)).release()
    for _ in range(3):
        await refused(limiter, k)  # by rpm, after a slot was taken
    assert slots.in_flight == {}


async def test_a_cancelled_admit_frees_its_slot() -> None:
    slots = MemorySlots()

    class SlowStorage(MemoryStorage):
        async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
            await asyncio.sleep(10)
            raise AssertionError("not cancelled")

    limiter = RateLimiter(SlowStorage(), slots)
    task = asyncio.create_task(limiter.admit(key(max_parallel=1, rpm=10)))
    await asyncio.sleep(0.01)
    assert slots.in_flight == {"alice": 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.in_flight == {}


# --- the storage fails -----------------------------------------------------------------------


class BrokenStorage(MemoryStorage):
    """limits' memory storage with every window operation failing like a dead Redis."""

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        raise redis.exceptions.ConnectionError("Connection refused")

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        raise redis.exceptions.ConnectionError("Connection refused")


class BrokenSlots(MemorySlots):
    async def acquire(self, name: str, limit: int) -> bool:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    async def release(self, name: str) -> None:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_fail_open_lets_requests_through_counts_and_warns_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = RateLimiter(BrokenStorage(), BrokenSlots(), storage_name="redis://h:1/0", clock=clock)
    k = key(rpm=1, tpm=1, max_parallel=1)
    before = storage_errors()
    with caplog.at_level(logging.WARNING, logger="gateway.scope.limiter"):
        leases = [await limiter.admit(k) for _ in range(5)]  # over every limit, if counted
        for lease in leases:
            assert lease.headers() == {}  # nothing could be read
            await lease.add_tokens(10)  # never raises
            await lease.release()
        assert storage_errors() - before == 10  # 5 admits + 5 add_tokens (no slot was taken)
        assert len(caplog.records) == 1
        clock.now += 10.0
        await limiter.admit(k)
        assert len(caplog.records) == 2
    first, second = (r.getMessage() for r in caplog.records)
    assert "redis://h:1/0" in first and "TimeoutError" in first and "fail_open" in first
    assert "failures since" not in first
    assert "(10 failures since the last warning)" in second


async def test_fail_closed_answers_503_with_retry_after() -> None:
    slots = MemorySlots()
    limiter = RateLimiter(BrokenStorage(), slots, fail_open=False)
    before = storage_errors()
    with pytest.raises(BackendUnavailable) as caught:
        await limiter.admit(key(rpm=10, max_parallel=1))
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}
    assert caught.value.backend == "ratelimit"
    assert storage_errors() - before == 1
    assert slots.in_flight == {}  # the slot it took was given back


async def test_fail_open_keeps_the_slot_it_took_until_release() -> None:
    slots = MemorySlots()
    limiter = RateLimiter(BrokenStorage(), slots)
    lease = await limiter.admit(key(rpm=10, max_parallel=1))
    assert slots.in_flight == {"alice": 1}
    await lease.release()
    assert slots.in_flight == {}


async def test_unreachable_redis_fails_open_at_once() -> None:
    settings = RateLimitSettings(storage=f"redis://127.0.0.1:{free_port()}/0")
    limiter = RateLimiter.from_settings(settings)
    before = storage_errors()
    started = time.perf_counter()
    lease = await limiter.admit(key(rpm=10, tpm=10, max_parallel=1))
    await lease.add_tokens(5)
    await lease.release()
    assert time.perf_counter() - started < 1.0
    assert storage_errors() - before >= 2
    await limiter.aclose()

    closed = RateLimiter.from_settings(settings.model_copy(update={"fail_open": False}))
    with pytest.raises(BackendUnavailable):
        await closed.admit(key(rpm=10))
    await closed.aclose()


def test_storage_urls_are_logged_without_credentials() -> None:
    for url in ("redis://u:hunter2@db:6380/2", "redis://db:6380/2?password=hunter2"):
        limiter = RateLimiter.from_settings(RateLimitSettings(storage=url))
        assert limiter.storage_name == "redis://db:6380/2"
