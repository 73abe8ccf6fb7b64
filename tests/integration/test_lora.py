"""LoRA adapters on real vLLM engines (the routing stack's two, both started with LoRA on).

Through the bundle: its engine serves the demo adapter demo-llm-sql from the start
(`llm.lora.adapters`), listed with its parent, and it answers differently from the base model.
Through a gateway with API keys (`service:RemoteGateway`, the gateway alone, in front of the
same two engines): keys' model globs apply to adapters; an admin key loads and unloads an adapter
on every engine of a pool; a pool sends an adapter's requests to the engine holding it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.scope.keys import digest
from models import store
from models.lora import write_random_adapter
from tests.integration.conftest import RoutingStack, engine_url
from tests.integration.prometheus import metric_value
from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN, DEMO, OTHER = "sk-lora-admin", "sk-lora-demo", "sk-lora-other"
PROMPT = "The harbour master counted the ships"


def complete(url: str, model: str, key: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "seed": 7,
            **extra}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=120)


def text_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def models_of(url: str, key: str | None = None) -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


def wait_for(check: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.25)


# -- the bundle: the demo adapter served from the start ----------------------------------------


def test_the_bundle_lists_the_demo_adapter_with_its_parent(routing_stack: RoutingStack) -> None:
    listed = models_of(routing_stack.url)
    assert listed["demo-llm-sql"]["parent"] == "demo-llm"
    assert listed["demo-llm-sql"]["kind"] == "llm"
    assert "parent" not in listed["demo-llm"]


def test_the_adapter_answers_differently_from_the_base_and_the_same_each_time(
    routing_stack: RoutingStack,
) -> None:
    """An adapter is not an alias of the base: the same greedy prompt gives another text."""
    url = routing_stack.url
    base = text_of(complete(url, "demo-llm"))
    adapted = [text_of(complete(url, "demo-llm-sql")) for _ in range(3)]
    assert adapted[0] != base
    assert adapted == [adapted[0]] * 3


def test_the_adapter_streams_through_the_openai_client(routing_stack: RoutingStack) -> None:
    client = openai.OpenAI(base_url=f"{routing_stack.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="demo-llm-sql",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {"demo-llm-sql"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- a gateway with keys in front of both engines ------------------------------------------------


@pytest.fixture(scope="module")
def keyed(routing_stack: RoutingStack) -> Iterator[ServerProcess]:
    bundled, remote = engine_url(routing_stack.config), routing_stack.vllm.url
    config = {
        "routing": {
            "backends": {
                "bundled": {"kind": "openai", "url": bundled, "lora": True, "timeout_s": 120},
                "pair": {"kind": "openai", "urls": [bundled, remote], "lora": True,
                         "balance": "least_load", "load_every_s": 0.5, "timeout_s": 120},
            },
            "models": {
                "demo-llm": {"backend": "bundled"},
                "pair-llm": {"backend": "pair", "upstream": "demo-llm"},
            },
        },
        "auth": {"keys": [
            {"name": "ops", "sha256": digest(ADMIN), "admin": True},
            {"name": "demo", "sha256": digest(DEMO), "models": ["demo-llm-*", "pair-*"]},
            {"name": "other", "sha256": digest(OTHER), "models": ["other-*"]},
        ]},
    }  # fmt: skip
    gateway = remote_gateway_process(config)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def admin(url: str, path: str, body: dict[str, Any], key: str = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=180)


def engine_models(url: str) -> dict[str, Any]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}


def test_key_globs_apply_to_the_adapter(keyed: ServerProcess) -> None:
    wait_for(lambda: "demo-llm-sql" in models_of(keyed.url, ADMIN))  # found on /v1/models
    assert text_of(complete(keyed.url, "demo-llm-sql", DEMO))
    r = complete(keyed.url, "demo-llm-sql", OTHER)
    assert r.status_code == 403 and "other-*" in r.json()["error"]["message"]


def test_an_admin_loads_an_adapter_on_both_engines_uses_it_and_unloads_it(
    keyed: ServerProcess, routing_stack: RoutingStack, tmp_path: Path
) -> None:
    path = tmp_path / "demo-llm-sql2"
    write_random_adapter(path, store.resolve("demo-llm").path, seed=11)
    load = {"lora_name": "demo-llm-sql2", "lora_path": str(path), "model": "pair-llm"}
    r = admin(keyed.url, "/v1/load_lora_adapter", load, key=DEMO)
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    r = admin(keyed.url, "/v1/load_lora_adapter", load)
    assert r.status_code == 200, r.text
    try:
        for engine in (engine_url(routing_stack.config), routing_stack.vllm.url):
            assert "demo-llm-sql2" in engine_models(engine), engine  # each engine's own list
        assert models_of(keyed.url, DEMO)["demo-llm-sql2"]["parent"]
        second = text_of(complete(keyed.url, "demo-llm-sql2", DEMO))
        assert second != text_of(complete(keyed.url, "pair-llm", DEMO))
    finally:
        r = admin(keyed.url, "/v1/unload_lora_adapter", {"lora_name": "demo-llm-sql2",
                                                         "model": "pair-llm"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert complete(keyed.url, "demo-llm-sql2", DEMO).status_code == 404


def test_an_adapter_that_does_not_fit_is_a_400_saying_why(
    keyed: ServerProcess, tmp_path: Path
) -> None:
    write_random_adapter(tmp_path, store.resolve("demo-llm").path, rank=32)  # above 16
    load = {"lora_name": "too-big", "lora_path": str(tmp_path), "model": "pair-llm"}
    r = admin(keyed.url, "/v1/load_lora_adapter", load)
    assert r.status_code == 400, r.text
    assert "rank" in r.json()["error"]["message"]
    assert "too-big" not in models_of(keyed.url, ADMIN)


def test_an_adapter_on_one_engine_only_gets_its_requests_there(
    keyed: ServerProcess, routing_stack: RoutingStack, tmp_path: Path
) -> None:
    remote = routing_stack.vllm.url
    write_random_adapter(tmp_path, store.resolve("demo-llm").path, seed=12)
    body = {"lora_name": "pair-solo", "lora_path": str(tmp_path)}
    assert httpx.post(f"{remote}/v1/load_lora_adapter", json=body, timeout=120).status_code == 200
    try:
        wait_for(lambda: "pair-solo" in models_of(keyed.url, ADMIN))
        before = _sent(keyed, routing_stack)
        for _ in range(6):
            text_of(complete(keyed.url, "pair-solo", DEMO))
        after = _sent(keyed, routing_stack)
        assert {w: after[w] - before[w] for w in after} == {"bundled": 0, "remote": 6}
    finally:
        httpx.post(f"{remote}/v1/unload_lora_adapter", json={"lora_name": "pair-solo"})


def _sent(keyed: ServerProcess, stack: RoutingStack) -> dict[str, float]:
    engines = {"bundled": engine_url(stack.config), "remote": stack.vllm.url}
    return {
        who: metric_value(
            keyed.url, "gateway_endpoint_requests_total", backend="pair", endpoint=url
        )
        for who, url in engines.items()
    }
