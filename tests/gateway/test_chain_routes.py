"""Chains on /v1/chat/completions and /v1/models in process, over fake backends, with the
`openai` client: OpenAI's multimodal parts read, bad ones refused with a 400 saying what to send."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from contract.vision import Prediction
from gateway.adapters.base import InferResponse, Transcript
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from settings import SettingsError, parse_settings
from tests.fakes import FakeAdapter

ROUTES = [Route("llm", "llm", "llm", "llm"), Route("resnet", "image", "vision", "resnet"),
          Route("whisper", "speech", "speech", "whisper")]  # fmt: skip
CHAINS = {
    "voice": {"steps": [{"model": "whisper", "task": "transcribe"},
                        {"model": "llm", "task": "chat", "input": "{text}"}]},
    "look": {"steps": [{"model": "resnet", "task": "classify"},
                       {"model": "llm", "task": "chat", "input": "{labels}: {prompt}"}]},
}  # fmt: skip
DATA_URL = "data:image/png;base64," + base64.b64encode(b"PNG bytes").decode()
ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "llm",
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "fine"}}]}  # fmt: skip


@pytest.fixture
def adapters() -> dict[str, FakeAdapter]:
    return {name: FakeAdapter(name) for name in ("llm", "vision", "speech")}


@pytest.fixture
def client(adapters: dict[str, FakeAdapter]) -> Iterator[TestClient]:
    app = create_app()
    router = Router(Registry(ROUTES), adapters)
    install(app, settings=parse_settings({"chains": CHAINS}), router=router)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def oai(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0
    )


def image(url: str = DATA_URL) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def said(*parts: Any) -> list[Any]:
    return [{"role": "system", "content": "ignored"}, {"role": "user", "content": list(parts)}]


def test_models_lists_chains_beside_models(oai: openai.OpenAI) -> None:
    listed = {m.id: m.model_extra or {} for m in oai.models.list()}
    assert listed["voice"] == {
        "kind": "chain",
        "backend": "chain",
        "input": ["audio"],
        "steps": [{"model": "whisper", "task": "transcribe"}, {"model": "llm", "task": "chat"}],
    }
    assert listed["llm"]["kind"] == "llm"
    assert oai.models.retrieve("look").model_extra == {**listed["look"]}


def test_an_image_url_part_and_the_text_feed_the_chain(
    oai: openai.OpenAI, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["vision"].enqueue(InferResponse([Prediction(label="cat", index=0, score=0.9)]))
    adapters["llm"].enqueue(InferResponse(ANSWER))
    answer = oai.chat.completions.create(
        model="look", messages=said({"type": "text", "text": "Sure?"}, image())
    )
    assert adapters["vision"].requests[0].payload == b"PNG bytes"
    user = adapters["llm"].requests[0].payload["messages"][-1]
    assert user == {"role": "user", "content": "cat: Sure?"}
    assert [s["output"] for s in (answer.model_extra or {})["chain"]] == ["cat", "fine"]


def test_an_input_audio_part_feeds_transcribe_and_the_answer_streams(
    oai: openai.OpenAI, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["speech"].enqueue(InferResponse(Transcript("hello", "en", 1.0, ())))
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "llm",
             "choices": [{"index": 0, "delta": {"content": "hi"}}]}  # fmt: skip
    usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1,
                                               "total_tokens": 3}}  # fmt: skip
    events = [f"data: {json.dumps(e)}\n\n".encode() for e in (chunk, usage)]
    adapters["llm"].enqueue([*events, b"data: [DONE]\n\n"])
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF").decode(),
                                                    "format": "wav"}}  # fmt: skip
    chunks = list(oai.chat.completions.create(model="voice", messages=said(audio), stream=True))
    assert adapters["speech"].requests[0].payload == b"RIFF"
    assert (chunks[0].model_extra or {})["chain"][0]["output"] == "hello"
    assert [c.choices[0].delta.content for c in chunks] == ["hi"]  # usage not asked for: dropped
    sent = adapters["llm"].requests[0].payload
    assert sent["stream"] is True and sent["messages"] == [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("parts", "param", "says"),
    [
        ([image("https://example.com/a.png")], "messages[1].content[0].image_url.url",
         "not fetched (scheme 'https'): send the image inline as a data: URL"),
        ([image("data:text/plain;base64,aGk=")], "messages[1].content[0].image_url.url",
         "expected data:image/<type>;base64"),
        ([image("data:image/png;base64,***")], "messages[1].content[0].image_url.url",
         "not valid base64"),
        ([image(), image()], "messages[1].content[1]", "takes one image part"),
        ([{"type": "text", "text": "no image"}], "messages[1].content",
         "starts from image: send it as an 'image_url' part"),
        ([image(), {"type": "input_audio", "input_audio": {"data": "aGk="}}],
         "messages[1].content", "reads no audio"),
        ([{"type": "file", "file": {}}], "messages[1].content[0]", "not 'file'"),
    ],
)  # fmt: skip
def test_bad_parts_are_a_400_naming_the_part(
    client: TestClient, parts: list[Any], param: str, says: str
) -> None:
    r = client.post("/v1/chat/completions", json={"model": "look", "messages": said(*parts)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert says in error["message"]


def test_a_chain_needs_a_user_message(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "voice", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_bad_chain_fails_the_apps_start() -> None:
    settings = parse_settings({"chains": {"x": {"steps": [{"model": "gpt", "task": "chat"}]}}})
    with pytest.raises(SettingsError, match=r"chains\.x\.steps\[1\]: 'gpt' is not a model"):
        install(create_app(), settings=settings, router=Router(Registry(ROUTES), {
            "llm": FakeAdapter("llm"), "vision": FakeAdapter("vision"),
            "speech": FakeAdapter("speech")}))  # fmt: skip
