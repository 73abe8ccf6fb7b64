"""The load of bench/fairness.py: its plan (keys, phases, capacity arithmetic), keyed streaming
chat completions, closed-loop floods and seeded open-loop arrivals, tallied per API key inside
one measured window.

    tally = Tally()
    await run_phase(url, Phase("flood", [Flood(KEY_A, "flex", 64, 60, 1.31, 20)],
                               Arrivals(KEY_B, 16, rate=5.7, seed=1), ramp_s=2.3), tally)

Each in-flight request has a connection of its own (one `httpx.AsyncClient` holding one
connection, reused by the next request of its worker): a pool shared by many concurrent streams
was seen to hold requests back (/work/shared/ENVIRONMENT.md). TTFT is stamped on the first
non-empty raw body chunk; tokens are the SSE events with content, counted when they arrive, so a
stream that straddles the window counts only its tokens inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.gateway import new_client

MODEL = "fixed-llm"
PROMPT = "Hi"  # short: admission charges prompt characters / 4 + max_tokens (VTC)


@dataclass(frozen=True)
class Key:
    name: str  # as in auth.keys
    secret: str  # what the client sends as its Bearer token


@dataclass(frozen=True)
class Flood:
    """`workers` closed-loop senders of one key, each streaming `tokens`-token completions back
    to back; the first `capacity` start spread over one stream's length (so that slots free
    evenly, as they would after a while of real traffic), the rest right after."""

    key: Key
    tier: str | None  # service_tier sent; None: none (normal)
    tokens: int
    workers: int
    spread_s: float  # one stream's length at the upstream
    capacity: int


@dataclass(frozen=True)
class Arrivals:
    """Open-loop arrivals of one key at `rate` per second, exponential gaps from `seed`."""

    key: Key
    tokens: int
    rate: float
    seed: int


@dataclass(frozen=True)
class Phase:
    name: str
    floods: Sequence[Flood] = ()
    arrivals: Arrivals | None = None
    ramp_s: float = 0.0  # load before the window opens (the floods reach their steady state)
    window_s: float = 30.0


@dataclass
class Window:
    start: float = float("inf")
    end: float = float("inf")

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Tally:
    """What one phase measured, by key name: tokens received inside the window; TTFTs, refusals
    and errors of the requests sent inside it."""

    window: Window = field(default_factory=Window)
    tokens: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # HTTP 503 (or any non-200)
    errors: Counter[str] = field(default_factory=Counter)
    ttfts: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # first byte out to last in
    slots_busy: list[float] = field(default_factory=list)  # the gateway's gauge, sampled
    samples: list[str] = field(default_factory=list)  # a few refusals and errors, for the report

    def note(self, key: str, message: str, *, refused: bool) -> None:
        (self.refused if refused else self.errors)[key] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{key}: {message[:200]}")

    def as_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window.end - self.window.start,
            "tokens": dict(self.tokens),
            "sent": dict(self.sent),
            "refused": dict(self.refused),
            "errors": dict(self.errors),
            "ttfts_s": self.ttfts,
            "latencies_s": self.latencies,
            "slots_busy": self.slots_busy,
            "samples": self.samples,
        }


def chat_body(tokens: int, tier: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stream": True,
    }
    if tier is not None:
        body["service_tier"] = tier
    return body


def keyed_client(url: str, key: Key) -> httpx.AsyncClient:
    client = new_client(url)
    client.headers["Authorization"] = f"Bearer {key.secret}"
    return client


async def stream_once(
    client: httpx.AsyncClient, body: dict[str, Any], key: str, tally: Tally
) -> None:
    """One stream, tallied: its TTFT and outcome if sent inside the window, its content events
    as they arrive inside it."""
    started = time.perf_counter()
    counted = tally.window.holds(started)
    tally.sent[key] += counted
    ttft = None
    pending = b""
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                if counted:
                    tally.note(key, f"HTTP {r.status_code}: {text}", refused=True)
                return
            async for raw in r.aiter_raw():
                if not raw:
                    continue
                now = time.perf_counter()
                ttft = ttft if ttft is not None else now - started
                lines = (pending + raw).split(b"\n")
                pending = lines.pop()
                if tally.window.holds(now):
                    tally.tokens[key] += sum(b'"content"' in line for line in lines)
                if counted and any(line.startswith(b'data: {"error"') for line in lines):
                    tally.note(key, f"error event: {raw[:200]!r}", refused=False)
                    return
    except httpx.HTTPError as exc:
        if counted:
            tally.note(key, f"{type(exc).__name__}: {exc}", refused=False)
        return
    if counted and ttft is not None:
        tally.ttfts.setdefault(key, []).append(ttft)
        tally.latencies.setdefault(key, []).append(time.perf_counter() - started)


async def flood_worker(url: str, flood: Flood, i: int, stop: asyncio.Event, tally: Tally) -> None:
    step = flood.spread_s / flood.capacity
    await asyncio.sleep(min(i, flood.capacity) * step)
    body = chat_body(flood.tokens, flood.tier)
    async with keyed_client(url, flood.key) as client:
        while not stop.is_set():
            await stream_once(client, body, flood.key.name, tally)


async def open_loop(url: str, arrivals: Arrivals, stop: asyncio.Event, tally: Tally) -> None:
    """Seeded Poisson arrivals until `stop`; each request on an idle connection of the key's
    (a new one when all are busy); waits for the requests it sent."""
    rng = random.Random(arrivals.seed)
    body = chat_body(arrivals.tokens, None)
    idle: list[httpx.AsyncClient] = []
    every: list[httpx.AsyncClient] = []
    sent: set[asyncio.Task[None]] = set()

    async def one() -> None:
        if not idle:
            every.append(keyed_client(url, arrivals.key))
            idle.append(every[-1])
        client = idle.pop()
        try:
            await stream_once(client, body, arrivals.key.name, tally)
        finally:
            idle.append(client)

    try:
        due = time.perf_counter()
        while True:
            due += rng.expovariate(arrivals.rate)
            try:  # sleep until the next arrival, or stop
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.perf_counter()))
                break
            except TimeoutError:
                pass
            task = asyncio.create_task(one())
            sent.add(task)
            task.add_done_callback(sent.discard)
        await asyncio.gather(*sent)
    finally:
        await asyncio.gather(*(c.aclose() for c in every), return_exceptions=True)


async def sample_slots(url: str, backend: str, tally: Tally, stop: asyncio.Event) -> None:
    """The gateway's `gateway_admission_inflight` of `backend` every half second inside the
    window: the slots busy, as the admission counts them."""
    prefix = f'gateway_admission_inflight{{backend="{backend}"}} '
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
        while not stop.is_set():
            if tally.window.holds(time.perf_counter()):
                for line in (await client.get("/metrics")).text.splitlines():
                    if line.startswith(prefix):
                        tally.slots_busy.append(float(line.removeprefix(prefix)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def run_phase(url: str, phase: Phase, tally: Tally, *, backend: str = "") -> None:
    """The phase's load: ramp, the measured window, then no new requests and every stream
    already sent finished (so that nothing of it is queued when the next phase starts); with a
    `backend`, its busy slots sampled in the window."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(flood_worker(url, flood, i, stop, tally))
        for flood in phase.floods
        for i in range(flood.workers)
    ]
    if phase.arrivals is not None:
        tasks.append(asyncio.create_task(open_loop(url, phase.arrivals, stop, tally)))
    if backend:
        tasks.append(asyncio.create_task(sample_slots(url, backend, tally, stop)))
    now = time.perf_counter()
    tally.window = Window(now + phase.ramp_s, now + phase.ramp_s + phase.window_s)
    try:
        await asyncio.sleep(phase.ramp_s + phase.window_s)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the plan --------------------------------------------------------------------------------

KEY_A = Key("key-a", "sk-bench-fairness-a")
KEY_B = Key("key-b", "sk-bench-fairness-b")
KEY_C = Key("key-c", "sk-bench-fairness-c")


@dataclass(frozen=True)
class Plan:
    """The run's parameters, from the command line."""

    capacity: int
    prefill_ms: float
    token_ms: float
    b_tokens: int
    b_load: float
    a_tokens: int  # phase 2
    long_tokens: int  # phase 3: key A
    short_tokens: int  # phase 3: key C
    window_s: float
    capacity_window_s: float
    seed: int
    reserved_fraction: float | None

    def stream_s(self, tokens: int) -> float:
        """How long an n-token stream holds its slot at the upstream."""
        return (self.prefill_ms + (tokens - 1) * self.token_ms) / 1000

    def tokens_s(self, tokens: int) -> float:
        """The capacity in tokens/s for n-token requests."""
        return self.capacity * tokens / self.stream_s(tokens)

    def b_rate(self) -> float:
        return self.b_load * self.capacity / self.stream_s(self.b_tokens)

    def phases(self) -> list[Phase]:
        c = self.capacity
        b = Arrivals(KEY_B, self.b_tokens, self.b_rate(), self.seed)

        def flood(key: Key, tier: str | None, tokens: int, workers: int) -> Flood:
            return Flood(key, tier, tokens, workers, self.stream_s(tokens), c)

        ramp2 = self.stream_s(self.a_tokens) + 1
        ramp3 = self.stream_s(self.long_tokens) + 1
        return [
            Phase("capacity", [flood(KEY_A, None, self.a_tokens, 3 * c)], None, ramp2,
                  self.capacity_window_s),
            Phase("baseline", arrivals=b, window_s=self.window_s),
            Phase("low flood", [flood(KEY_A, "flex", self.a_tokens, 3 * c)], b, ramp2,
                  self.window_s),
            Phase("two keys", [flood(KEY_A, None, self.long_tokens, math.ceil(1.5 * c)),
                               flood(KEY_C, None, self.short_tokens, math.ceil(1.5 * c))],
                  None, ramp3, self.window_s),
        ]  # fmt: skip
