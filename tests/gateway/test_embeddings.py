"""POST /v1/embeddings in process with the real openai client, over a fake embedding runner."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from starlette.testclient import TestClient

from contract.embedding import Embedding
from gateway.adapters.base import InferenceAdapter, InferRequest
from gateway.adapters.runner import EmbedRunnerAdapter, shorten
from gateway.api.embeddings import parse_input
from gateway.app import create_app, install
from gateway.errors import InvalidRequest
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.cache import ResponseCache
from gateway.scope.keys import digest
from settings import CacheSettings, Settings, parse_settings
from tests.fakes import FakeAdapter
from tests.gateway.fake_runners import (
    EMBED_DIMENSIONS,
    EMBED_MAX_TOKENS,
    FakeEmbedRunner,
    fake_ids,
    fake_vector,
)
from tests.gateway.openai_errors import error_of

MODEL = "embedder"
EMBEDDINGS = "/v1/embeddings"


@pytest.fixture
def runner() -> FakeEmbedRunner:
    return FakeEmbedRunner()


def make_client(runner: FakeEmbedRunner, settings: Settings) -> TestClient:
    routes = [Route(MODEL, "embedding", "embed", "fake-embed"), Route("chat", "llm", "llm", "c")]
    adapters: dict[str, InferenceAdapter] = {
        "embed": EmbedRunnerAdapter("embed", runner),
        "llm": FakeAdapter("llm"),
    }
    cache = ResponseCache.from_settings(settings.cache) if settings.cache.models else None
    app = create_app()
    install(app, settings=settings, router=Router(Registry(routes), adapters, cache=cache))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(runner: FakeEmbedRunner) -> Iterator[TestClient]:
    with make_client(runner, Settings()) as c:
        yield c


@pytest.fixture
def oai(client: TestClient) -> openai.OpenAI:
    """The real openai client, sending through the in-process app."""
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0
    )


def expected(text: str) -> list[float]:
    return [float(x) for x in fake_vector(fake_ids(text))]


# --- the four input shapes, both encodings ---------------------------------------------------


def test_a_string_in_floats_is_openais_shape_with_the_runners_token_count(
    client: TestClient,
) -> None:
    r = client.post(EMBEDDINGS, json={"model": MODEL, "input": "a small cat", "user": "u-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert (body["object"], body["model"]) == ("list", MODEL)
    (item,) = body["data"]
    assert set(item) == {"object", "index", "embedding"}
    assert (item["object"], item["index"]) == ("embedding", 0)
    assert item["embedding"] == expected("a small cat")
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # [CLS] 3 words [SEP]


def test_openai_client_string_and_list_of_strings(oai: openai.OpenAI) -> None:
    one = oai.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert one.data[0].embedding == expected("hello world")
    texts = ["a cat", "a dog on a mat", "owl"]
    many = oai.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    assert [d.embedding for d in many.data] == [expected(t) for t in texts]
    assert (
        many.usage.prompt_tokens == many.usage.total_tokens == sum(len(fake_ids(t)) for t in texts)
    )
    assert many.model == MODEL and many.object == "list"


def test_openai_clients_default_base64_round_trips_the_float32_values(
    oai: openai.OpenAI, client: TestClient
) -> None:
    texts = ["one two", "three"]
    decoded = oai.embeddings.create(model=MODEL, input=texts)  # asks for base64, decodes it
    floats = oai.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    raw = client.post(
        EMBEDDINGS, json={"model": MODEL, "input": texts, "encoding_format": "base64"}
    ).json()
    for item, text in zip(raw["data"], texts, strict=True):
        assert isinstance(item["embedding"], str)
        vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert vector.tolist() == expected(text) and len(vector) == EMBED_DIMENSIONS
    assert raw["usage"]["prompt_tokens"] == 7  # [CLS] one two [SEP], [CLS] three [SEP]


def test_token_ids_embed_like_the_text_they_stand_for(oai: openai.OpenAI) -> None:
    ids = fake_ids("a small cat")
    single = oai.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert single.data[0].embedding == expected("a small cat")
    assert single.usage.prompt_tokens == len(ids)
    rows = [fake_ids("a cat"), fake_ids("the dog barks")]
    many = oai.embeddings.create(model=MODEL, input=rows)
    assert [d.embedding for d in many.data] == [expected("a cat"), expected("the dog barks")]


def test_all_inputs_of_a_request_go_to_the_runner_in_one_call(
    oai: openai.OpenAI, runner: FakeEmbedRunner
) -> None:
    texts = [f"text number {i}" for i in range(300)]
    result = oai.embeddings.create(model=MODEL, input=texts)
    assert len(result.data) == 300 and result.data[299].embedding == expected(texts[299])
    (sent,) = runner.sent("embed")  # BentoML splits it into batches of max_batch_size
    assert [item.text for item in sent["inputs"]] == texts


# --- dimensions ------------------------------------------------------------------------------


def test_dimensions_keep_the_first_values_renormalized(oai: openai.OpenAI) -> None:
    short = oai.embeddings.create(model=MODEL, input="a cat", dimensions=3, encoding_format="float")
    vector = np.asarray(short.data[0].embedding)
    full = np.asarray(expected("a cat"))
    assert len(vector) == 3
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vector, full[:3] / np.linalg.norm(full[:3]), rtol=1e-6)
    same = oai.embeddings.create(model=MODEL, input="a cat", dimensions=EMBED_DIMENSIONS)
    assert same.data[0].embedding == expected("a cat")


def test_shorten_handles_a_zero_head() -> None:
    vectors = np.array([[0.0, 0.0, 1.0], [3.0, 4.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(shorten(vectors, 2), [[0.0, 0.0], [0.6, 0.8]], rtol=1e-6)
    assert shorten(vectors, 2).dtype == np.float32


# --- errors ----------------------------------------------------------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hello", **fields}


@pytest.mark.parametrize(
    ("request_body", "param", "message"),
    [
        (body(input=""), "input", "empty string"),
        (body(input=[]), "input", "non-empty"),
        (body(input=["ok", ""]), "input", "empty string"),
        (body(input=[[1, 2], []]), "input", "empty list"),
        (body(input=["a"] * 2049), "input", "at most 2048"),
        (body(input=[1, "a"]), "input", "do not mix"),
        (body(input=[[1, 2], "a"]), "input", "do not mix"),
        (body(input=[True, False]), "input", "do not mix"),
        (body(input=[1.5, 2.0]), "input", "do not mix"),
        (body(input={"text": "a"}), "input", "non-empty"),
        ({"model": MODEL}, "input", "non-empty"),
        (body(input=" ".join(["w"] * EMBED_MAX_TOKENS)), "input", "maximum context length is 16"),
        (body(input=list(range(3, 3 + EMBED_MAX_TOKENS + 1))), "input", "has 17 tokens"),
        (body(input=[[1, 2, 100]]), "input", "between 0 and 99"),
        (body(input=[[1, -1]]), "input", "between 0 and 99"),
        (body(dimensions=EMBED_DIMENSIONS + 1), "dimensions", "between 1 and 8"),
        (body(dimensions=0), "dimensions", "positive integer"),
        (body(dimensions="4"), "dimensions", "positive integer"),
        (body(encoding_format="xml"), "encoding_format", "'float' or 'base64'"),
        ({"input": "hello"}, "model", "required"),
    ],
)
def test_bad_requests_are_400_in_openai_shape_and_the_next_succeeds(
    client: TestClient,
    runner: FakeEmbedRunner,
    request_body: dict[str, Any],
    param: str,
    message: str,
) -> None:
    err = error_of(client.post(EMBEDDINGS, json=request_body), 400)
    assert message in err["message"] and err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert client.post(EMBEDDINGS, json=body()).status_code == 200


def test_too_long_inputs_are_refused_with_openais_code(client: TestClient) -> None:
    text = " ".join(["word"] * 20)
    err = error_of(client.post(EMBEDDINGS, json=body(input=["fine", text])), 400)
    assert err["code"] == "context_length_exceeded"
    assert "input 1 has 22 tokens" in err["message"]


def test_token_ids_out_of_range_never_reach_the_runner(
    client: TestClient, runner: FakeEmbedRunner
) -> None:
    error_of(client.post(EMBEDDINGS, json=body(input=[[5, 100]])), 400)
    error_of(client.post(EMBEDDINGS, json=body(input=list(range(20)))), 400)
    assert runner.sent("embed") == []


def test_the_openai_client_raises_its_own_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model=MODEL, input="a cat", dimensions=64)
    assert bad.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.embeddings.create(model="text-embedding-3-small", input="a cat")
    message = str(missing.value)
    assert "text-embedding-3-small" in message and MODEL in message
    assert "chat" not in message.split("Available models:")[1]  # only embedding models listed


def test_an_llm_is_not_an_embedding_model(client: TestClient) -> None:
    err = error_of(client.post(EMBEDDINGS, json=body(model="chat")), 400)
    assert err["code"] == "wrong_endpoint" and "/v1/chat/completions" in err["message"]


def test_runner_failures_are_5xx_naming_the_backend(
    client: TestClient, runner: FakeEmbedRunner
) -> None:
    runner.fail_next(ConnectionRefusedError("no runner"))
    err = error_of(client.post(EMBEDDINGS, json=body()), 503)
    assert err["type"] == "service_unavailable" and "'embed'" in err["message"]

    def broken(inputs: list[Any]) -> list[Embedding]:
        return [Embedding(tokens=2, error="RuntimeError: boom") for _ in inputs]

    runner.embed = broken  # type: ignore[method-assign]
    err = error_of(client.post(EMBEDDINGS, json=body()), 502)
    assert "boom" in err["message"] and err["type"] == "backend_error"


# --- models, usage, cache --------------------------------------------------------------------


def test_the_model_is_listed_with_kind_embedding(oai: openai.OpenAI, client: TestClient) -> None:
    listed = {m.id: m for m in oai.models.list()}
    assert (listed[MODEL].model_extra or {})["kind"] == "embedding"
    one = client.get(f"/v1/models/{MODEL}").json()
    assert (one["id"], one["kind"], one["backend"]) == (MODEL, "embedding", "embed")


def test_the_prompt_tokens_count_against_the_keys_tpm(runner: FakeEmbedRunner) -> None:
    key = "sk-embed-secret"
    settings = parse_settings({"auth": {"keys": [{"name": "e", "sha256": digest(key), "tpm": 10}]}})
    headers = {"Authorization": f"Bearer {key}"}
    with make_client(runner, settings) as client:
        first = client.post(EMBEDDINGS, json=body(input=["a b c", "d"]), headers=headers)
        assert first.status_code == 200 and first.json()["usage"]["prompt_tokens"] == 8
        assert first.headers["x-ratelimit-limit-tokens"] == "10"
        assert client.post(EMBEDDINGS, json=body(), headers=headers).status_code == 200  # 8 < 10
        refused = client.post(EMBEDDINGS, json=body(), headers=headers)  # 8 + 3 > 10
    assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]


def test_embeddings_are_cached_whatever_the_encoding(runner: FakeEmbedRunner) -> None:
    settings = Settings(cache=CacheSettings(models=[MODEL]))
    with make_client(runner, settings) as client:
        first = client.post(EMBEDDINGS, json=body(input=["a", "b"]))
        again = client.post(EMBEDDINGS, json=body(input=["a", "b"], encoding_format="base64"))
        other = client.post(EMBEDDINGS, json=body(input=["a", "b"], dimensions=2))
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert other.headers["x-cache"] == "miss"  # another `dimensions` is another answer
    assert len(runner.sent("embed")) == 2
    decoded = [
        np.frombuffer(base64.b64decode(d["embedding"]), "<f4").tolist()
        for d in again.json()["data"]
    ]
    assert decoded == [d["embedding"] for d in first.json()["data"]]
    assert again.json()["usage"] == first.json()["usage"]


# --- parsing and the adapter alone -----------------------------------------------------------


def test_parse_input_normalizes_the_four_shapes() -> None:
    assert parse_input("a") == ["a"]
    assert parse_input(["a", "b"]) == ["a", "b"]
    assert parse_input([1, 2]) == [[1, 2]]
    assert parse_input([[1], [2, 3]]) == [[1], [2, 3]]
    with pytest.raises(InvalidRequest):
        parse_input(None)


async def test_the_adapter_does_only_embed(runner: FakeEmbedRunner) -> None:
    adapter = EmbedRunnerAdapter("embed", runner)
    with pytest.raises(InvalidRequest, match="does not do 'classify'"):
        await adapter.predict(InferRequest("classify", "fake-embed", b""))
    result = await adapter.predict(InferRequest("embed", "fake-embed", ["x"]))
    assert result.body.vectors.dtype == np.float32 and result.body.vectors.shape[0] == 1
