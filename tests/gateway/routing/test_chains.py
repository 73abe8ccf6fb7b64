"""Chains: their configuration checked at load and at start, templates, the order steps run in,
and their errors, over fake backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from contract.vision import Prediction
from gateway.adapters.base import InferResponse, Segment, Transcript
from gateway.errors import BackendUnavailable, GatewayError, InvalidRequest
from gateway.routing.chains import Chain, ChainInput, Chains, fill
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.context import RequestContext
from gateway.scope.keys import ApiKey
from settings import ChainSettings, SettingsError, parse_settings
from tests.fakes import FakeAdapter

ROUTES = [
    Route("llm", "llm", "llm", "llm-upstream"),
    Route("resnet", "image", "vision", "resnet"),
    Route("whisper", "speech", "speech", "whisper"),
    Route("scale", "tensor", "triton", "scale"),
]
VOICE = {"steps": [
    {"model": "whisper", "task": "transcribe"},
    {"model": "llm", "task": "chat", "system": "Briefly.", "input": "{text}"},
]}  # fmt: skip
IMAGE = {"steps": [
    {"model": "resnet", "task": "classify", "top_k": 2},
    {"model": "llm", "task": "chat", "input": "It shows {labels}. {prompt}"},
]}  # fmt: skip


def chain(name: str, config: dict[str, Any]) -> Chain:
    return Chain(name, ChainSettings.model_validate(config))


def settings_error(chains: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings({"chains": chains}, source="bad.yaml")
    return str(info.value)


def transcript(text: str) -> InferResponse:
    return InferResponse(Transcript(text, "en", 1.0, (Segment(0, 0.0, 1.0, text),)))


def predictions(*labels: str) -> InferResponse:
    return InferResponse(
        [Prediction(label=label, index=i, score=0.5 - i / 10) for i, label in enumerate(labels)]
    )


def completion(text: str, prompt_tokens: int = 3, completion_tokens: int = 2) -> InferResponse:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return InferResponse({"id": "c1", "object": "chat.completion", "model": "llm-upstream",
                          "choices": [{"index": 0, "message": {"role": "assistant",
                                                               "content": text}}],
                          "usage": usage})  # fmt: skip


@pytest.fixture
def adapters() -> dict[str, FakeAdapter]:
    return {name: FakeAdapter(name) for name in ("llm", "vision", "speech", "triton")}


@pytest.fixture
def router(adapters: dict[str, FakeAdapter]) -> Router:
    return Router(Registry(ROUTES), adapters)


def ctx(key: ApiKey | None = None) -> RequestContext:
    return RequestContext("req-1", "POST", "/v1/chat/completions", key=key)


# --- configuration -------------------------------------------------------------------------


def test_the_last_step_must_answer_the_chat() -> None:
    message = settings_error({"x": {"steps": [{"model": "whisper", "task": "transcribe"}]}})
    assert "chains.x" in message and "the last step must be a chat step" in message


def test_a_template_naming_a_field_no_earlier_step_produces_is_refused() -> None:
    steps = [{"model": "whisper", "task": "transcribe"},
             {"model": "llm", "task": "chat", "input": "It shows {labels}"}]  # fmt: skip
    message = settings_error({"x": {"steps": steps}})
    assert "step 2 (llm)" in message and "'{labels}'" in message
    assert "available: prompt, text" in message


def test_a_template_with_more_than_plain_fields_is_refused() -> None:
    steps = [{"model": "llm", "task": "chat", "input": "{text.__class__}"}]
    assert "not a plain field" in settings_error({"x": {"steps": steps}})
    steps = [{"model": "llm", "task": "chat", "input": "an open { brace"}]
    assert "literal brace" in settings_error({"x": {"steps": steps}})


def test_an_option_of_another_task_is_refused() -> None:
    steps = [{"model": "whisper", "task": "transcribe", "top_k": 3},
             {"model": "llm", "task": "chat"}]  # fmt: skip
    assert "'top_k' is for a classify step, not transcribe" in settings_error(
        {"x": {"steps": steps}}
    )


def test_an_unknown_task_is_refused() -> None:
    steps = [{"model": "llm", "task": "summarize"}]
    assert "chains.x.steps.0.task" in settings_error({"x": {"steps": steps}})


def test_an_unknown_model_fails_the_start_naming_chain_and_step() -> None:
    steps = [{"model": "whisper", "task": "transcribe"}, {"model": "lama", "task": "chat"}]
    settings = parse_settings({"chains": {"x": {"steps": steps}}})
    with pytest.raises(SettingsError, match=r"chains\.x\.steps\[2\]: 'lama' is not a model"):
        Chains.from_settings(settings.chains, Registry(ROUTES))


def test_a_task_the_models_kind_cannot_do_fails_the_start() -> None:
    steps = [{"model": "scale", "task": "classify"}, {"model": "llm", "task": "chat"}]
    settings = parse_settings({"chains": {"x": {"steps": steps}}})
    with pytest.raises(SettingsError, match=r"steps\[1\]: 'scale' is tensor model and cannot "
                                            r"classify \(models that can: resnet\)"):  # fmt: skip
        Chains.from_settings(settings.chains, Registry(ROUTES))


def test_a_chain_may_not_take_a_models_name() -> None:
    settings = parse_settings({"chains": {"llm": VOICE}})
    with pytest.raises(SettingsError, match=r"chains\.llm: the name is a model's already"):
        Chains.from_settings(settings.chains, Registry(ROUTES))


def test_the_bundles_own_chains_load() -> None:
    from gateway.routing.registry import check_routing
    from settings import load_settings

    settings = load_settings()
    chains = Chains.from_settings(settings.chains, check_routing(settings))
    assert {c.name for c in chains} >= {"voice-chat", "describe-image"}


# --- templates and plans -------------------------------------------------------------------


def test_fill_replaces_fields_and_keeps_literal_braces() -> None:
    assert (
        fill("{{json}} {text} / {labels}", {"text": "hi", "labels": "a, b"}) == "{json} hi / a, b"
    )


def test_a_chat_steps_default_input_is_the_previous_steps_output() -> None:
    image = chain("x", {"steps": [{"model": "resnet", "task": "classify"},
                                  {"model": "llm", "task": "chat"}]})  # fmt: skip
    assert image.steps[1].template == "{labels}"
    assert chain("y", {"steps": [{"model": "llm", "task": "chat"}]}).steps[0].template == "{text}"


def test_media_steps_depend_on_nothing_and_the_answer_on_everything() -> None:
    ensemble = chain("x", {"steps": [
        {"model": "whisper", "task": "transcribe"},
        {"model": "resnet", "task": "classify"},
        {"model": "llm", "task": "chat", "input": "{prompt}"},
        {"model": "llm", "task": "chat", "input": "{text} / {labels}"},
    ]})  # fmt: skip
    assert [sorted(s.after) for s in ensemble.steps] == [[], [], [], [1, 2, 3]]
    assert ensemble.media == {"audio", "image"}
    serial = chain("y", {"steps": [{"model": "llm", "task": "chat"},
                                   {"model": "llm", "task": "chat"},
                                   {"model": "llm", "task": "chat"}]})  # fmt: skip
    assert [sorted(s.after) for s in serial.steps] == [[], [1], [1, 2]]


# --- running -------------------------------------------------------------------------------


async def test_a_chain_runs_its_steps_in_order_through_the_router(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["speech"].enqueue(transcript(" what is two and two "))
    adapters["llm"].enqueue(completion("four", 7, 1))
    request = ctx()
    body = {"model": "voice-chat", "messages": [], "max_tokens": 5, "temperature": 0.5}
    answer = await chain("voice-chat", VOICE).complete(
        router, request, ChainInput(audio=b"RIFF"), body
    )
    assert answer["choices"][0]["message"]["content"] == "four"
    assert answer["chain"] == [
        {"step": 1, "model": "whisper", "task": "transcribe", "output": "what is two and two"},
        {"step": 2, "model": "llm", "task": "chat", "output": "four"},
    ]
    sent = adapters["llm"].requests[0]
    assert sent.payload["messages"] == [
        {"role": "system", "content": "Briefly."},
        {"role": "user", "content": "what is two and two"},
    ]
    assert sent.payload["max_tokens"] == 5 and sent.payload["temperature"] == 0.5
    assert sent.model == "llm-upstream" and sent.request_id == "req-1"
    assert adapters["speech"].requests[0].request_id == "req-1"
    assert request.model == "voice-chat" and request.backend == "llm"
    assert [(s["step"], s["model"], s["backend"], s["status"]) for s in request.steps or []] == [
        (1, "whisper", "speech", 200),
        (2, "llm", "llm", 200),
    ]
    assert (request.prompt_tokens, request.completion_tokens) == (7, 1)


async def test_classify_labels_and_the_prompt_fill_the_template(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["vision"].enqueue(predictions("tabby cat", "lynx"))
    adapters["llm"].enqueue(completion("A cat."))
    answer = await chain("describe", IMAGE).complete(
        router, ctx(), ChainInput(text="Is it wild?", image=b"PNG"), {"messages": []}
    )
    assert adapters["vision"].requests[0].options["top_k"] == 2
    user = adapters["llm"].requests[0].payload["messages"][-1]
    assert user == {"role": "user", "content": "It shows tabby cat, lynx. Is it wild?"}
    assert answer["chain"][0]["output"] == "tabby cat, lynx"
    assert [p["label"] for p in answer["chain"][0]["predictions"]] == ["tabby cat", "lynx"]


async def test_independent_steps_run_at_the_same_time(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    loop = asyncio.get_running_loop()
    heard, seen = loop.create_future(), loop.create_future()
    adapters["speech"].enqueue(heard)
    adapters["vision"].enqueue(seen)
    adapters["llm"].enqueue(completion("both"))
    ensemble = chain("x", {"steps": [
        {"model": "whisper", "task": "transcribe"},
        {"model": "resnet", "task": "classify"},
        {"model": "llm", "task": "chat", "input": "{text} / {labels}"},
    ]})  # fmt: skip
    running = asyncio.ensure_future(
        ensemble.complete(router, ctx(), ChainInput(audio=b"a", image=b"i"), {"messages": []})
    )
    await asyncio.sleep(0.01)
    assert len(adapters["speech"].requests) == len(adapters["vision"].requests) == 1
    heard.set_result(transcript("hello"))
    seen.set_result(predictions("dog"))
    answer = await running
    assert adapters["llm"].requests[0].payload["messages"][-1]["content"] == "hello / dog"
    assert [s["step"] for s in answer["chain"]] == [1, 2, 3]


async def test_a_failed_step_fails_the_chain_naming_the_step(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    before = REGISTRY.get_sample_value(
        "gateway_chain_step_errors_total",
        {"chain": "voice", "step": "1", "model": "whisper", "status": "503"},
    )
    adapters["speech"].enqueue(BackendUnavailable("speech", "ConnectError: refused"))
    request = ctx()
    with pytest.raises(GatewayError) as info:
        await chain("voice", VOICE).complete(router, request, ChainInput(audio=b"a"), {})
    err = info.value
    assert err.status == 503 and err.type == "service_unavailable"
    assert err.message.startswith("Chain 'voice' failed at step 1 (transcribe on 'whisper'): ")
    assert "Backend 'speech' is unavailable" in err.message
    assert adapters["llm"].requests == []  # nothing after the failed step
    assert request.steps and request.steps[0]["status"] == 503
    after = REGISTRY.get_sample_value(
        "gateway_chain_step_errors_total",
        {"chain": "voice", "step": "1", "model": "whisper", "status": "503"},
    )
    assert (after or 0) - (before or 0) == 1


async def test_a_step_model_the_key_may_not_use_is_a_403_before_any_work(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    key = ApiKey("team", "0" * 64, models=("voice", "whisper"))
    with pytest.raises(GatewayError) as info:
        await chain("voice", VOICE).complete(router, ctx(key), ChainInput(audio=b"a"), {})
    assert info.value.status == 403 and info.value.type == "permission_error"
    assert "step 2 (chat on 'llm')" in info.value.message
    assert "may not use the model 'llm'" in info.value.message
    assert adapters["speech"].requests == []


async def test_a_client_error_of_a_step_stays_a_client_error(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["speech"].enqueue(transcript("hi"))
    adapters["llm"].enqueue(InvalidRequest("max_tokens is too large", param="max_tokens"))
    with pytest.raises(GatewayError) as info:
        await chain("voice", VOICE).complete(router, ctx(), ChainInput(audio=b"a"), {})
    assert info.value.status == 400 and info.value.param == "max_tokens"
    assert info.value.type == "invalid_request_error"
    assert "step 2 (chat on 'llm')" in info.value.message


async def test_the_streamed_answer_carries_the_chain_in_its_first_event(
    router: Router, adapters: dict[str, FakeAdapter]
) -> None:
    adapters["speech"].enqueue(transcript("hi"))
    first = b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    adapters["llm"].enqueue([first, b'data: {"id":"c","choices":[]}\n\n', b"data: [DONE]\n\n"])
    request = ctx()
    opened = await chain("voice", VOICE).open_stream(
        router, request, ChainInput(audio=b"a"), {"stream": True}
    )
    chunks = [chunk async for chunk in opened.chunks()]
    assert chunks[0].startswith(b'data: {"id":"c","choices":')
    assert b'"chain":[{"step":1,"model":"whisper","task":"transcribe","output":"hi"},' in chunks[0]
    assert b'{"step":2,"model":"llm","task":"chat","output":null}]' in chunks[0]
    assert adapters["llm"].requests[0].payload["stream"] is True
    assert request.steps and request.steps[-1]["step"] == 2
