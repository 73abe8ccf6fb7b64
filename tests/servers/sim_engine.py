"""The cost model of one simulated vLLM replica (tests/servers/sim_vllm.py serves it over HTTP).

Its own tokenizer, block hashes and prefix cache, made differently from anything the gateway
does, so that its hit ratio is a measurement of the gateway's picking, never an echo of it:

- **tokens**: the prompt text split on whitespace, each word cut into 4-byte pieces (UTF-8).
  A chat request's text is its messages rendered in order as `<|role|>\\ncontent\\n`, then
  `<|assistant|>\\n`, so a conversation's next turn extends the last turn's tokens.
- **blocks**: 16 tokens; only full blocks are cached. Block i's key is
  `blake2b(key(i-1) + b"\\x00".join(its tokens), digest_size=16)`, a hash chain: a block is a hit
  only when every block before it is too.
- **prefix cache**: an LRU of block keys, `capacity_blocks` of them, per replica. A lookup counts
  the leading blocks present (at most `(prompt_tokens - 1) // 16`, as vLLM always computes the
  last token) and refreshes them; the prompt's full blocks are inserted when its prefill ends.
  vLLM's counters: queried += prompt tokens, hit += hit blocks * 16.
- **prefill**: one at a time, first come first served: a request waits for those ahead of it,
  looks the cache up when its turn comes, then takes `(prompt - hit) / prefill_tokens_per_s`
  seconds. The first token is out when its prefill ends.
- **decode**: after prefill the request joins the running batch; every further token takes
  `token_s * (1 + decoding / batch_k)` seconds, `decoding` being the batch's size (itself
  included) when that token starts.

    engine = Engine(CostModel(prefill_tokens_per_s=5000, token_s=0.02, batch_k=8),
                    capacity_blocks=1024)
    async with engine.admit(tokenize(render_chat(messages)), max_tokens=16) as run:
        await run.prefill()            # queues, looks up, sleeps; run.hit_tokens is known
        async for i in run.decode():   # token 0 at once, then one per token delay
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BLOCK_TOKENS = 16


def render_chat(messages: Iterable[Mapping[str, Any]]) -> str:
    parts = [f"<|{m.get('role', 'user')}|>\n{_text(m.get('content'))}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def tokenize(text: str) -> list[bytes]:
    tokens: list[bytes] = []
    for word in text.split():
        raw = word.encode()
        tokens.extend(raw[i : i + 4] for i in range(0, len(raw), 4))
    return tokens


def block_keys(tokens: Sequence[bytes]) -> list[bytes]:
    """The hash chain of the full blocks."""
    keys: list[bytes] = []
    key = b""
    for start in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        block = b"\x00".join(tokens[start : start + BLOCK_TOKENS])
        key = hashlib.blake2b(key + block, digest_size=16).digest()
        keys.append(key)
    return keys


class PrefixCache:
    """An LRU of block keys."""

    def __init__(self, *, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, keys: Sequence[bytes], limit: int) -> int:
        """Leading blocks present (at most `limit`), refreshed."""
        hits = 0
        for key in keys[:limit]:
            if key not in self._blocks:
                break
            self._blocks.move_to_end(key)
            hits += 1
        return hits

    def insert(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


@dataclass(frozen=True)
class CostModel:
    prefill_tokens_per_s: float
    token_s: float  # a decode step with a batch of one
    batch_k: float  # the batch size at which a step takes twice as long

    def prefill_s(self, uncached_tokens: int) -> float:
        return uncached_tokens / self.prefill_tokens_per_s

    def token_delay_s(self, decoding: int) -> float:
        return self.token_s * (1 + decoding / self.batch_k)


@dataclass
class Counters:
    requests: int = 0
    prompt_tokens: int = 0
    queried_tokens: int = 0
    hit_tokens: int = 0
    output_tokens: int = 0
    prefill_busy_s: float = 0.0
    started: float = field(default_factory=time.monotonic)


class Engine:
    def __init__(
        self,
        cost: CostModel,
        *,
        capacity_blocks: int,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cost = cost
        self.cache = PrefixCache(capacity_blocks=capacity_blocks)
        self.sleep = sleep
        self.clock = clock
        self.counters = Counters(started=clock())  # since the last reset: /stats
        self.totals = Counters(started=clock())  # since the start: /metrics, as vLLM's
        self.waiting = 0  # admitted, prefill not started
        self.prefilling = 0
        self.decoding = 0
        self.held_blocks = 0  # KV blocks of the requests admitted and not finished
        self._prefill_lock = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        self._idle = asyncio.Event()
        self._idle.set()

    def count(self, **deltas: float) -> None:
        for counters in (self.counters, self.totals):
            for name, delta in deltas.items():
                setattr(counters, name, getattr(counters, name) + delta)

    @property
    def active(self) -> int:
        return self.waiting + self.prefilling + self.decoding

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.held_blocks / self.cache.capacity) if self.cache.capacity else 0.0

    @contextlib.asynccontextmanager
    async def admit(self, tokens: Sequence[bytes], *, max_tokens: int) -> AsyncIterator[Run]:
        blocks = math.ceil((len(tokens) + max_tokens) / BLOCK_TOKENS)
        self.held_blocks += blocks
        self.count(requests=1)
        self._idle.clear()
        run = Run(self, tokens, max_tokens)
        try:
            yield run
        finally:
            run.close()
            self.held_blocks -= blocks
            if self.active == 0:
                self._idle.set()

    async def reset(self, timeout_s: float = 60.0) -> None:
        """Empty the cache and the counters once no request is in flight."""
        await asyncio.wait_for(self._idle.wait(), timeout_s)
        self.cache.clear()
        self.counters = Counters(started=self.clock())


class Run:
    """One request's way through the engine: queued, prefilled, decoded."""

    def __init__(self, engine: Engine, tokens: Sequence[bytes], max_tokens: int) -> None:
        self.engine = engine
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.hit_tokens = 0
        self.state = "waiting"
        engine.waiting += 1

    async def prefill(self) -> None:
        engine, n = self.engine, len(self.tokens)
        async with engine._prefill_lock:
            engine.waiting -= 1
            engine.prefilling += 1
            self.state = "prefilling"
            keys = block_keys(self.tokens)
            hit_blocks = engine.cache.lookup(keys, max(0, n - 1) // BLOCK_TOKENS)
            self.hit_tokens = hit_blocks * BLOCK_TOKENS
            engine.count(prompt_tokens=n, queried_tokens=n, hit_tokens=self.hit_tokens)
            seconds = engine.cost.prefill_s(max(1, n - self.hit_tokens))
            began = engine.clock()
            try:
                await engine.sleep(seconds)
            finally:
                engine.count(prefill_busy_s=engine.clock() - began)
                engine.prefilling -= 1
            engine.cache.insert(keys)
        engine.decoding += 1
        self.state = "decoding"

    async def decode(self) -> AsyncIterator[int]:
        """Token indices, each once it is out."""
        engine = self.engine
        for i in range(self.max_tokens):
            if i:
                await engine.sleep(engine.cost.token_delay_s(engine.decoding))
            engine.count(output_tokens=1)
            yield i

    def close(self) -> None:
        if self.state == "waiting":
            self.engine.waiting -= 1
        elif self.state == "decoding":
            self.engine.decoding -= 1
        self.state = "done"
