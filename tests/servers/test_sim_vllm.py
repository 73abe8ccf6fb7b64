"""The simulated vLLM replica's cost model and cache, driven in process: its HTTP handler on
in-memory streams, its engine with a fake sleep (no server, no subprocess, no waiting)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.servers.sim_engine import BLOCK_TOKENS, CostModel, Engine, render_chat, tokenize
from tests.servers.sim_vllm import SimVLLM

RATE = 1000.0  # prefill tokens/s
COST = CostModel(prefill_tokens_per_s=RATE, token_s=0.01, batch_k=4)
SYSTEM = " ".join(f"rule{i} applies to everything" for i in range(60))  # ~240 tokens


class RecordingSleep:
    """Returns at once; remembers what it was asked to sleep, and keeps a clock of it."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 0.0

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds


class HeldSleep:
    """Each sleep waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.calls.append((seconds, done))
        await done


class Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def call(sim: SimVLLM, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request through the replica's handler; the status and the (de-chunked) body."""
    payload = json.dumps(body).encode() if body is not None else b""
    reader = asyncio.StreamReader()
    reader.feed_data(
        f"{method} {path} HTTP/1.1\r\nhost: sim\r\ncontent-length: {len(payload)}\r\n"
        f"connection: close\r\n\r\n".encode()
        + payload
    )
    reader.feed_eof()
    writer = Writer()
    await sim.handle(reader, writer)  # type: ignore[arg-type]
    head, _, rest = bytes(writer.data).partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" not in head:
        return status, rest
    body_out = b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        body_out, rest = body_out + rest[:n], rest[n + 2 :]
    return status, body_out


def chat(user: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "sim",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "max_tokens": 3,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def prompt_tokens(body: dict[str, Any]) -> list[bytes]:
    return tokenize(render_chat(body["messages"]))


def shared_blocks(a: list[bytes], b: list[bytes]) -> int:
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common // BLOCK_TOKENS


def sim(sleep: Any, capacity_blocks: int = 1000) -> SimVLLM:
    engine = Engine(COST, capacity_blocks=capacity_blocks, sleep=sleep, clock=lambda: 0.0)
    return SimVLLM(engine, model="sim", max_tokens=8)


async def test_a_repeated_prefix_hits_the_cache_by_its_full_blocks() -> None:
    replica = sim(RecordingSleep())
    first, second = chat("what is the first rule?"), chat("and what about rule seven?")
    _, answer = await call(replica, "POST", "/v1/chat/completions", first)
    assert json.loads(answer)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    _, answer = await call(replica, "POST", "/v1/chat/completions", second)

    expected = shared_blocks(prompt_tokens(first), prompt_tokens(second)) * BLOCK_TOKENS
    assert expected >= 200  # the system prompt's blocks, not the user turns'
    usage = json.loads(answer)["usage"]
    assert usage["prompt_tokens"] == len(prompt_tokens(second))
    assert usage["prompt_tokens_details"]["cached_tokens"] == expected
    _, stats = await call(replica, "GET", "/stats")
    assert json.loads(stats)["prefix_cache_hit_tokens"] == expected


async def test_an_identical_prompt_still_computes_its_last_token() -> None:
    replica = sim(RecordingSleep())
    body = chat("the same question")
    await call(replica, "POST", "/v1/chat/completions", body)
    _, answer = await call(replica, "POST", "/v1/chat/completions", body)
    n = len(prompt_tokens(body))
    cached = json.loads(answer)["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (n - 1) // BLOCK_TOKENS * BLOCK_TOKENS


async def test_prefill_time_is_the_uncached_tokens_over_the_rate() -> None:
    sleep = RecordingSleep()
    replica = sim(sleep)
    first, second = chat("one question"), chat("another question entirely")
    await call(replica, "POST", "/v1/chat/completions", first)
    cold_prefill, *decode = sleep.calls
    sleep.calls.clear()
    await call(replica, "POST", "/v1/chat/completions", second)

    n1, n2 = len(prompt_tokens(first)), len(prompt_tokens(second))
    hit = shared_blocks(prompt_tokens(first), prompt_tokens(second)) * BLOCK_TOKENS
    assert cold_prefill == pytest.approx(n1 / RATE)
    assert sleep.calls[0] == pytest.approx((n2 - hit) / RATE)
    assert sleep.calls[0] < cold_prefill / 4
    # 3 tokens: the first when the prefill ends, two more at token_s * (1 + batch / k), batch 1
    assert decode == pytest.approx([0.01 * (1 + 1 / 4)] * 2)


async def test_an_evicted_prefix_misses() -> None:
    replica = sim(RecordingSleep(), capacity_blocks=4)  # smaller than one prompt
    body = chat("a question")
    await call(replica, "POST", "/v1/chat/completions", body)
    _, answer = await call(replica, "POST", "/v1/chat/completions", body)
    assert json.loads(answer)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_prefills_run_one_at_a_time_in_arrival_order() -> None:
    sleep = HeldSleep()
    replica = sim(sleep)
    first = asyncio.create_task(call(replica, "POST", "/v1/chat/completions", chat("first")))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(call(replica, "POST", "/v1/chat/completions", chat("second")))
    await asyncio.sleep(0.01)

    assert len(sleep.calls) == 1  # the second waits for the first's prefill
    _, metrics = await call(replica, "GET", "/metrics")
    assert _sample(metrics, "vllm:num_requests_waiting") == 1.0
    assert _sample(metrics, "vllm:num_requests_running") == 1.0

    while not (first.done() and second.done()):
        for _, done in sleep.calls:
            if not done.done():
                done.set_result(None)
        await asyncio.sleep(0)
    # the second's prefill came after the first's, and hit the system prompt the first cached
    hit = shared_blocks(prompt_tokens(chat("first")), prompt_tokens(chat("second")))
    expected = (len(prompt_tokens(chat("second"))) - hit * BLOCK_TOKENS) / RATE
    later = [seconds for seconds, _ in sleep.calls[1:]]
    assert any(seconds == pytest.approx(expected) for seconds in later), later


async def test_streams_carry_usage_and_done() -> None:
    replica = sim(RecordingSleep())
    status, body = await call(replica, "POST", "/v1/chat/completions", chat("hi", stream=True))
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:-1]] == ["tok "] * 3
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_metrics_use_vllms_names_with_the_model_label() -> None:
    replica = sim(RecordingSleep())
    await call(replica, "POST", "/v1/chat/completions", chat("one"))
    await call(replica, "POST", "/v1/chat/completions", chat("two"))
    status, metrics = await call(replica, "GET", "/metrics")
    assert status == 200
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total"):  # fmt: skip
        assert re.search(rf'^{name}{{[^}}]*model_name="sim"[^}}]*}} ', metrics.decode(), re.M)
    queried = len(prompt_tokens(chat("one"))) + len(prompt_tokens(chat("two")))
    assert _sample(metrics, "vllm:prefix_cache_queries_total") == queried
    hits = shared_blocks(prompt_tokens(chat("one")), prompt_tokens(chat("two"))) * BLOCK_TOKENS
    assert _sample(metrics, "vllm:prefix_cache_hits_total") == hits


async def test_reset_empties_the_cache_and_the_stats() -> None:
    replica = sim(RecordingSleep())
    body = chat("again")
    await call(replica, "POST", "/v1/chat/completions", body)
    await call(replica, "POST", "/reset")
    _, answer = await call(replica, "POST", "/v1/chat/completions", body)
    assert json.loads(answer)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _, stats = await call(replica, "GET", "/stats")
    assert json.loads(stats)["requests"] == 1


def _sample(metrics: bytes, name: str) -> float:
    match = re.search(rf"^{name}{{[^}}]*}} (\S+)$", metrics.decode(), re.M)
    assert match, name
    return float(match.group(1))


async def test_adapters_are_listed_and_a_missing_one_costs_a_load() -> None:
    from tests.servers.sim_vllm import AdapterSlots

    slots = AdapterSlots(["sim-lora0", "sim-lora1", "sim-lora2"], max_loras=2, load_s=0.0)
    replica = SimVLLM(
        Engine(COST, capacity_blocks=100, sleep=RecordingSleep(), clock=lambda: 0.0),
        model="sim",
        max_tokens=2,
        adapters=slots,
    )
    status, body = await call(replica, "GET", "/v1/models")
    cards = {m["id"]: m["parent"] for m in json.loads(body)["data"]}
    assert cards == {"sim": None, "sim-lora0": "sim", "sim-lora1": "sim", "sim-lora2": "sim"}
    for name in ("sim-lora0", "sim-lora0", "sim-lora1", "sim-lora2", "sim-lora0"):
        status, _ = await call(
            replica, "POST", "/v1/chat/completions", {**chat("hi"), "model": name}
        )
        assert status == 200
    assert slots.loads == 4  # lora0, lora1, lora2 (evicting lora0), lora0 again
    status, _ = await call(replica, "POST", "/v1/chat/completions", {**chat("x"), "model": "nope"})
    assert status == 404
    _, page = await call(replica, "GET", "/metrics")
    assert b'vllm:lora_requests_info{max_lora="2"' in page
