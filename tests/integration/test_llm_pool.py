"""Replica routing on two real vLLM engines: the bundle's own engine and the routing stack's
remote one, both serving the demo-llm weights as `demo-llm`, in one pool (`engines`, balance
prefix; `engines-ll`, least_load; tests/integration/conftest.py). The engine stopped under the
pool is tested in test_routing_llm.py, after it stops that engine.

vLLM's CPU KV blocks hold 128 tokens, so a prompt shorter than that never hits its prefix cache:
the conversation here is several hundred tokens.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.integration.conftest import RoutingStack, engine_url
from tests.integration.prometheus import metric_value

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HISTORY = [
    {"role": "system", "content": "You are the harbour master of a busy port. " * 40},
    {"role": "user", "content": "Which ships came in this morning, and from where? " * 12},
]


def engines(stack: RoutingStack) -> dict[str, str]:
    return {"bundled": engine_url(stack.config), "remote": stack.vllm.url}


def engine_counter(url: str, name: str) -> float:
    return metric_value(url, name)


def sent_to(stack: RoutingStack, backend: str) -> dict[str, float]:
    """Requests the gateway sent to each engine of `backend`'s pool."""
    return {
        who: metric_value(
            stack.url, "gateway_endpoint_requests_total", backend=backend, endpoint=url
        )
        for who, url in engines(stack).items()
    }


def engine_load(url: str) -> float:
    return sum(metric_value(url, f"vllm:num_requests_{state}") for state in ("running", "waiting"))


def wait_until_idle(stack: RoutingStack, within_s: float = 120.0) -> None:
    """Until neither engine holds a request (an earlier test's stream may still be generating on
    the bundle's engine), and the pool has read that (it reads loads every second)."""
    deadline = time.monotonic() + within_s
    while (loads := {w: engine_load(u) for w, u in engines(stack).items()}) and any(loads.values()):
        assert time.monotonic() < deadline, f"the engines stayed busy: {loads}"
        time.sleep(0.5)
    time.sleep(2.5)


def chat(stack: RoutingStack, model: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": model, "messages": HISTORY, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def test_a_repeated_conversation_stays_on_one_engine_whose_prefix_cache_hits(
    routing_stack: RoutingStack,
) -> None:
    stack = routing_stack
    assert chat(stack, "pool-llm").json()["usage"]["prompt_tokens"] > 300
    before = sent_to(stack, "engines")
    hits = {w: engine_counter(u, "vllm:prefix_cache_hits_total") for w, u in engines(stack).items()}
    for _ in range(10):
        chat(stack, "pool-llm")
    after = sent_to(stack, "engines")
    moved = {w: after[w] - before[w] for w in after}
    home = max(moved, key=lambda w: moved[w])
    assert moved[home] == 10 and sum(moved.values()) == 10, moved
    gained = {
        w: engine_counter(u, "vllm:prefix_cache_hits_total") - hits[w]
        for w, u in engines(stack).items()
    }
    other = next(w for w in gained if w != home)
    assert gained[home] >= 10 * 128 and gained[other] == 0, gained  # the engine's own count
    picks = metric_value(stack.url, "gateway_pick_total", backend="engines", reason="prefix")
    assert picks >= 10


def test_concurrent_requests_spread_under_least_load(routing_stack: RoutingStack) -> None:
    """Eight streams long enough to be generating together: each pick sees the ones before it
    in flight, so they alternate. (A short stream is relayed to its end at once, whether or not
    its client reads: requests one after another each find both engines idle, and an engine
    slower to answer rightly gets fewer of them.) Both engines idle first: least_load rightly
    sends fewer to an engine still busy with an earlier test's requests."""
    stack = routing_stack
    wait_until_idle(stack)
    before = sent_to(stack, "engines-ll")
    body = {"model": "pool-llm-ll", "messages": [{"role": "user", "content": "A long story."}],
            "max_tokens": 300, "ignore_eos": True, "stream": True}  # fmt: skip

    def stream(_: int) -> int:
        with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=120) as r:
            lines = [line for line in r.iter_lines() if line]
            return r.status_code if lines[-1:] == ["data: [DONE]"] else 0

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(stream, range(8))) == [200] * 8
    after = sent_to(stack, "engines-ll")
    moved = {w: after[w] - before[w] for w in after}
    picks = {
        reason: metric_value(stack.url, "gateway_pick_total", backend="engines-ll", reason=reason)
        for reason in ("least_load", "only", "retry")
    }
    assert sum(moved.values()) == 8 and min(moved.values()) >= 3, (moved, picks)


def test_status_lists_the_pools_engines(routing_stack: RoutingStack) -> None:
    backends = httpx.get(f"{routing_stack.url}/status", timeout=30).json()["backends"]
    pool = next(b for b in backends if b["name"] == "engines")
    listed = {e["endpoint"]: e for e in pool["endpoints"]}
    assert set(listed) == set(engines(routing_stack).values())
    assert all(e["state"] == "ready" and e["breaker"] == "closed" for e in listed.values())
