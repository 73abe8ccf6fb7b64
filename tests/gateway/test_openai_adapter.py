"""The OpenAI adapter against a mocked engine (httpx.MockTransport): bodies, headers, error
mapping, and the byte-for-byte relay of streamed server-sent events."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, cast

import httpx
import pytest

from gateway.adapters.base import InferRequest, Task
from gateway.adapters.openai import OpenAIAdapter, make_client
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)

BACKEND = "vllm"
READ_TIMEOUT_S = 7.0
CHAT = {
    "model": "tiny-llm",  # the client-facing name; the adapter must replace it
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "top_k": 3,  # an engine-specific parameter the adapter must pass through
}


class RecordingStream(httpx.AsyncByteStream):
    """An upstream response body that records how far it was read and whether it was closed."""

    def __init__(self, chunks: Iterable[bytes], *, error: Exception | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.yielded = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.yielded += 1
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[httpx.Request], httpx.Response]


class Engine:
    """A mocked OpenAI-protocol engine: records every request, answers with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def body(self, i: int = 0) -> Any:
        return json.loads(self.requests[i].content)


def make_adapter(engine: Engine, *, api_key: str | None = None) -> OpenAIAdapter:
    client = httpx.AsyncClient(
        base_url="http://engine:8000",
        transport=httpx.MockTransport(engine),
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=5.0),
    )
    return OpenAIAdapter(BACKEND, client, api_key=api_key)


def chat(payload: dict[str, Any] | None = None, task: Task = "chat") -> InferRequest:
    return InferRequest(task, "tiny-llm-upstream", dict(payload or CHAT))


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Handler:
    if body is None:
        body = {"id": "cmpl-1", "object": "chat.completion", "choices": []}
    if isinstance(body, bytes):
        return lambda _: httpx.Response(status, content=body, **kwargs)
    return lambda _: httpx.Response(status, json=body, **kwargs)


def fail(exc: type[httpx.TransportError], message: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc(message, request=request)

    return handler


def open_stream(adapter: OpenAIAdapter, request: InferRequest) -> AsyncGenerator[bytes, None]:
    """The adapter's stream as the async generator it is, so it can be closed like one."""
    return cast(AsyncGenerator[bytes, None], adapter.stream(request))


async def via_predict(adapter: OpenAIAdapter, request: InferRequest) -> None:
    await adapter.predict(request)


async def via_stream(adapter: OpenAIAdapter, request: InferRequest) -> None:
    """Errors must come before the first chunk, so only the first chunk is asked for."""
    gen = open_stream(adapter, request)
    try:
        await anext(gen)
    finally:
        await gen.aclose()


Call = Callable[[OpenAIAdapter, InferRequest], Awaitable[None]]
BOTH = pytest.mark.parametrize("call", [via_predict, via_stream], ids=["predict", "stream"])


async def collect(adapter: OpenAIAdapter, request: InferRequest) -> list[bytes]:
    return [chunk async for chunk in adapter.stream(request)]


# --- request bodies and headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "path"), [("chat", "/v1/chat/completions"), ("completion", "/v1/completions")]
)
async def test_predict_posts_the_payload_with_the_upstream_model(task: Task, path: str) -> None:
    reply = {"id": "cmpl-7", "object": "chat.completion", "choices": [{"index": 0}]}
    engine = Engine(answer(body=reply))
    adapter = make_adapter(engine)

    result = await adapter.predict(chat({**CHAT, "stream": True}, task=task))

    assert result.body == reply
    (sent,) = engine.requests
    assert (sent.method, sent.url.path) == ("POST", path)
    assert engine.body() == {**CHAT, "model": "tiny-llm-upstream", "stream": False}


async def test_stream_posts_the_payload_with_the_upstream_model_and_stream_on() -> None:
    engine = Engine(lambda _: httpx.Response(200, stream=RecordingStream([b"data: [DONE]\n\n"])))
    adapter = make_adapter(engine)

    await collect(adapter, chat({**CHAT, "stream": False}))

    (sent,) = engine.requests
    assert (sent.method, sent.url.path) == ("POST", "/v1/chat/completions")
    assert engine.body() == {**CHAT, "model": "tiny-llm-upstream", "stream": True}


def either(request: httpx.Request) -> httpx.Response:
    """A JSON completion or a stream of events, as the request asks."""
    if json.loads(request.content)["stream"]:
        return httpx.Response(200, stream=RecordingStream([b"data: [DONE]\n\n"]))
    return httpx.Response(200, json={"id": "cmpl-1", "choices": []})


async def test_api_key_is_sent_as_a_bearer_token() -> None:
    engine = Engine(either)
    adapter = make_adapter(engine, api_key="sk-upstream")

    await adapter.predict(chat())
    await collect(adapter, chat())

    assert [r.headers.get("authorization") for r in engine.requests] == [
        "Bearer sk-upstream",
        "Bearer sk-upstream",
    ]


async def test_no_authorization_header_without_an_api_key() -> None:
    engine = Engine(either)
    adapter = make_adapter(engine)

    await adapter.predict(chat())
    await collect(adapter, chat())

    assert len(engine.requests) == 2
    assert all("authorization" not in r.headers for r in engine.requests)


# --- error mapping ------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("status", "body", "message", "param"),
    [
        (  # OpenAI's shape, as recent vLLM answers
            400,
            {
                "error": {
                    "message": "max_tokens must be at least 1, got 0.",
                    "type": "BadRequestError",
                    "param": "max_tokens",
                    "code": 400,
                }
            },
            "max_tokens must be at least 1, got 0.",
            "max_tokens",
        ),
        (  # older vLLM's flat ErrorResponse
            404,
            {
                "object": "error",
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            },
            "The model `nope` does not exist.",
            "model",
        ),
        (  # FastAPI-style {"detail": ...}
            422,
            {"detail": "messages: field required"},
            "messages: field required",
            None,
        ),
    ],
    ids=["400", "404", "422"],
)
async def test_client_errors_keep_the_engines_message_param_and_status(
    call: Call, status: int, body: Any, message: str, param: str | None
) -> None:
    adapter = make_adapter(Engine(answer(status, body)))

    with pytest.raises(InvalidRequest) as info:
        await call(adapter, chat())

    err = info.value
    assert (err.message, err.param, err.status) == (message, param, status)


@BOTH
async def test_503_is_backend_unavailable_naming_the_backend(call: Call) -> None:
    body = {"error": {"message": "engine is warming up", "param": None}}
    adapter = make_adapter(Engine(answer(503, body)))

    with pytest.raises(BackendUnavailable) as info:
        await call(adapter, chat())

    err = info.value
    assert err.backend == BACKEND
    assert err.message == "Backend 'vllm' is unavailable: engine is warming up"
    assert err.status == 503


@BOTH
@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_are_backend_errors_with_the_status(call: Call, status: int) -> None:
    body = {"error": {"message": "CUDA out of memory", "param": "messages"}}
    adapter = make_adapter(Engine(answer(status, body)))

    with pytest.raises(BackendError) as info:
        await call(adapter, chat())

    err = info.value
    assert type(err) is BackendError  # not the 503/504 subclasses
    assert err.backend == BACKEND
    assert err.message == f"Backend 'vllm' failed: HTTP {status}: CUDA out of memory"
    assert err.status == 502  # the gateway's own status for a failing backend
    assert err.param is None  # an engine's param only matters for the client's own mistakes


@BOTH
@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (400, b"  bad prompt\n", InvalidRequest, "bad prompt"),
        (
            502,
            b"<html><body>502 Bad Gateway</body></html>",
            BackendError,
            "Backend 'vllm' failed: HTTP 502: <html><body>502 Bad Gateway</body></html>",
        ),
        (503, b"", BackendUnavailable, "Backend 'vllm' is unavailable: no details"),
        (500, b"\xff\xfeoops", BackendError, "Backend 'vllm' failed: HTTP 500: \ufffd\ufffdoops"),
    ],
    ids=["400-text", "502-html", "503-empty", "500-not-utf8"],
)
async def test_non_json_error_bodies_are_reported_as_text(
    call: Call, status: int, body: bytes, error: type[GatewayError], message: str
) -> None:
    adapter = make_adapter(Engine(answer(status, body, headers={"content-type": "text/html"})))

    with pytest.raises(GatewayError) as info:
        await call(adapter, chat())

    assert type(info.value) is error
    assert info.value.message == message
    assert info.value.param is None


@BOTH
async def test_long_text_error_bodies_are_cut_to_500_characters(call: Call) -> None:
    adapter = make_adapter(Engine(answer(400, b"x" * 5000)))

    with pytest.raises(InvalidRequest) as info:
        await call(adapter, chat())

    assert info.value.message == "x" * 500


@BOTH
async def test_connection_refused_is_backend_unavailable(call: Call) -> None:
    adapter = make_adapter(Engine(fail(httpx.ConnectError, "[Errno 111] Connection refused")))

    with pytest.raises(BackendUnavailable) as info:
        await call(adapter, chat())

    err = info.value
    assert err.backend == BACKEND
    assert err.message == (
        "Backend 'vllm' is unavailable: ConnectError: [Errno 111] Connection refused"
    )


@BOTH
async def test_a_real_refused_connection_is_backend_unavailable(call: Call) -> None:
    """A port nobody listens on, through make_client's real transport."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = OpenAIAdapter(BACKEND, make_client(f"http://127.0.0.1:{port}", timeout_s=5.0))
    try:
        with pytest.raises(BackendUnavailable) as info:
            await call(adapter, chat())
    finally:
        await adapter.aclose()

    assert type(info.value) is BackendUnavailable
    assert info.value.message.startswith("Backend 'vllm' is unavailable: ConnectError")


@BOTH
@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.ConnectTimeout])
async def test_timeouts_are_backend_timeouts(call: Call, exc: type[httpx.TransportError]) -> None:
    adapter = make_adapter(Engine(fail(exc, "timed out")))

    with pytest.raises(BackendTimeout) as info:
        await call(adapter, chat())

    err = info.value
    assert err.backend == BACKEND
    assert err.message == "Backend 'vllm' did not answer within 7 s"
    assert err.status == 504


async def test_an_error_status_on_a_stream_closes_the_upstream_response() -> None:
    body = RecordingStream([b'{"error": {"message": "bad ', b'n", "param": "n"}}'])
    adapter = make_adapter(Engine(lambda _: httpx.Response(400, stream=body)))

    with pytest.raises(InvalidRequest) as info:
        await via_stream(adapter, chat())

    assert (info.value.message, info.value.param) == ("bad n", "n")  # a body read in two parts
    assert body.closed


# --- stream relay -------------------------------------------------------------------------------

EVENTS = [
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hel',  # split mid-event
    b'lo"}}]}\n\ndata: {"id":"c1","choices":[{"index":0,"delta":{"content":" wor',
    b'ld"}}]}\n',  # split between the two newlines that end an event
    b'\ndata: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


async def test_stream_relays_the_upstream_bytes_unchanged_and_in_order() -> None:
    body = RecordingStream(EVENTS)
    adapter = make_adapter(
        Engine(
            lambda _: httpx.Response(
                200, stream=body, headers={"content-type": "text/event-stream"}
            )
        )
    )

    received = await collect(adapter, chat())

    assert received == EVENTS
    assert body.closed


async def test_stream_yields_each_chunk_as_it_arrives() -> None:
    body = RecordingStream(EVENTS)
    adapter = make_adapter(Engine(lambda _: httpx.Response(200, stream=body)))
    gen = open_stream(adapter, chat())
    try:
        first = await anext(gen)
        assert first == EVENTS[0]
        assert body.yielded == 1  # nothing was buffered ahead of the client
        second = await anext(gen)
        assert second == EVENTS[1]
        assert body.yielded == 2
    finally:
        await gen.aclose()


async def test_a_transport_error_mid_stream_is_a_backend_error() -> None:
    body = RecordingStream(EVENTS[:2], error=httpx.ReadError("connection reset by peer"))
    adapter = make_adapter(Engine(lambda _: httpx.Response(200, stream=body)))
    received: list[bytes] = []

    with pytest.raises(BackendError) as info:
        async for chunk in adapter.stream(chat()):
            received.append(chunk)

    assert received == EVENTS[:2]  # what arrived before the break was relayed
    err = info.value
    assert type(err) is BackendError
    assert err.backend == BACKEND
    assert err.message == (
        "Backend 'vllm' failed: stream broke off: ReadError: connection reset by peer"
    )
    assert body.closed


async def test_closing_the_consumer_early_closes_the_upstream_response() -> None:
    """A client disconnect: the gateway acloses the generator after the first chunk."""
    body = RecordingStream(EVENTS)
    adapter = make_adapter(Engine(lambda _: httpx.Response(200, stream=body)))
    gen = open_stream(adapter, chat())

    assert await anext(gen) == EVENTS[0]
    assert not body.closed
    await gen.aclose()

    assert body.closed
    assert body.yielded == 1  # the rest of the upstream stream was not read
