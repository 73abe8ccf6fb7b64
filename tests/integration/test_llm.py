"""The LLM path through the real bundle: openai client -> gateway -> bundled vLLM."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

MODEL = "demo-llm"


@pytest.fixture(scope="module")
def client(bundle_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bundle_url}/v1", api_key="unused", max_retries=0)


def test_models_lists_all_three_modalities(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"demo-llm", "demo-resnet", "demo-whisper"} <= set(models)
    assert (models[MODEL].model_extra or {})["kind"] == "llm"
    assert (models["demo-resnet"].model_extra or {})["kind"] == "image"
    assert (models["demo-whisper"].model_extra or {})["kind"] == "speech"


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 8


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_unknown_model_is_404_in_openai_shape(bundle_url: str) -> None:
    r = httpx.post(
        f"{bundle_url}/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    assert "demo-llm" in r.json()["error"]["message"]
