"""The response cache: what is cacheable, the codec, LRU + TTL, and through the app."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from contract.vision import Prediction
from gateway.adapters.base import InferResponse, Segment, Transcript
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.cache import MemoryStorage, ResponseCache, decode, deterministic, encode
from gateway.scope.keys import digest
from gateway.tensors import Tensor, TensorRequest
from settings import CacheSettings, parse_settings
from tests.fakes import FakeAdapter

CHAT = {"model": "tiny-llm", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "choices": [{"text": "é"}], "usage": {"prompt_tokens": 1}},
        [Prediction(label="cat", index=3, score=0.25), Prediction(label="dog", index=0, score=0.1)],
        Transcript(
            "hi there",
            "de",
            2.5,
            (Segment(0, 0.0, 2.5, "hi there", (5, 6), -0.5, 0.1),),
            0.0,
            "german",
        ),
    ],
)
def test_the_codec_round_trips_every_json_kind_of_body(body: object) -> None:
    assert decode(encode(InferResponse(body)) or b"") == InferResponse(body)


def test_the_codec_round_trips_tensors_bit_for_bit() -> None:
    strings = np.empty(2, dtype=object)
    strings[:] = [b"a\x00b", b"\xff"]
    tensors = (
        Tensor("OUT", "FP16", np.arange(6, dtype=np.float16).reshape(2, 3) / 3),
        Tensor("IDS", "INT64", np.array([[2**40, -1]])),
        Tensor("TXT", "BYTES", strings),
    )
    back = decode(encode(InferResponse(tensors)) or b"").body
    for a, b in zip(tensors, back, strict=True):
        assert (a.name, a.datatype, a.shape) == (b.name, b.datatype, b.shape)
        assert (a.data.dtype == b.data.dtype and a.data.tobytes() == b.data.tobytes()) or (
            a.datatype == "BYTES" and list(a.data) == list(b.data)
        )


def test_an_unknown_body_is_not_cached() -> None:
    assert encode(InferResponse(object())) is None


@pytest.mark.parametrize(
    ("task", "payload", "options", "cacheable"),
    [
        ("chat", {**CHAT, "temperature": 0}, {}, True),
        ("chat", {**CHAT, "seed": 3, "temperature": 1.2}, {}, True),
        ("chat", CHAT, {}, False),  # OpenAI's default temperature is 1
        ("chat", {**CHAT, "temperature": 0, "stream": True}, {}, False),
        ("classify", b"jpeg", {"top_k": 3}, True),
        ("transcribe", b"wav", {"temperature": 0.0}, True),
        ("transcribe", b"wav", {"temperature": 0.4}, False),
    ],
)
def test_only_deterministic_requests_are_cacheable(
    task: str, payload: object, options: dict[str, object], cacheable: bool
) -> None:
    assert deterministic(task, payload, options) is cacheable  # type: ignore[arg-type]


def test_keys_follow_the_normalized_request() -> None:
    cache = ResponseCache(CacheSettings(models=["m*"]), MemoryStorage(10))
    a = cache.key("m1", "chat", {"temperature": 0, "messages": [1], "x": {"b": 1, "a": 2}}, {})
    b = cache.key("m1", "chat", {"x": {"a": 2, "b": 1}, "messages": [1], "temperature": 0}, {})
    assert a == b and a is not None
    assert cache.key("m2", "chat", {"temperature": 0, "messages": [1], "x": {}}, {}) != a
    assert cache.key("other", "chat", {"temperature": 0}, {}) is None  # not a cached model
    t1 = TensorRequest((Tensor("X", "FP32", np.zeros((1, 2), np.float32)),))
    t2 = TensorRequest((Tensor("X", "FP32", np.zeros((2, 1), np.float32)),))
    assert cache.key("m1", "infer", t1, {}) != cache.key("m1", "infer", t2, {})


def test_bytes_tensors_whose_elements_join_alike_get_different_keys() -> None:
    cache = ResponseCache(CacheSettings(models=["m*"]), MemoryStorage(10))

    def key(*items: bytes) -> str | None:
        data = np.empty(len(items), dtype=object)
        data[:] = items
        return cache.key("m1", "infer", TensorRequest((Tensor("TXT", "BYTES", data),)), {})

    assert key(b"a\0", b"b") != key(b"a", b"\0b")  # both "a\0\0b" joined with NULs
    assert key(b"ab", b"") != key(b"a", b"b")
    assert key(b"a\0", b"b") == key(b"a\0", b"b")


async def test_memory_storage_is_lru_and_expires_entries() -> None:
    clock = Clock()
    store = MemoryStorage(2, clock=clock)
    await store.set("a", b"1", ttl_s=10)
    await store.set("b", b"2", ttl_s=10)
    assert await store.get("a") == b"1"  # a is now the most recent
    await store.set("c", b"3", ttl_s=10)
    assert await store.get("b") is None and len(store) == 2
    clock.now += 10.5
    assert await store.get("a") is None and await store.get("c") is None and len(store) == 0


# -- through the app ---------------------------------------------------------------------------

KEY = "sk-cache"


@pytest.fixture
def llm() -> FakeAdapter:
    return FakeAdapter("llm")


@pytest.fixture
def client(llm: FakeAdapter) -> TestClient:
    settings = parse_settings(
        {
            "cache": {"models": ["tiny-*"]},
            "auth": {"keys": [{"name": "k", "sha256": digest(KEY), "rpm": 3}]},
        }
    )
    cache = ResponseCache.from_settings(settings.cache)
    router = Router(Registry([Route("tiny-llm", "llm", "llm", "up")]), {"llm": llm}, cache=cache)
    app = create_app()
    install(app, settings=settings, router=router)
    return TestClient(app, raise_server_exceptions=False, headers={"api-key": KEY})


def test_a_repeated_deterministic_request_is_a_hit_that_still_counts_against_limits(
    client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(InferResponse({"id": "1", "choices": []}))
    body = {**CHAT, "temperature": 0}
    first = client.post("/v1/chat/completions", json=body)
    second = client.post("/v1/chat/completions", json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json() == first.json() == {"id": "1", "choices": []}
    assert len(llm.requests) == 1
    assert second.headers["x-ratelimit-remaining-requests"] == "1"
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert client.post("/v1/chat/completions", json=body).status_code == 429  # rpm 3
    unkeyed = client.post("/v1/chat/completions", json=body, headers={"api-key": "sk-nope"})
    assert unkeyed.status_code == 401


def test_a_sampled_request_is_never_cached(client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue(InferResponse({"id": "1"}), InferResponse({"id": "2"}))
    body = {**CHAT, "temperature": 0.8}
    assert client.post("/v1/chat/completions", json=body).json() == {"id": "1"}
    second = client.post("/v1/chat/completions", json=body)
    assert second.json() == {"id": "2"} and "x-cache" not in second.headers
