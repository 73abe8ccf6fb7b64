"""bench/fleet.py's load: sessions replayed open-loop against one URL, streams timed.

Each session starts at its own time after the window opens, whatever else is in flight (open
loop); a conversation's next turn goes out its think time after the last reply. Every request
takes an idle client from a free list, or makes one, each an `httpx.AsyncClient` holding one
connection (a shared httpx pool was seen to hold queued requests back: /work/shared/ENVIRONMENT.md).
Per request: time to first token, stamped on the first raw body chunk that carries an SSE event
(`aiter_raw`); output tokens, from the usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.fleet_workloads import Session, messages

MODEL = "fleet-llm"
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
SSL = ssl.create_default_context()  # every client is plain HTTP; one context for all


@dataclass
class Load:
    """What the client saw in one window."""

    ttfts: list[float] = field(default_factory=list)
    output_tokens: int = 0
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0  # from the window's opening to the last reply

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(message[:300])


@dataclass(frozen=True)
class Reply:
    ttft: float
    text: str
    output_tokens: int
    error: str = ""


class Clients:
    """Single-connection clients, reused most recently released first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.idle: list[httpx.AsyncClient] = []
        self.all: list[httpx.AsyncClient] = []

    def take(self) -> httpx.AsyncClient:
        if self.idle:
            return self.idle.pop()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        client = httpx.AsyncClient(base_url=self.url, limits=limits, timeout=TIMEOUT,
                                   trust_env=False, verify=SSL)  # fmt: skip
        self.all.append(client)
        return client

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.all), return_exceptions=True)


def body(session: Session, turn: int, replies: list[str], max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": messages(session, turn, replies),
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": session.user,
    }


async def stream(client: httpx.AsyncClient, payload: dict[str, Any]) -> Reply:
    started = time.perf_counter()
    ttft, pending, text, tokens, done = 0.0, b"", [], 0, False
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            return Reply(0.0, "", 0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for raw in r.aiter_raw():
            if not ttft and b"data: " in raw:
                ttft = time.perf_counter() - started
            lines = (pending + raw).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Reply(ttft, "", tokens, f"error event: {line[:200]!r}")
                for choice in event.get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or "")
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
    if not done:
        return Reply(ttft, "", tokens, "stream ended without [DONE]")
    return Reply(ttft, "".join(text), tokens)


async def replay(url: str, sessions: list[Session], *, max_tokens: int) -> Load:
    """Every session, each from its start time; returns once the last reply is in."""
    load, clients = Load(), Clients(url)
    opened = time.perf_counter()

    async def run(session: Session) -> None:
        await asyncio.sleep(max(0.0, session.at - (time.perf_counter() - opened)))
        replies: list[str] = []
        for turn in range(len(session.turns)):
            if turn:
                await asyncio.sleep(session.thinks[turn - 1])
            client = clients.take()
            load.requests += 1
            try:
                reply = await stream(client, body(session, turn, replies, max_tokens))
            except (httpx.HTTPError, ValueError) as exc:
                reply = Reply(0.0, "", 0, f"{type(exc).__name__}: {exc}")
            clients.idle.append(client)
            load.output_tokens += reply.output_tokens
            if reply.error:
                load.error(reply.error)
                return  # a conversation stops at its first failed turn
            load.ttfts.append(reply.ttft)
            replies.append(reply.text)

    try:
        await asyncio.gather(*(run(s) for s in sessions))
    finally:
        load.seconds = time.perf_counter() - opened
        await clients.aclose()
    return load
