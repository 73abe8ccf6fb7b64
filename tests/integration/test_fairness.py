"""Priority classes through the real gateway: a low-class flood leaves normal chat its reserved
slot, a key's `max_priority` caps what it asks for, the official openai client's `service_tier`
is understood, and an unknown class is a 400 in OpenAI's shape.

`bentoml serve service:RemoteGateway` (one worker, `policy: fair` by default) routes `fixed-llm`
to the deterministic upstream (tests/servers/upstream.py) behind admission of 4 slots: the
backend's capacity, one of them reserved from the `low` class. Each request carries its own
X-Request-Id, so its line in the gateway's access log (one JSON object per request, in the
server's log file) is found by id.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.scope.keys import digest
from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess, start_together
from tests.servers.upstream import upstream_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FLOOD_KEY = "sk-fairness-flood"  # key-a: max_priority normal
CHAT_KEY = "sk-fairness-chat"  # key-b: max_priority high
CAPACITY = 4  # admission slots; reserved_fraction 0.1 keeps 1 of them from `low`
TOKEN_MS = 20
FLOOD_TOKENS = 50  # a flood stream holds its slot for about 1 s
FLOOD_WORKERS = 10  # 3 streaming, 7 waiting: a flood request waits about 2.4 s
# Under `policy: fifo` a chat request would wait behind the whole flood queue (about 2.4 s; the
# benchmark measured 3.4 s at its scale); in its reserved slot it takes one prefill, 20 ms.
CHAT_TTFT_BOUND_S = 0.75


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    upstream = upstream_process(prefill_ms=20, token_ms=TOKEN_MS, tokens=8)
    config = {
        "routing": {
            "backends": {"fixed": {"kind": "openai", "url": upstream.url, "timeout_s": 60}},
            "models": {"fixed-llm": {"backend": "fixed"}},
        },
        "admission": {"fixed": {"max_inflight": CAPACITY, "max_queue": 100,
                                "queue_timeout_s": 60}},
        "auth": {"keys": [
            {"name": "key-a", "sha256": digest(FLOOD_KEY), "max_priority": "normal"},
            {"name": "key-b", "sha256": digest(CHAT_KEY), "max_priority": "high"},
        ]},
    }  # fmt: skip
    gateway = remote_gateway_process(config)
    try:
        start_together(upstream.start, gateway.start, aborts=[upstream.abort, gateway.abort])
        yield gateway, upstream
    finally:
        gateway.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def gateway(servers: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return servers[0]


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "fixed-llm", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens, "stream": True, **extra}  # fmt: skip


async def stream(client: httpx.AsyncClient, body: dict[str, Any], rid: str) -> tuple[int, float]:
    """(status, TTFT in s: the first non-empty raw body chunk) of one streamed completion."""
    started = time.perf_counter()
    ttft = 0.0
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"X-Request-Id": rid}
    ) as r:
        async for raw in r.aiter_raw():
            if raw and not ttft:
                ttft = time.perf_counter() - started
    return r.status_code, ttft


def keyed(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, timeout=60, trust_env=False, headers={"Authorization": f"Bearer {key}"}
    )


def access_log(server: ServerProcess, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The gateway's access-log lines of these request ids, by id (a line is written as its
    request ends, which may be just after the client has read the answer)."""
    deadline = time.monotonic() + 5
    while True:
        lines = server.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith('{"request_id"')]
        found = {r["request_id"]: r for r in records if r["request_id"] in ids}
        if len(found) == len(set(ids)) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


async def test_a_low_flood_leaves_normal_chat_a_slot_at_once(gateway: ServerProcess) -> None:
    """Key A floods with `service_tier: flex` streams (more than the backend holds, so they
    queue); key B's normal chat, sent meanwhile, is never refused and starts within the bound,
    while A's own requests wait seconds. The access log shows A's as low and B's as normal."""
    stop = asyncio.Event()
    flood: list[tuple[str, int, float]] = []

    async def flooder(i: int) -> None:
        async with keyed(gateway.url, FLOOD_KEY) as client:
            n = 0
            while not stop.is_set():
                rid = f"flood-{i}-{n}"
                flood.append(
                    (rid, *await stream(client, chat(FLOOD_TOKENS, service_tier="flex"), rid))
                )
                n += 1

    workers = [asyncio.create_task(flooder(i)) for i in range(FLOOD_WORKERS)]
    try:
        await asyncio.sleep(2.5)  # the slots are taken and the queue has formed
        answers = []
        async with keyed(gateway.url, CHAT_KEY) as client:
            for i in range(8):
                answers.append((f"chat-{i}", *await stream(client, chat(4), f"chat-{i}")))
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*workers)  # each finishes its stream: nothing left queued

    assert [status for _, status, _ in answers] == [200] * 8
    ttfts = [ttft for _, _, ttft in answers]
    assert max(ttfts) < CHAT_TTFT_BOUND_S, ttfts
    waited = [ttft for rid, status, ttft in flood if status == 200 and not rid.endswith("-0")]
    assert {status for _, status, _ in flood} == {200}
    assert statistics.median(waited) > 1.0, "the flood did not queue: the test shows nothing"
    log = access_log(gateway, [rid for rid, _, _ in flood + answers])
    assert {log[rid]["priority"] for rid, _, _ in flood} == {"low"}
    assert {(log[rid]["key"], log[rid]["priority"]) for rid, _, _ in answers} == {
        ("key-b", "normal")
    }


@pytest.mark.parametrize(
    ("key", "asked", "served"),
    [
        (FLOOD_KEY, {"service_tier": "priority"}, "normal"),  # capped by max_priority: normal
        (CHAT_KEY, {"service_tier": "priority"}, "high"),  # its ceiling is high
        (CHAT_KEY, {"headers": {"X-Priority": "low"}}, "low"),
        (FLOOD_KEY, {}, "normal"),
    ],
    ids=["capped", "allowed", "header", "default"],
)
async def test_a_request_is_served_at_the_class_it_asks_capped_by_its_key(
    gateway: ServerProcess, key: str, asked: dict[str, Any], served: str
) -> None:
    rid = f"ask-{key[-5:]}-{served}-{time.monotonic_ns()}"
    extra = {k: v for k, v in asked.items() if k != "headers"}
    async with keyed(gateway.url, key) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={**chat(2), "stream": False, **extra},
            headers={"X-Request-Id": rid, **asked.get("headers", {})},
        )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert access_log(gateway, [rid])[rid]["priority"] == served


def test_the_openai_client_sends_service_tier(gateway: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=FLOOD_KEY, max_retries=0)
    rids = ["openai-flex-plain", "openai-flex-stream"]
    answer = client.chat.completions.create(
        model="fixed-llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        service_tier="flex", extra_headers={"X-Request-Id": rids[0]},
    )  # fmt: skip
    assert answer.choices[0].message.content == "tok " * 3
    chunks = client.chat.completions.create(
        model="fixed-llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        service_tier="flex", stream=True, extra_headers={"X-Request-Id": rids[1]},
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 3
    log = access_log(gateway, rids)
    assert [log[rid]["priority"] for rid in rids] == ["low", "low"]


@pytest.mark.parametrize(
    "asked",
    [{"headers": {"X-Priority": "urgent"}}, {"service_tier": "turbo"}],
    ids=["header", "service_tier"],
)
def test_an_unknown_class_is_a_400_in_openais_shape(
    gateway: ServerProcess, asked: dict[str, Any]
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CHAT_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="fixed-llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
            extra_headers=asked.get("headers"), extra_body={
                k: v for k, v in asked.items() if k != "headers"},
        )  # fmt: skip
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    assert "Unknown priority" in error["message"]
    assert "flex" in error["message"]  # it names the choices


async def test_a_request_whose_client_leaves_while_queued_gives_up_its_place(
    gateway: ServerProcess,
) -> None:
    """Four long streams hold every slot; a fifth request queues, and its client gives up after
    0.5 s. Its line in the access log comes then, as a 499, not when a slot frees seconds later
    (it kept its place in the queue, and would have been served to no one)."""
    async with keyed(gateway.url, FLOOD_KEY) as client:
        holders = [
            asyncio.create_task(stream(client, chat(200), f"holder-{i}")) for i in range(CAPACITY)
        ]
        await asyncio.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=chat(2, stream=False),
                              headers={"X-Request-Id": "gave-up"}, timeout=0.5)  # fmt: skip
        left = access_log(gateway, ["gave-up"])["gave-up"]
        assert [status for status, _ in await asyncio.gather(*holders)] == [200] * CAPACITY
    assert left["status"] == 499 and left["latency_ms"] < 2000, left
    held = access_log(gateway, [f"holder-{i}" for i in range(CAPACITY)])
    assert min(h["latency_ms"] for h in held.values()) > left["latency_ms"] + 2000, held
