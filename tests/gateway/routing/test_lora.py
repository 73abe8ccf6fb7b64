"""LoRA adapters as models: found on the engines' /v1/models, listed with their parent, routed to
an endpoint that holds them, loaded and unloaded at run time by admin keys only."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.adapters.base import InferRequest, InferResponse
from gateway.app import create_app, install
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.pick import LeastLoad, adapter_tier, lora_info, use_adapter
from gateway.routing.pool import Endpoint, Pool
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.keys import digest
from settings import Settings
from tests.fakes import FakeAdapter

BASE = Route("demo-llm", "llm", "llm", "demo-llm")


class LoraEngine(FakeAdapter):
    """A fake vLLM engine with LoRA: its /v1/models and its load and unload routes."""

    def __init__(self, name: str = "llm", adapters: Mapping[str, str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(name)
        self.adapters = dict(adapters)  # name -> path
        self.refuse: str | None = None

    async def models(self) -> list[dict[str, Any]]:
        cards = [{"id": n, "root": p, "parent": "demo-llm"} for n, p in self.adapters.items()]
        return [{"id": "demo-llm", "parent": None}, *cards]

    async def lora_admin(self, path: str, body: Mapping[str, object]) -> tuple[int, str]:
        name = str(body["lora_name"])
        if path.endswith("unload_lora_adapter"):
            if self.adapters.pop(name, None) is None:
                return 404, f"The lora adapter '{name}' cannot be found."
            return 200, "Success"
        if self.refuse:
            return 500, self.refuse
        self.adapters[name] = str(body["lora_path"])
        return 200, "Success"


def make_backend(registry: Registry, *engines: LoraEngine) -> Backend:
    endpoints = [
        Endpoint("llm", f"http://e{i}", engine, CircuitBreaker())
        for i, engine in enumerate(engines)
    ]
    pool = Pool(
        "llm",
        endpoints,
        picker=LeastLoad(random.Random(0)),
        on_adapters=lambda found: registry.set_adapters("llm", found),
    )
    return Backend(pool=pool)


# -- the registry --------------------------------------------------------------------------------


def test_an_adapter_found_on_an_engine_is_a_model_with_its_parent() -> None:
    registry = Registry([BASE])
    registry.set_adapters("llm", {"sql": ("demo-llm", 1)})
    route = registry.resolve("sql")
    assert route == Route("sql", "llm", "llm", "sql", parent="demo-llm")
    assert registry.kind_of("sql") == "llm" and "sql" in registry.names(["llm"])
    registry.set_adapters("llm", {})
    assert registry.resolve("sql") is None


def test_a_configured_name_is_never_taken_by_a_found_adapter() -> None:
    registry = Registry([BASE])
    registry.set_adapters("remote", {"demo-llm": ("x", 2)})
    assert registry.resolve("demo-llm") == BASE


def test_an_adapter_on_two_backends_goes_to_the_one_holding_it_most() -> None:
    registry = Registry([BASE])
    registry.set_adapters("llm", {"sql": ("demo-llm", 1)})
    registry.set_adapters("pool", {"sql": ("demo-llm", 2)})
    assert registry.resolve("sql").backend == "pool"  # type: ignore[union-attr]
    registry.set_adapters("pool", {})
    assert registry.resolve("sql").backend == "llm"  # type: ignore[union-attr]


def test_a_split_may_weigh_configured_adapters() -> None:
    from settings import RoutingSettings

    variants = [{"model": "sql-v1", "weight": 9}, {"model": "sql-v2", "weight": 1}]
    routing = RoutingSettings.model_validate({"models": {"sql": {"variants": variants}}})
    adapters = [Route(n, "llm", "llm", n, parent="demo-llm") for n in ("sql-v1", "sql-v2")]
    registry = Registry.from_settings(routing, [BASE, *adapters])
    picks = [registry.resolve("sql", caller=f"user-{i}").name for i in range(400)]  # type: ignore[union-attr]
    assert 0.8 < picks.count("sql-v1") / len(picks) < 0.97


# -- picking ---------------------------------------------------------------------------------


class Holder:
    def __init__(self, key: str, adapters: tuple[str, ...] = (), slots: tuple[str, ...] = (),
                 max_loras: int = 2) -> None:  # fmt: skip
        from collections import OrderedDict

        self.key = key
        self.adapters = dict.fromkeys(adapters, "base")
        self.slots: OrderedDict[str, None] = OrderedDict.fromkeys(slots)
        self.max_loras = max_loras


def test_tiers_resident_then_a_free_slot_then_registered_then_any() -> None:
    a = Holder("a", ("sql", "chat"), slots=("sql", "chat"))
    b = Holder("b", ("sql",), slots=("x",))
    c = Holder("c", ("sql",), slots=("x", "y"))
    d = Holder("d")
    assert adapter_tier([a, b, c, d], "sql") == [a]
    assert adapter_tier([b, c, d], "sql") == [b]  # a free slot
    assert adapter_tier([c, d], "sql") == [c]  # holds it, would evict
    assert adapter_tier([d], "sql") == [d]  # nobody has it: an engine that loads on demand


def test_a_used_adapter_evicts_the_least_recently_used() -> None:
    h = Holder("a", max_loras=2)
    for name in ("x", "y", "x", "z"):
        use_adapter(h, name)
    assert list(h.slots) == ["x", "z"]


def test_lora_info_reads_the_latest_gauge_sample() -> None:
    page = (
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="",'
        'waiting_lora_adapters=""} 1.79e+09\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",'
        'waiting_lora_adapters="sql"} 1.80e+09\n'
    )
    assert lora_info(page) == (4, {"sql", "chat"})
    assert lora_info("vllm:num_requests_running 1\n") == (None, set())


async def test_a_pool_sends_an_adapters_request_to_the_endpoint_holding_it() -> None:
    registry = Registry([BASE])
    cold, warm = LoraEngine(), LoraEngine(adapters={"sql": "/a/sql"})
    backend = make_backend(registry, cold, warm)
    await backend.pool.refresh()
    assert registry.resolve("sql") == Route("sql", "llm", "llm", "sql", parent="demo-llm")
    for _ in range(5):
        endpoint, choice = await backend.pool.choose(InferRequest("chat", "sql", {}))
        assert endpoint.adapter is warm and choice.reason == "adapter"
    picked = {(await backend.pool.choose(InferRequest("chat", "demo-llm", {})))[0].key
              for _ in range(40)}  # fmt: skip
    assert picked == {"http://e0", "http://e1"}  # the base model goes anywhere
    await backend.pool.aclose()


# -- run-time updates through the gateway ----------------------------------------------------

ADMIN, USER, OTHER = "sk-admin-123", "sk-user-456", "sk-other-789"
KEYS = [
    {"name": "ops", "sha256": digest(ADMIN), "admin": True},
    {"name": "app", "sha256": digest(USER), "models": ["demo-llm*", "sql*"]},
    {"name": "other", "sha256": digest(OTHER), "models": ["other-*"]},
]


@pytest.fixture
def engines() -> tuple[LoraEngine, LoraEngine]:
    return LoraEngine(), LoraEngine()


@pytest.fixture
def gateway(engines: tuple[LoraEngine, LoraEngine]) -> Iterator[TestClient]:
    yield from _client(engines, auth={"keys": KEYS})


def _client(engines: tuple[LoraEngine, ...], **settings: Any) -> Iterator[TestClient]:
    registry = Registry([BASE])
    backend = make_backend(registry, *engines)
    app = create_app()
    config = Settings.model_validate({"llm": {"lora": {"runtime_updates": True}}, **settings})
    install(app, settings=config, router=Router(registry, {"llm": backend}))
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(TestClient(app, raise_server_exceptions=False))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


LOAD = {"lora_name": "sql2", "lora_path": "/engine/disk/sql2"}


def test_an_admin_key_loads_an_adapter_on_every_engine_and_it_is_a_model(
    gateway: TestClient, engines: tuple[LoraEngine, LoraEngine]
) -> None:
    r = gateway.post("/v1/load_lora_adapter", json=LOAD, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert "on 2 endpoint(s)" in r.text
    assert all(e.adapters == {"sql2": "/engine/disk/sql2"} for e in engines)
    models = gateway.get("/v1/models", headers=bearer(USER)).json()["data"]
    assert {"id": "sql2", "parent": "demo-llm"}.items() <= next(
        m for m in models if m["id"] == "sql2"
    ).items()
    engines[0].enqueue(InferResponse({"choices": []}))
    engines[1].enqueue(InferResponse({"choices": []}))
    body = {"model": "sql2", "messages": [{"role": "user", "content": "hi"}]}
    r = gateway.post("/v1/chat/completions", json=body, headers=bearer(USER))
    assert r.status_code == 200, r.text
    sent = [req for e in engines for req in e.requests]
    assert [req.model for req in sent] == ["sql2"]
    r = gateway.post("/v1/chat/completions", json=body, headers=bearer(OTHER))
    assert r.status_code == 403


def test_unloading_removes_it_and_a_second_unload_is_a_404(
    gateway: TestClient, engines: tuple[LoraEngine, LoraEngine]
) -> None:
    gateway.post("/v1/load_lora_adapter", json=LOAD, headers=bearer(ADMIN))
    r = gateway.post("/v1/unload_lora_adapter", json={"lora_name": "sql2"}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert all(not e.adapters for e in engines)
    body = {"model": "sql2", "messages": [{"role": "user", "content": "hi"}]}
    assert gateway.post("/v1/chat/completions", json=body, headers=bearer(USER)).status_code == 404
    r = gateway.post("/v1/unload_lora_adapter", json={"lora_name": "sql2"}, headers=bearer(ADMIN))
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"


def test_a_refused_load_is_a_400_with_the_engines_reason_and_is_rolled_back(
    gateway: TestClient, engines: tuple[LoraEngine, LoraEngine]
) -> None:
    engines[1].refuse = "LoRA rank 64 is greater than max_lora_rank 16"
    r = gateway.post("/v1/load_lora_adapter", json=LOAD, headers=bearer(ADMIN))
    assert r.status_code == 400
    error = r.json()["error"]
    assert "max_lora_rank 16" in error["message"] and "http://e1" in error["message"]
    assert error["code"] == "lora_load_failed"
    assert engines[0].adapters == {}  # it had taken it: unloaded again


def test_only_admin_keys_may_load(gateway: TestClient) -> None:
    r = gateway.post("/v1/load_lora_adapter", json=LOAD, headers=bearer(USER))
    assert r.status_code == 403 and "admin: true" in r.json()["error"]["message"]
    assert gateway.post("/v1/load_lora_adapter", json=LOAD).status_code == 401
    r = gateway.post("/v1/unload_lora_adapter", json={"lora_name": "x"}, headers=bearer(USER))
    assert r.status_code == 403


def test_without_auth_the_routes_are_off(engines: tuple[LoraEngine, LoraEngine]) -> None:
    for client in _client(engines):
        r = client.post("/v1/load_lora_adapter", json=LOAD)
        assert r.status_code == 404 and "need API keys" in r.json()["error"]["message"]
        assert not any(e.adapters for e in engines)


def test_a_bad_request_names_the_field(gateway: TestClient) -> None:
    r = gateway.post("/v1/load_lora_adapter", json={"lora_name": "x"}, headers=bearer(ADMIN))
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
    r = gateway.post("/v1/load_lora_adapter", json={**LOAD, "lora_name": "demo-llm"},
                     headers=bearer(ADMIN))  # fmt: skip
    assert r.status_code == 400 and "already a model" in r.json()["error"]["message"]


def test_other_workers_learn_of_a_load_from_the_engines_models() -> None:
    """A second gateway worker's pool finds the adapter on its next look at /v1/models."""
    registry = Registry([BASE])
    engine = LoraEngine(adapters={"sql2": "/engine/disk/sql2"})
    backend = make_backend(registry, engine)
    asyncio.run(backend.pool.refresh())
    assert registry.resolve("sql2") is not None
    engine.adapters.clear()
    asyncio.run(backend.pool.refresh())
    assert registry.resolve("sql2") is None
