"""BentoML's own clients against the real bundle: the Gateway's typed APIs answer what the
HTTP routes answer, and /docs shows them."""

from __future__ import annotations

from pathlib import Path

import bentoml
import httpx
import pytest

from tests.media import audio_bytes, image_bytes, noise_image, tone

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("bentoml-clients")
    image, audio = directory / "cat.png", directory / "talk.wav"
    image.write_bytes(image_bytes(noise_image(7)))
    audio.write_bytes(audio_bytes(tone(2.0, 330, 16_000), 16_000))
    return image, audio


@pytest.fixture(scope="module")
def client(bundle_url: str) -> bentoml.SyncHTTPClient:
    with bentoml.SyncHTTPClient(bundle_url, timeout=120) as c:
        yield c


def test_the_client_finds_the_gateways_typed_apis(client: bentoml.SyncHTTPClient) -> None:
    names = set(client.endpoints)
    assert {"chat", "chat_stream", "complete", "complete_stream", "classify", "transcribe",
            "embed"} <= names  # fmt: skip


def test_classify_answers_what_the_http_route_answers(
    client: bentoml.SyncHTTPClient, bundle_url: str, files: tuple[Path, Path]
) -> None:
    image, _ = files
    typed = client.classify(image=image, top_k=3)
    http = httpx.post(
        f"{bundle_url}/v1/images/classifications",
        data={"model": "demo-resnet", "top_k": "3"},
        files={"file": ("cat.png", image.read_bytes(), "image/png")},
        timeout=60,
    ).json()["predictions"]
    assert [(p["label"], round(p["score"], 5)) for p in typed] == [
        (p["label"], round(p["score"], 5)) for p in http
    ]


def test_transcribe_answers_verbose_json(
    client: bentoml.SyncHTTPClient, bundle_url: str, files: tuple[Path, Path]
) -> None:
    _, audio = files
    typed = client.transcribe(audio=audio)
    http = httpx.post(
        f"{bundle_url}/v1/audio/transcriptions",
        data={"model": "demo-whisper", "response_format": "verbose_json"},
        files={"file": ("talk.wav", audio.read_bytes(), "audio/wav")},
        timeout=60,
    ).json()
    assert typed["text"] == http["text"] and typed["duration"] == http["duration"] == 2.0
    assert typed["task"] == "transcribe" and len(typed["segments"]) == 1


def test_chat_and_its_stream(client: bentoml.SyncHTTPClient) -> None:
    messages = [{"role": "user", "content": "Say hello"}]
    answer = client.chat(messages=messages, max_tokens=8, options={"ignore_eos": True})
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 8
    pieces = list(
        client.chat_stream(
            messages=messages, max_tokens=8, temperature=0, options={"ignore_eos": True}
        )
    )
    greedy = client.chat(
        messages=messages, max_tokens=8, temperature=0, options={"ignore_eos": True}
    )
    assert len(pieces) > 1 and "".join(pieces) == greedy["choices"][0]["message"]["content"]


def test_an_error_keeps_its_status_and_message(client: bentoml.SyncHTTPClient) -> None:
    with pytest.raises(bentoml.exceptions.BentoMLException) as err:
        client.chat(messages=[{"role": "user", "content": "hi"}], model="no-such-model")
    assert err.value.error_code == 404 and "no-such-model" in str(err.value)


async def test_the_async_client_classifies_too(bundle_url: str, files: tuple[Path, Path]) -> None:
    image, _ = files
    async with bentoml.AsyncHTTPClient(bundle_url, timeout=120) as client:
        predictions = await client.classify(image=image, top_k=2)
    assert len(predictions) == 2 and predictions[0]["score"] >= predictions[1]["score"]


def test_docs_and_the_openapi_documents(bundle_url: str) -> None:
    docs = httpx.get(f"{bundle_url}/docs", timeout=10, follow_redirects=True)
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    bentoml_spec = httpx.get(f"{bundle_url}/docs.json", timeout=10).json()
    assert {"/classify", "/chat", "/transcribe"} <= set(bentoml_spec["paths"])
    http_spec = httpx.get(f"{bundle_url}/openapi.json", timeout=10).json()
    routes = {"/v1/chat/completions", "/v1/images/classifications", "/v2/models/{model}/infer"}
    assert routes <= set(http_spec["paths"])


def test_embed_answers_what_the_http_route_answers(
    client: bentoml.SyncHTTPClient, bundle_url: str
) -> None:
    typed = client.embed(texts=["a cat", "a dog"])
    http = httpx.post(
        f"{bundle_url}/v1/embeddings",
        json={"model": "demo-embed", "input": ["a cat", "a dog"]},
        timeout=60,
    ).json()["data"]
    assert len(typed) == 2 and typed[0] != typed[1]
    assert [round(x, 5) for x in typed[1]] == [round(x, 5) for x in http[1]["embedding"]]
