"""Per-key rate limits: requests and tokens per minute, and requests in flight.

    limiter = RateLimiter.from_settings(settings.ratelimit)  # memory:// or redis://host:port/db
    lease = await limiter.admit(key)       # RateLimited (429) when the key is over a limit
    try:
        response = await call()
        await lease.add_tokens(usage.total_tokens)   # counted against tpm once known
    finally:
        await lease.release()                        # frees the parallel slot; idempotent
    response.headers.update(lease.headers())         # x-ratelimit-{limit,remaining,reset}-*
    ...
    await limiter.aclose()

`admit` checks, in this order, `max_parallel` (requests in flight), `rpm` (requests in the last
minute) and `tpm` (refused once the tokens counted in the last minute reach it: a request's own
tokens are known only when it finishes); only an admitted request is counted against rpm. A
refusal carries Retry-After and OpenAI's x-ratelimit-* headers for the limits the key has; both
say when the window next frees room, as `limits` reports it. Keys without limits get a shared
no-op lease that touches no storage. Storage and logs see a key's name, never the key.

The per-minute windows are `limits`' sliding-window counters (SlidingWindowCounterRateLimiter):
constant memory and one Redis round trip per operation, and unlike a fixed window they let no
burst of twice the limit through at a window's edge. (The moving window keeps one entry per
counted unit: one per token for tpm.) A sliding-window counter refuses, and counts nothing of,
a cost over what is left, so `add_tokens` then counts what is left: the window is full until it
slides on.

`limits` has no concurrency limit, so `max_parallel` is a counter of this module's: a dict in
memory, an INCR/DECR of ``<prefix>:parallel:<name>`` in Redis (on the same Redis as the windows).
Each admitted acquire refreshes that key's expiry to PARALLEL_TTL_S (15 minutes), so the slots of
a gateway that crashed free up once the key has had no admitted request for that long.

When the storage fails (Redis down or unreachable; socket timeouts are SOCKET_TIMEOUT_S, with no
retries, so a dead Redis cannot stall a request), `fail_open` lets the request through unchecked
and `fail_open: false` answers 503 with Retry-After. Either way the failure counts on
`gateway_ratelimit_storage_errors_total` and one WARNING is logged per burst (at most one per
WARN_EVERY_S). Counting after the fact (`add_tokens`, `release`) never raises.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from prometheus_client import Counter

if TYPE_CHECKING:
    import redis.asyncio

from gateway.errors import BackendUnavailable, RateLimited
from gateway.scope.keys import ApiKey
from settings import RateLimitSettings

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 0.25  # connect and each command; loopback or same-zone Redis answers in < 1 ms
# Longer than the gateway's default 600 s request timeout, so a slow request's slot does not
# expire under it while its key is quiet.
PARALLEL_TTL_S = 900
WARN_EVERY_S = 10.0
BASE_FAILURES: tuple[type[BaseException], ...] = (StorageError, OSError, TimeoutError)


def storage_failures() -> tuple[type[BaseException], ...]:
    """What a failing storage raises: redis-py's errors too once redis is loaded (it is imported
    only for a Redis storage: it would cost the gateway's import 0.4 s)."""
    exceptions = sys.modules.get("redis.exceptions")
    return BASE_FAILURES if exceptions is None else (*BASE_FAILURES, exceptions.RedisError)


STORAGE_ERRORS = Counter(
    "gateway_ratelimit_storage_errors",
    "Rate-limit storage operations that failed (storage down or unreachable).",
)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: 12ms, 1s, 8.64s, 6m0s."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Window:
    """A per-minute limit as last read: its limit, what is left, and when it frees (epoch s)."""

    limit: int
    remaining: int
    reset_at: float

    def headers(self, kind: str, now: float, used: int = 0) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, self.remaining - used)),
            f"x-ratelimit-reset-{kind}": format_reset(self.reset_at - now),
        }

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.reset_at - now))


class Lease:
    """An admitted request: its x-ratelimit-* headers, its tokens, its parallel slot."""

    def __init__(self, limiter: RateLimiter, key: ApiKey) -> None:
        self._limiter = limiter
        self._key = key
        self.requests: Window | None = None  # None: no rpm, or not read (storage failed)
        self.tokens: Window | None = None
        self.tokens_added = 0
        self.holds_slot = False

    def headers(self) -> dict[str, str]:
        now = time.time()
        headers: dict[str, str] = {}
        if self.requests is not None:
            headers.update(self.requests.headers("requests", now))
        if self.tokens is not None:
            headers.update(self.tokens.headers("tokens", now, used=self.tokens_added))
        return headers

    async def add_tokens(self, n: int) -> None:
        """Count `n` tokens (prompt + completion) against the key's tpm."""
        if n > 0 and self._key.tpm is not None:
            self.tokens_added += n
            await self._limiter._count_tokens(self._key, self._key.tpm, n)

    async def release(self) -> None:
        """Free the parallel slot, if the lease holds one. Idempotent."""
        if self.holds_slot:
            self.holds_slot = False
            await self._limiter._release_slot(self._key)


class _NoLimits(Lease):
    """The lease of every key without limits: touches no storage."""

    def __init__(self) -> None:
        self.requests = self.tokens = None
        self.tokens_added = 0
        self.holds_slot = False

    def headers(self) -> dict[str, str]:
        return {}

    async def add_tokens(self, n: int) -> None:
        return None

    async def release(self) -> None:
        return None


NO_LIMITS: Lease = _NoLimits()


class Slots(Protocol):
    """Requests in flight per key name."""

    async def acquire(self, name: str, limit: int) -> bool: ...
    async def release(self, name: str) -> None: ...
    async def aclose(self) -> None: ...


class MemorySlots:
    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    async def acquire(self, name: str, limit: int) -> bool:
        count = self.in_flight.get(name, 0)
        if count >= limit:
            return False
        self.in_flight[name] = count + 1
        return True

    async def release(self, name: str) -> None:
        count = self.in_flight.pop(name, 0) - 1
        if count > 0:
            self.in_flight[name] = count

    async def aclose(self) -> None:
        self.in_flight.clear()


# KEYS[1]: the counter; ARGV[1]: the limit; ARGV[2]: its TTL. A refused acquire leaves the TTL
# alone, so slots leaked by a crash free up even while the key keeps retrying.
_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""
# A counter that expired under a live request would go negative: it is deleted at 0 instead.
_RELEASE = """
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
"""


class RedisSlots:
    def __init__(
        self, pool: redis.asyncio.ConnectionPool, prefix: str, ttl_s: int = PARALLEL_TTL_S
    ) -> None:
        self._pool = pool
        import redis.asyncio

        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)

    def key(self, name: str) -> str:
        return f"{self._prefix}:parallel:{name}"

    async def acquire(self, name: str, limit: int) -> bool:
        return bool(await self._acquire(keys=[self.key(name)], args=[limit, self._ttl_s]))

    async def release(self, name: str) -> None:
        await self._release(keys=[self.key(name)])

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()


class RateLimiter:
    def __init__(
        self,
        storage: Storage,
        slots: Slots,
        *,
        fail_open: bool = True,
        storage_name: str = "memory://",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._windows = SlidingWindowCounterRateLimiter(storage)
        self._slots = slots
        self.fail_open = fail_open
        self.storage_name = storage_name  # for logs: the URL without credentials
        self._clock = clock
        self._warned_at: float | None = None
        self._failures_since_warning = 0
        self._items: dict[int, RateLimitItem] = {}

    @classmethod
    def from_settings(cls, settings: RateLimitSettings) -> RateLimiter:
        url = settings.storage
        if url.startswith("memory://"):
            return cls(MemoryStorage(), MemorySlots(), fail_open=settings.fail_open)
        # One pool for limits' scripts and the slot counter; no retries, short timeouts.
        import redis.asyncio
        from limits.aio.storage import RedisStorage
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = redis.asyncio.ConnectionPool.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        storage = RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=f"{settings.prefix}:ratelimit",
            connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis.asyncio.Redis
        )
        return cls(
            storage,
            RedisSlots(pool, settings.prefix),
            fail_open=settings.fail_open,
            storage_name=_without_credentials(url),
        )

    async def admit(self, key: ApiKey) -> Lease:
        """A lease for one request of `key`; raises RateLimited (429) when over a limit."""
        if key.rpm is None and key.tpm is None and key.max_parallel is None:
            return NO_LIMITS
        lease = Lease(self, key)
        try:
            await self._admit(key, lease)
        except storage_failures() as exc:
            self._storage_failed(exc)
            if not self.fail_open:
                await lease.release()
                raise BackendUnavailable(
                    "ratelimit",
                    "the rate-limit storage cannot be reached; retry shortly",
                    headers={"Retry-After": "1"},
                ) from None
        except BaseException:  # RateLimited, or the request was cancelled
            await lease.release()
            raise
        return lease

    async def aclose(self) -> None:
        await self._slots.aclose()

    async def _admit(self, key: ApiKey, lease: Lease) -> None:
        # Read first (a refusal carries every limit's headers), check in order, then count.
        if key.max_parallel is not None:
            lease.holds_slot = await self._slots.acquire(key.name, key.max_parallel)
        if key.rpm is not None:
            lease.requests = await self._window(self._item(key.rpm), "rpm", key.name)
        if key.tpm is not None:
            lease.tokens = await self._window(self._item(key.tpm), "tpm", key.name)

        requests, tokens = lease.requests, lease.tokens
        if key.max_parallel is not None and not lease.holds_slot:
            await self._refuse(key, lease, "parallel requests", key.max_parallel)
        if requests is not None and requests.remaining <= 0:
            await self._refuse(key, lease, "requests per minute", requests.limit, requests)
        if tokens is not None and tokens.remaining <= 0:
            await self._refuse(key, lease, "tokens per minute", tokens.limit, tokens)
        if requests is not None:
            if not await self._windows.hit(self._item(requests.limit), "rpm", key.name):
                requests.remaining = 0  # another worker took the last one meanwhile
                await self._refuse(key, lease, "requests per minute", requests.limit, requests)
            requests.remaining -= 1

    async def _refuse(
        self, key: ApiKey, lease: Lease, what: str, limit: int, window: Window | None = None
    ) -> NoReturn:
        now = time.time()
        if window is None:  # parallel: a slot frees when one of the key's requests finishes
            retry_after, when = 1, "when one of its requests has finished"
        else:
            retry_after = window.retry_after(now)
            when = f"in {retry_after} s"
        raise RateLimited(
            f"Rate limit reached for API key '{key.name}' on {what}: limit {limit}. "
            f"Try again {when}.",
            headers={"retry-after": str(retry_after), **lease.headers()},
        )

    async def _window(self, item: RateLimitItem, *identifiers: str) -> Window:
        stats = await self._windows.get_window_stats(item, *identifiers)
        return Window(item.amount, stats.remaining, stats.reset_time)

    def _item(self, amount: int) -> RateLimitItem:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = RateLimitItemPerMinute(amount)
        return item

    async def _count_tokens(self, key: ApiKey, tpm: int, n: int) -> None:
        item = self._item(tpm)
        try:
            if not await self._windows.hit(item, "tpm", key.name, cost=n):
                # Refused, so nothing counted: count what the window has left instead.
                left = (await self._windows.get_window_stats(item, "tpm", key.name)).remaining
                if left > 0:
                    await self._windows.hit(item, "tpm", key.name, cost=left)
        except storage_failures() as exc:
            self._storage_failed(exc)

    async def _release_slot(self, key: ApiKey) -> None:
        try:
            await self._slots.release(key.name)
        except storage_failures() as exc:
            self._storage_failed(exc)

    def _storage_failed(self, exc: BaseException) -> None:
        STORAGE_ERRORS.inc()
        self._failures_since_warning += 1
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        count = self._failures_since_warning
        log.warning(
            "Rate-limit storage %s failed: %s: %s; %s%s",
            self.storage_name,
            type(exc).__name__,
            exc,
            "requests go on unchecked (fail_open)"
            if self.fail_open
            else "requests are refused with 503 (fail_open: false)",
            f" ({count} failures since the last warning)" if count > 1 else "",
        )
        self._warned_at = now
        self._failures_since_warning = 0


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="").geturl()  # ?password= is possible too
