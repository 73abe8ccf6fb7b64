"""Rate limits on a real Redis, shared by two RateLimiters as two gateway workers would share them,
and what happens when Redis dies (scripts/system-deps installs redis-server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from gateway.errors import BackendUnavailable, RateLimited
from gateway.scope.keys import ApiKey
from gateway.scope.limiter import PARALLEL_TTL_S, RateLimiter
from settings import RateLimitSettings
from tests.servers.redis import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture
def settings(redis_server: RedisProcess) -> RateLimitSettings:
    redis_server.start()  # a test before may have killed it
    # A prefix of its own: no test sees another's counters.
    return RateLimitSettings(storage=redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def workers(settings: RateLimitSettings) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    a, b = RateLimiter.from_settings(settings), RateLimiter.from_settings(settings)
    yield a, b
    await a.aclose()
    await b.aclose()


def key(
    *, rpm: int | None = None, tpm: int | None = None, max_parallel: int | None = None
) -> ApiKey:
    return ApiKey("alice", "0" * 64, rpm=rpm, tpm=tpm, max_parallel=max_parallel)


def storage_errors() -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_storage_errors_total") or 0.0


async def test_workers_share_rpm(workers: tuple[RateLimiter, RateLimiter]) -> None:
    a, b = workers
    k = key(rpm=4)
    remaining = []
    for worker in (a, b, a, b):
        remaining.append((await worker.admit(k)).headers()["x-ratelimit-remaining-requests"])
    assert remaining == ["3", "2", "1", "0"]
    for worker in (a, b):
        with pytest.raises(RateLimited) as caught:
            await worker.admit(k)
        assert "requests per minute" in caught.value.message
        assert 1 <= int(caught.value.headers["retry-after"]) <= 60


async def test_workers_share_tpm(workers: tuple[RateLimiter, RateLimiter]) -> None:
    a, b = workers
    k = key(tpm=100)
    lease = await a.admit(k)
    await lease.add_tokens(70)
    assert (await b.admit(k)).headers()["x-ratelimit-remaining-tokens"] == "30"
    await lease.add_tokens(500)  # more than is left: counted up to the limit
    with pytest.raises(RateLimited) as caught:
        await b.admit(k)
    assert "tokens per minute" in caught.value.message
    assert caught.value.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_workers_share_max_parallel(
    workers: tuple[RateLimiter, RateLimiter], settings: RateLimitSettings
) -> None:
    a, b = workers
    k = key(max_parallel=2)
    first, second = await a.admit(k), await b.admit(k)
    for worker in (a, b):
        with pytest.raises(RateLimited, match="parallel requests"):
            await worker.admit(k)
    await first.release()
    await first.release()  # idempotent
    third = await b.admit(k)
    with pytest.raises(RateLimited):
        await a.admit(k)

    # The counter expires if its gateway dies with slots held; each admission renews it.
    client = redis.asyncio.Redis.from_url(settings.storage)
    counter = f"{settings.prefix}:parallel:alice"
    assert int(await client.get(counter) or 0) == 2
    assert 0 < await client.ttl(counter) <= PARALLEL_TTL_S
    await second.release()
    await third.release()
    assert await client.exists(counter) == 0  # back to zero: deleted, not left at 0 or below
    await client.aclose()


async def test_redis_down_fails_open_and_counts(
    redis_server: RedisProcess, settings: RateLimitSettings, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter.from_settings(settings)
    k = key(rpm=1, tpm=10, max_parallel=1)
    await (await limiter.admit(k)).release()  # connected, and rpm now used up
    redis_server.kill()
    before = storage_errors()
    started = time.perf_counter()
    for _ in range(3):  # over rpm and max_parallel, were they counted
        lease = await limiter.admit(k)
        await lease.add_tokens(5)
    elapsed = time.perf_counter() - started
    assert storage_errors() - before >= 3
    assert elapsed < 2.0, f"a dead Redis held requests for {elapsed:.2f} s"
    assert sum("Rate-limit storage" in r.getMessage() for r in caplog.records) == 1

    redis_server.start()  # empty again: the limiter reconnects by itself
    assert (await limiter.admit(k)).headers()["x-ratelimit-remaining-requests"] == "0"
    await limiter.aclose()


async def test_redis_down_fails_closed_with_retry_after(
    redis_server: RedisProcess, settings: RateLimitSettings
) -> None:
    limiter = RateLimiter.from_settings(settings.model_copy(update={"fail_open": False}))
    k = key(rpm=10)
    await limiter.admit(k)
    redis_server.kill()
    before = storage_errors()
    with pytest.raises(BackendUnavailable) as caught:
        await limiter.admit(k)
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}
    assert storage_errors() - before == 1
    await limiter.aclose()
