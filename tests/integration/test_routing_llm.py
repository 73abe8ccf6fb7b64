"""The gateway routing to a separate vLLM server (a remote OpenAI backend), with A/B splits,
fallbacks to the bundled vLLM, and that server stopped (the last test of this module)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import RoutingStack
from tests.integration.prometheus import metric_value

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROMPT = [{"role": "user", "content": "Name three harbours"}]
GREEDY: dict[str, Any] = {"max_tokens": 12, "temperature": 0, "seed": 3}


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


@pytest.fixture(scope="module")
def gateway(stack: RoutingStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(stack: RoutingStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.vllm.url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def chat(stack: RoutingStack, model: str, caller: str | None = None) -> httpx.Response:
    headers = {"X-Caller-Id": caller} if caller else {}
    body = {"model": model, "messages": PROMPT, **GREEDY}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_remote_model_answers_as_the_server_does_directly(
    gateway: openai.OpenAI, direct: openai.OpenAI
) -> None:
    via = gateway.chat.completions.create(model="remote-llm", messages=PROMPT, **GREEDY)
    straight = direct.chat.completions.create(model="remote-llm", messages=PROMPT, **GREEDY)
    assert via.model == "remote-llm"  # answered by the remote server, not the fallback
    assert via.choices[0].message.content == straight.choices[0].message.content
    assert via.usage is not None and straight.usage is not None
    assert via.usage.completion_tokens == straight.usage.completion_tokens


def test_remote_model_streams(gateway: openai.OpenAI, direct: openai.OpenAI) -> None:
    stream = gateway.chat.completions.create(
        model="remote-llm", messages=PROMPT, stream=True, **GREEDY
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    straight = direct.chat.completions.create(model="remote-llm", messages=PROMPT, **GREEDY)
    # The fallback (demo-llm) has the same weights and would give the same text: the chunks'
    # model says who streamed them.
    assert {c.model for c in chunks} == {"remote-llm"}
    assert text and text == straight.choices[0].message.content


def test_models_lists_remote_and_split_models(gateway: openai.OpenAI) -> None:
    models = {m.id: m.model_extra or {} for m in gateway.models.list()}
    assert models["remote-llm"]["backend"] == "remote-vllm"
    assert models["ab-llm"]["backend"] == "remote-vllm|llm"
    assert models["scale"]["kind"] == "tensor"


def test_ab_split_is_sticky_per_caller_and_uses_both_variants(stack: RoutingStack) -> None:
    served: dict[str, set[str]] = {}
    for i in range(12):
        caller = f"caller-{i}"
        for _ in range(2):
            r = chat(stack, "ab-llm", caller)
            assert r.status_code == 200, r.text
            served.setdefault(caller, set()).add(r.json()["model"])
    assert all(len(models) == 1 for models in served.values()), served
    assert set().union(*served.values()) == {"remote-llm", "demo-llm"}


def test_unreachable_backend_falls_back_to_the_bundled_llm(stack: RoutingStack) -> None:
    times = []
    for _ in range(4):
        started = time.monotonic()
        r = chat(stack, "down-llm")
        times.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "demo-llm"
    status = next(
        b for b in httpx.get(f"{stack.url}/status").json()["backends"] if b["name"] == "dead-vllm"
    )
    assert status["breaker"]["state"] == "open" and not status["ready"]
    assert metric_value(stack.url, "gateway_fallbacks_total", model="down-llm") >= 4
    print("\ndown-llm via fallback: " + ", ".join(f"{t * 1000:.0f} ms" for t in times))


def test_stopping_the_remote_server_falls_back_and_opens_its_breaker(
    stack: RoutingStack,
) -> None:
    assert chat(stack, "remote-llm").json()["model"] == "remote-llm"
    stack.vllm.stop()
    for _ in range(4):
        r = chat(stack, "remote-llm")
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "demo-llm"
    body = {"model": "remote-llm", "messages": PROMPT, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert '"model":"demo-llm"' in r.read().decode().replace(" ", "")
    status = next(
        b for b in httpx.get(f"{stack.url}/status").json()["backends"] if b["name"] == "remote-vllm"
    )
    assert status["breaker"]["state"] == "open" and not status["healthy"]
    assert metric_value(stack.url, "gateway_breaker_state", backend="remote-vllm") == 2


def test_a_pool_goes_on_on_the_other_engine_once_one_stopped(stack: RoutingStack) -> None:
    """After the test above stopped the remote engine: the two-engine pool (test_llm_pool.py)
    answers every request from the bundle's engine, with no error to the client."""
    body = {"model": "pool-llm", "messages": PROMPT, **GREEDY}
    for balance_model in ("pool-llm", "pool-llm-ll"):
        for _ in range(4):
            r = httpx.post(
                f"{stack.url}/v1/chat/completions",
                json={**body, "model": balance_model},
                timeout=120,
            )
            assert r.status_code == 200, r.text
    # The requests may all have gone to the live engine (none failed on the stopped one): then its
    # health checks find it down, two in a row (CHECKS_TO_FAIL) every 2 s, each at most 5 s.
    deadline = time.monotonic() + 20
    while True:
        backends = httpx.get(f"{stack.url}/status").json()["backends"]
        pool = next(b for b in backends if b["name"] == "engines")
        states = {e["endpoint"]: e["state"] for e in pool["endpoints"]}
        if states[stack.vllm.url] == "unready" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states[stack.vllm.url] == "unready", states
