"""Chains of models through the real bundle and the real `openai` client: bundle.yaml's two
(voice-chat, describe-image) and the routing stack's own ensemble (look-and-listen), streamed and
not; and, on a gateway of this module's own with API keys, a chain of this module's configuration,
a step's model the key may not use, and a step whose backend is down."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.scope.keys import digest
from tests.integration.conftest import RoutingStack
from tests.integration.prometheus import metric_value
from tests.media import audio_bytes, image_bytes, noise_image, tone
from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess, free_port, start_together
from tests.servers.upstream import upstream_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0, "seed": 3}
WAV = audio_bytes(tone(1.0, 440, 16_000), 16_000)
PNG = image_bytes(noise_image(7))
KEY = "sk-chains-test"


def audio_part(data: bytes = WAV) -> dict[str, Any]:
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}  # fmt: skip


def image_part(url: str | None = None) -> dict[str, Any]:
    url = url or "data:image/png;base64," + base64.b64encode(PNG).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def said(*parts: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": list(parts)}]


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


@pytest.fixture(scope="module")
def client(stack: RoutingStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def transcript(stack: RoutingStack) -> str:
    """What the bundle's Whisper hears in WAV on its own route."""
    r = httpx.post(f"{stack.url}/v1/audio/transcriptions", data={"model": "demo-whisper"},
                   files={"file": ("a.wav", WAV, "audio/wav")}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    return str(r.json()["text"]).strip()


@pytest.fixture(scope="module")
def labels(stack: RoutingStack) -> list[str]:
    """The bundle's ResNet's labels for PNG on its own route, best first."""
    r = httpx.post(f"{stack.url}/v1/images/classifications", data={"model": "demo-resnet"},
                   files={"file": ("i.png", PNG, "image/png")}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    return [p["label"] for p in r.json()["predictions"]]


def chain_of(response: Any) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = (response.model_extra or {})["chain"]
    return chain


def test_models_lists_the_chains_with_their_steps(client: openai.OpenAI) -> None:
    models = {m.id: m.model_extra or {} for m in client.models.list()}
    assert models["voice-chat"]["kind"] == "chain"
    assert models["voice-chat"]["input"] == ["audio"]
    assert models["describe-image"]["steps"] == [
        {"model": "demo-resnet", "task": "classify"},
        {"model": "demo-llm", "task": "chat"},
    ]
    assert models["look-and-listen"]["input"] == ["audio", "image"]
    assert client.models.retrieve("voice-chat").model_extra["kind"] == "chain"  # type: ignore[index]


def test_voice_chat_answers_what_whisper_heard(
    client: openai.OpenAI, stack: RoutingStack, transcript: str
) -> None:
    answer = client.chat.completions.create(
        model="voice-chat", messages=said(audio_part()), **GREEDY
    )
    steps = chain_of(answer)
    assert [(s["step"], s["model"], s["task"]) for s in steps] == [
        (1, "demo-whisper", "transcribe"),
        (2, "demo-llm", "chat"),
    ]
    assert steps[0]["output"] == transcript
    assert steps[1]["output"] == (answer.choices[0].message.content or "").strip()
    # The answer is the LLM's own to the transcript under the chain's system message.
    direct = client.chat.completions.create(
        model="demo-llm",
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": transcript}],
        **GREEDY,
    )  # fmt: skip
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 8


def test_voice_chat_streams_its_last_step(client: openai.OpenAI, transcript: str) -> None:
    whole = client.chat.completions.create(
        model="voice-chat", messages=said(audio_part()), **GREEDY
    )
    chunks = list(
        client.chat.completions.create(
            model="voice-chat", messages=said(audio_part()), stream=True, **GREEDY
        )
    )
    steps = chain_of(chunks[0])
    assert steps == [
        {"step": 1, "model": "demo-whisper", "task": "transcribe", "output": transcript},
        {"step": 2, "model": "demo-llm", "task": "chat", "output": None},
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.usage is None for c in chunks)  # not asked for: the usage chunk is dropped


def test_describe_image_says_the_classifiers_labels(
    client: openai.OpenAI, labels: list[str]
) -> None:
    answer = client.chat.completions.create(
        model="describe-image", messages=said(image_part()), **GREEDY
    )
    first = chain_of(answer)[0]
    assert first["model"] == "demo-resnet" and first["output"] == ", ".join(labels[:3])
    assert [p["label"] for p in first["predictions"]] == labels[:3]
    assert answer.choices[0].message.content


def test_a_remote_image_url_is_refused_in_openais_error_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="describe-image",
            messages=said(image_part("https://example.com/cat.png")),
            **GREEDY,
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "remote_url_not_supported"
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert "send the image inline as a data: URL" in error["message"]


def test_a_chain_without_its_input_is_told_what_to_send(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"starts from audio.*'input_audio' part"):
        client.chat.completions.create(
            model="voice-chat", messages=[{"role": "user", "content": "hello"}], **GREEDY
        )


def test_an_ensemble_runs_and_logs_every_step_under_one_request_id(
    client: openai.OpenAI, stack: RoutingStack, transcript: str, labels: list[str]
) -> None:
    before = metric_value(stack.url, "gateway_chain_step_duration_seconds_count",
                          chain="look-and-listen", step="2", model="demo-resnet")  # fmt: skip
    raw = client.chat.completions.with_raw_response.create(
        model="look-and-listen",
        messages=said({"type": "text", "text": "What is there?"}, audio_part(), image_part()),
        stream=True,
        **GREEDY,
    )
    stream: Any = raw.parse()
    chunks = list(stream)
    steps = chain_of(chunks[0])
    assert [s["output"] for s in steps[:2]] == [transcript, ", ".join(labels[:2])]
    assert steps[2]["model"] == "remote-llm"
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason  # the answer ran to its end
    request_id = raw.headers["x-request-id"]
    line = access_line(stack.bundle, request_id)
    assert line["model"] == "look-and-listen" and line["status"] == 200
    assert [(s["step"], s["model"], s["status"]) for s in line["chain"]] == [
        (1, "demo-whisper", 200), (2, "demo-resnet", 200), (3, "remote-llm", 200),
    ]  # fmt: skip
    assert line["chain"][1]["backend"] == "vision"
    after = metric_value(stack.url, "gateway_chain_step_duration_seconds_count",
                         chain="look-and-listen", step="2", model="demo-resnet")  # fmt: skip
    assert after == before + 1


def access_line(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """Its line in the gateway's access log, written as the request ends: for a stream, that may
    be just after the client has read its last chunk, so wait a little for it."""
    deadline = time.monotonic() + 5
    while True:
        for text in reversed(server.log_path.read_text(errors="replace").splitlines()):
            if f'"request_id":"{request_id}"' in text and text.startswith("{"):
                line: dict[str, Any] = json.loads(text)
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for request {request_id}")
        time.sleep(0.1)


# --- a gateway of this module's own: keys, a chain of its configuration, a dead backend ----------


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerProcess]:
    """`service:RemoteGateway` with one API key and three chains over a cheap OpenAI upstream
    (the upstream answers `tok ` per token) and an address nothing listens on."""
    upstream = upstream_process(prefill_ms=1, token_ms=1)
    relay: list[dict[str, Any]] = [{"model": "fixed-llm", "task": "chat", "max_tokens": 3},
             {"model": "fixed-llm", "task": "chat", "input": "Again: {text}"}]  # fmt: skip
    config = {
        "auth": {"keys": [{"name": "team-chain", "sha256": digest(KEY),
                           "models": ["relay", "relay-other", "broken", "fixed-llm", "dead-llm"]}]},
        "routing": {
            "backends": {
                "up": {"kind": "openai", "url": upstream.url},
                "dead": {"kind": "openai", "url": f"http://127.0.0.1:{free_port()}",
                         "timeout_s": 5, "retries": 0},
            },
            "models": {"fixed-llm": {"backend": "up"},
                       "other-llm": {"backend": "up", "upstream": "fixed-llm"},
                       "dead-llm": {"backend": "dead"}},
        },
        "chains": {
            "relay": {"steps": relay},
            "relay-other": {"steps": [relay[0], {**relay[1], "model": "other-llm"}]},
            "broken": {"steps": [relay[0], {**relay[1], "model": "dead-llm"}]},
        },
    }  # fmt: skip
    gateway = remote_gateway_process(config)
    servers = (upstream, gateway)
    try:
        start_together(*(s.start for s in servers), aborts=[s.abort for s in servers])
        yield gateway
    finally:
        gateway.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def team(keyed: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0, timeout=60)


ASK: list[Any] = [{"role": "user", "content": "hi"}]


def test_a_chain_of_the_tests_own_configuration_streams_and_counts_every_steps_tokens(
    team: openai.OpenAI, keyed: ServerProcess
) -> None:
    answer = team.chat.completions.create(model="relay", messages=ASK, max_tokens=4)
    assert chain_of(answer) == [
        {"step": 1, "model": "fixed-llm", "task": "chat", "output": "tok tok tok"},
        {"step": 2, "model": "fixed-llm", "task": "chat", "output": "tok tok tok tok"},
    ]
    raw = team.chat.completions.with_raw_response.create(
        model="relay", messages=ASK, max_tokens=4, stream=True
    )
    stream: Any = raw.parse()
    chunks = list(stream)
    assert chain_of(chunks[0])[0]["output"] == "tok tok tok"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 4
    line = access_line(keyed, raw.headers["x-request-id"])
    assert line["key"] == "team-chain" and line["model"] == "relay"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (16, 7)  # both steps' usage


def test_a_step_model_the_key_may_not_use_is_a_403_naming_it(team: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        team.chat.completions.create(model="relay-other", messages=ASK, max_tokens=4)
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "permission_error"
    assert "step 2 (chat on 'other-llm')" in error["message"]
    assert "may not use the model 'other-llm'" in error["message"]


def test_a_failed_step_fails_the_chain_naming_the_step(
    team: openai.OpenAI, keyed: ServerProcess
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            team.chat.completions.create(model="broken", messages=ASK, max_tokens=4, stream=stream)
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"]
        message = str(info.value.body["message"])  # type: ignore[index]
        assert message.startswith("Chain 'broken' failed at step 2 (chat on 'dead-llm'): ")
        assert "Backend 'dead' is unavailable" in message
    assert metric_value(keyed.url, "gateway_chain_step_errors_total",
                        chain="broken", step="2", model="dead-llm", status="503") == 2  # fmt: skip
