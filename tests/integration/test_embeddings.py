"""Embeddings through the real bundle: openai client -> gateway -> batched embedding runner.

The bundle serves `demo-embed` (models/demo_embed.py: a tiny random BERT, mean pooling,
normalized, 128 dimensions, 512 tokens), created by `python -m models demo`.
"""

from __future__ import annotations

import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.integration.batching import batch_counts

pytestmark = pytest.mark.integration

MODEL = "demo-embed"
DIMENSIONS, MAX_TOKENS = 128, 512
TEXTS = [
    "The tabby cat sleeps in the sun.",
    "A red fox crossed the field at dawn, and a great white shark swam far out in the sea.",
    "coffee",
]


@pytest.fixture(scope="module")
def client(bundle_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bundle_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """demo-embed's own tokenizer, from the model store the bundle serves from."""
    from transformers import AutoTokenizer

    from models import store
    from settings import get_settings

    return AutoTokenizer.from_pretrained(store.resolve(get_settings().embed.model).path)


def vectors(result: Any) -> np.ndarray:
    return np.asarray([d.embedding for d in result.data], dtype=np.float32)


def test_the_model_is_listed_as_an_embedding_model(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert (models[MODEL].model_extra or {})["kind"] == "embedding"
    assert (client.models.retrieve(MODEL).model_extra or {})["backend"] == "embed"


def test_a_string_and_a_list_in_openais_shape(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert (one.object, one.model, len(one.data)) == ("list", MODEL, 1)
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    assert len(one.data[0].embedding) == DIMENSIONS
    many = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    found = vectors(many)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(found[0], vectors(one)[0], atol=1e-5)  # batched or alone
    assert not np.allclose(found[0], found[1], atol=1e-3)


def test_usage_is_the_models_token_count(client: openai.OpenAI, tokenizer: Any) -> None:
    result = client.embeddings.create(model=MODEL, input=TEXTS)
    counts = [len(tokenizer(text)["input_ids"]) for text in TEXTS]  # [CLS] ... [SEP] included
    assert result.usage.prompt_tokens == result.usage.total_tokens == sum(counts)


def test_base64_is_little_endian_float32_and_the_client_decodes_it(
    client: openai.OpenAI, bundle_url: str
) -> None:
    floats = vectors(client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    decoded = vectors(client.embeddings.create(model=MODEL, input=TEXTS))  # asks for base64
    np.testing.assert_allclose(decoded, floats, atol=1e-6)
    raw = httpx.post(
        f"{bundle_url}/v1/embeddings",
        json={"model": MODEL, "input": TEXTS, "encoding_format": "base64"},
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    for item, expected in zip(raw.json()["data"], floats, strict=True):
        vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_token_ids_embed_like_their_text(client: openai.OpenAI, tokenizer: Any) -> None:
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    by_text = vectors(client.embeddings.create(model=MODEL, input=TEXTS))
    by_ids = client.embeddings.create(model=MODEL, input=ids)
    np.testing.assert_allclose(vectors(by_ids), by_text, atol=1e-5)
    single = client.embeddings.create(model=MODEL, input=ids[2])
    np.testing.assert_allclose(vectors(single)[0], by_text[2], atol=1e-5)
    assert single.usage.prompt_tokens == len(ids[2])


def test_dimensions_shorten_and_renormalize(client: openai.OpenAI) -> None:
    full = vectors(client.embeddings.create(model=MODEL, input=TEXTS))
    short = vectors(client.embeddings.create(model=MODEL, input=TEXTS, dimensions=32))
    assert short.shape == (len(TEXTS), 32)
    head = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(short, head, atol=1e-5)


def test_more_inputs_than_a_batch_come_back_in_order(client: openai.OpenAI) -> None:
    texts = [f"{TEXTS[i % 3]} number {i}" for i in range(100)]  # BentoML splits at 32
    together = vectors(client.embeddings.create(model=MODEL, input=texts))
    assert together.shape == (100, DIMENSIONS)
    for i in (0, 31, 32, 99):
        alone = vectors(client.embeddings.create(model=MODEL, input=texts[i]))[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-5)


def test_concurrent_requests_are_batched_without_mixing_up_answers(
    client: openai.OpenAI, bundle_url: str
) -> None:
    texts = [f"{TEXTS[i % 3]} request {i}" for i in range(16)]

    def embed(text: str) -> np.ndarray:
        return vectors(client.embeddings.create(model=MODEL, input=text))[0]

    def burst() -> list[np.ndarray]:
        with ThreadPoolExecutor(len(texts)) as pool:
            return list(pool.map(embed, texts))

    with contextlib.suppress(openai.APIStatusError):
        burst()  # trains BentoML's latency model on a batch (see test_vision.py)
    alone = [embed(text) for text in texts]
    _, multi_before = batch_counts(bundle_url, "embed")
    together = burst()
    for got, expected in zip(together, alone, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    _, multi_after = batch_counts(bundle_url, "embed")
    assert multi_after > multi_before, "no batch of more than one input was formed"


@pytest.mark.parametrize(
    ("kwargs", "error", "param", "message"),
    [
        ({"input": " ".join(["coffee"] * 600)}, openai.BadRequestError, "input", "512 tokens"),
        ({"input": [[2, 10**6, 3]]}, openai.BadRequestError, "input", "token ids"),
        ({"input": ""}, openai.BadRequestError, "input", "empty"),
        ({"input": ["a"] * 2049}, openai.BadRequestError, "input", "2048"),
        ({"input": "a", "dimensions": DIMENSIONS + 1}, openai.BadRequestError, "dimensions", "128"),
        ({"input": "a", "model": "nope"}, openai.NotFoundError, "model", MODEL),
    ],
)
def test_bad_input_is_4xx_in_openai_shape_and_the_next_request_succeeds(
    client: openai.OpenAI,
    kwargs: dict[str, Any],
    error: type[openai.APIStatusError],
    param: str,
    message: str,
) -> None:
    with pytest.raises(error) as info:
        client.embeddings.create(**{"model": MODEL, **kwargs})
    body = info.value.body
    assert isinstance(body, dict) and body.get("param") == param, body
    assert message in str(body.get("message")), body
    assert len(client.embeddings.create(model=MODEL, input="fine").data) == 1


def test_an_over_long_input_fails_only_its_own_request(
    client: openai.OpenAI, tokenizer: Any
) -> None:
    """Refused per item in the runner: a request batched with it still gets its vectors."""
    long_text = " ".join(["coffee"] * 600)
    assert len(tokenizer(long_text)["input_ids"]) > MAX_TOKENS

    def call(text: str) -> str:
        try:
            client.embeddings.create(model=MODEL, input=text)
        except openai.BadRequestError as exc:
            assert isinstance(exc.body, dict) and exc.body.get("code") == "context_length_exceeded"
            return "refused"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, [long_text, *TEXTS, long_text, *TEXTS]))
    assert answers == ["refused", "ok", "ok", "ok"] * 2
