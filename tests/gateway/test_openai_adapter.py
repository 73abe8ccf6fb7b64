"""The OpenAI adapter against a real HTTP engine in the test's event loop (an aiohttp web
server on a free port or a Unix socket): bodies, headers, error mapping, timeouts, and the
byte-for-byte relay of streamed server-sent events, including a cut stream and a client that
goes away."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from gateway.adapters.base import InferRequest, Task
from gateway.adapters.openai import OpenAIAdapter, make_client
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)

BACKEND = "vllm"
CHAT = {
    "model": "tiny-llm",  # the client-facing name; the adapter must replace it
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "top_k": 3,  # an engine-specific parameter the adapter must pass through
}
EVENTS = [
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hel',  # split mid-event
    b'lo"}}]}\n\ndata: {"id":"c1","choices":[{"index":0,"delta":{"content":" wor',
    b'ld"}}]}\n',  # split between the two newlines that end an event
    b'\ndata: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Engine:
    """An OpenAI-protocol engine on a real socket: records every request, answers with
    `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []  # method, path, headers

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append((request.method, request.path, dict(request.headers), body))
        return await self.handler(request)

    def body(self, i: int = 0) -> Any:
        return self.requests[i][3]

    def headers(self, i: int = 0) -> dict[str, str]:
        return {k.lower(): v for k, v in self.requests[i][2].items()}


@asynccontextmanager
async def serving(
    handler: Handler,
    *,
    api_key: str | None = None,
    timeout_s: float = 7.0,
    unix: Path | None = None,
) -> AsyncIterator[tuple[OpenAIAdapter, Engine]]:
    engine = Engine(handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site: web.BaseSite
    if unix is not None:
        site, url = web.UnixSite(runner, str(unix)), f"file://{unix}"
    else:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    if unix is None:
        port = cast(Any, site)._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
    adapter = OpenAIAdapter(BACKEND, make_client(url, timeout_s=timeout_s), api_key=api_key)
    try:
        yield adapter, engine
    finally:
        await adapter.aclose()
        await runner.cleanup()


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Handler:
    if body is None:
        body = {"id": "cmpl-1", "object": "chat.completion", "choices": []}

    async def handler(_: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, **kwargs)
        return web.json_response(body, status=status, **kwargs)

    return handler


def streaming(
    chunks: list[bytes], *, status: int = 200, gate: list[asyncio.Event] | None = None
) -> tuple[Handler, dict[str, int]]:
    """A chunked response written one chunk per write; with `gate`, chunk i+1 waits for
    gate[i]. The returned dict counts the chunks written."""
    seen = {"written": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            if gate is not None and i > 0:
                await gate[i - 1].wait()
            await response.write(chunk)
            seen["written"] += 1
        await response.write_eof()
        return response

    return handler, seen


def chat(payload: dict[str, Any] | None = None, task: Task = "chat") -> InferRequest:
    return InferRequest(task, "tiny-llm-upstream", dict(payload or CHAT))


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


async def either(request: web.Request) -> web.StreamResponse:
    """A JSON completion or a stream of events, as the request asks; 200 to a health check."""
    if request.method == "GET":
        return web.Response(text="ok")
    if (await request.json())["stream"]:
        return await streaming([b"data: [DONE]\n\n"])[0](request)
    return web.json_response({"id": "cmpl-1", "choices": []})


# --- request bodies and headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "path"), [("chat", "/v1/chat/completions"), ("completion", "/v1/completions")]
)
async def test_predict_posts_the_payload_with_the_upstream_model(task: Task, path: str) -> None:
    reply = {"id": "cmpl-7", "object": "chat.completion", "choices": [{"index": 0}]}
    async with serving(answer(body=reply)) as (adapter, engine):
        result = await adapter.predict(chat({**CHAT, "stream": True}, task=task))

    assert result.body == reply
    ((method, sent_path, _, body),) = engine.requests
    assert (method, sent_path) == ("POST", path)
    assert body == {**CHAT, "model": "tiny-llm-upstream", "stream": False}


async def test_stream_posts_the_payload_with_the_upstream_model_and_stream_on() -> None:
    async with serving(streaming([b"data: [DONE]\n\n"])[0]) as (adapter, engine):
        await collect(adapter, chat({**CHAT, "stream": False}))

    ((method, path, _, body),) = engine.requests
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert body == {**CHAT, "model": "tiny-llm-upstream", "stream": True}


async def test_api_key_and_request_id_are_sent() -> None:
    async with serving(either, api_key="sk-upstream") as (adapter, engine):
        request = InferRequest("chat", "tiny-llm-upstream", dict(CHAT), request_id="req-42")
        await adapter.predict(request)
        await collect(adapter, request)

    for i in range(2):
        assert engine.headers(i)["authorization"] == "Bearer sk-upstream"
        assert engine.headers(i)["x-request-id"] == "req-42"


async def test_no_authorization_header_without_an_api_key() -> None:
    async with serving(either) as (adapter, engine):
        await adapter.predict(chat())
        await collect(adapter, chat())

    assert len(engine.requests) == 2
    assert all("authorization" not in engine.headers(i) for i in range(2))


async def test_a_unix_socket_url_reaches_the_engine(tmp_path: Path) -> None:
    """`file:///path.sock`, as BentoML wires services on one host."""
    async with serving(either, unix=tmp_path / "engine.sock") as (adapter, _):
        assert (await adapter.predict(chat())).body == {"id": "cmpl-1", "choices": []}
        assert await collect(adapter, chat()) == [b"data: [DONE]\n\n"]
        assert await adapter.health()


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
    async with serving(answer(status, body)) as (adapter, _):
        with pytest.raises(InvalidRequest) as info:
            await call(adapter, chat())

    err = info.value
    assert (err.message, err.param, err.status) == (message, param, status)


@BOTH
async def test_503_is_backend_unavailable_naming_the_backend(call: Call) -> None:
    body = {"error": {"message": "engine is warming up", "param": None}}
    async with serving(answer(503, body)) as (adapter, _):
        with pytest.raises(BackendUnavailable) as info:
            await call(adapter, chat())

    err = info.value
    assert err.backend == BACKEND
    assert err.message == "Backend 'vllm' is unavailable: engine is warming up"
    assert err.status == 503


@BOTH
async def test_429_is_an_overload_with_the_upstreams_retry_after(call: Call) -> None:
    body = {"error": {"message": "too many requests"}}
    async with serving(answer(429, body, headers={"Retry-After": "7"})) as (adapter, _):
        with pytest.raises(BackendOverloaded) as info:
            await call(adapter, chat())

    assert info.value.status == 503
    assert info.value.headers == {"Retry-After": "7"}
    assert info.value.message == (
        "Backend 'vllm' is overloaded, retry after 7 s: too many requests"
    )


@BOTH
@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_are_backend_errors_with_the_status(call: Call, status: int) -> None:
    body = {"error": {"message": "CUDA out of memory", "param": "messages"}}
    async with serving(answer(status, body)) as (adapter, _):
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
    handler = answer(status, body, headers={"Content-Type": "text/html"})
    async with serving(handler) as (adapter, _):
        with pytest.raises(GatewayError) as info:
            await call(adapter, chat())

    assert type(info.value) is error
    assert info.value.message == message
    assert info.value.param is None


@BOTH
async def test_long_text_error_bodies_are_cut_to_500_characters(call: Call) -> None:
    async with serving(answer(400, b"x" * 5000)) as (adapter, _):
        with pytest.raises(InvalidRequest) as info:
            await call(adapter, chat())

    assert info.value.message == "x" * 500


async def test_a_200_that_is_not_json_is_a_backend_error() -> None:
    async with serving(answer(200, b"<html>hello</html>")) as (adapter, _):
        with pytest.raises(BackendError) as info:
            await adapter.predict(chat())

    assert info.value.message == "Backend 'vllm' failed: the answer is not JSON"


@BOTH
async def test_a_refused_connection_is_backend_unavailable(call: Call) -> None:
    """A port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = OpenAIAdapter(BACKEND, make_client(f"http://127.0.0.1:{port}", timeout_s=5.0))
    try:
        with pytest.raises(BackendUnavailable) as info:
            await call(adapter, chat())
        assert not await adapter.health()
    finally:
        await adapter.aclose()

    assert type(info.value) is BackendUnavailable
    assert info.value.message.startswith("Backend 'vllm' is unavailable: ClientConnectorError")
    assert f"127.0.0.1:{port}" in info.value.message


@BOTH
async def test_an_engine_that_does_not_answer_in_time_is_a_backend_timeout(call: Call) -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    async with serving(slow, timeout_s=0.2) as (adapter, _):
        with pytest.raises(BackendTimeout) as info:
            await call(adapter, chat())

    err = info.value
    assert err.backend == BACKEND
    assert err.message == "Backend 'vllm' did not answer within 0.2 s"
    assert err.status == 504


async def test_an_error_status_on_a_stream_reads_its_whole_body() -> None:
    handler, _ = streaming([b'{"error": {"message": "bad ', b'n", "param": "n"}}'], status=400)
    async with serving(handler) as (adapter, _):
        with pytest.raises(InvalidRequest) as info:
            await via_stream(adapter, chat())

    assert (info.value.message, info.value.param) == ("bad n", "n")  # a body read in two parts


# --- stream relay -------------------------------------------------------------------------------


async def test_stream_relays_the_upstream_bytes_unchanged_and_in_order() -> None:
    handler, seen = streaming(EVENTS)
    async with serving(handler) as (adapter, _):
        received = await collect(adapter, chat())

    assert b"".join(received) == b"".join(EVENTS)  # the socket may join writes; bytes are kept
    assert seen["written"] == len(EVENTS)


async def test_stream_yields_each_chunk_as_it_arrives() -> None:
    gate = [asyncio.Event() for _ in EVENTS]
    handler, seen = streaming(EVENTS, gate=gate)
    async with serving(handler) as (adapter, _):
        gen = open_stream(adapter, chat())
        try:
            assert await anext(gen) == EVENTS[0]  # relayed before the engine wrote more
            assert seen["written"] == 1
            gate[0].set()
            assert await anext(gen) == EVENTS[1]
        finally:
            for event in gate:
                event.set()
            await gen.aclose()


async def test_a_stream_cut_by_the_engine_is_a_backend_error() -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in EVENTS[:2]:
            await response.write(chunk)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # a crash mid-stream: no final chunk
        return response

    received: list[bytes] = []
    async with serving(cut) as (adapter, _):
        with pytest.raises(BackendError) as info:
            async for chunk in adapter.stream(chat()):
                received.append(chunk)

    assert b"".join(received) == b"".join(EVENTS[:2])  # what arrived before the cut was relayed
    err = info.value
    assert type(err) is BackendError
    assert err.backend == BACKEND
    assert err.message.startswith("Backend 'vllm' failed: stream broke off: ClientPayloadError")


async def test_a_stream_that_stalls_past_the_timeout_is_a_backend_error() -> None:
    gate = [asyncio.Event()]
    handler, _ = streaming(EVENTS[:2], gate=gate)
    async with serving(handler, timeout_s=0.2) as (adapter, _):
        gen = open_stream(adapter, chat())
        assert await anext(gen) == EVENTS[0]
        with pytest.raises(BackendError) as info:
            await anext(gen)
        gate[0].set()

    assert info.value.message == "Backend 'vllm' failed: stream broke off: no data for 0.2 s"


async def test_closing_the_consumer_early_closes_the_upstream_connection() -> None:
    """A client disconnect: the gateway acloses the generator after the first chunk, and the
    engine, writing a chunk every 10 ms, sees its client go away (vLLM then aborts the request)."""
    written = 0
    gone = asyncio.Event()

    async def engine(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(500):
                await response.write(b"data: {}\n\n")
                written += 1
                await asyncio.sleep(0.01)
        except ConnectionResetError:
            gone.set()
        return response

    async with serving(engine) as (adapter, _):
        gen = open_stream(adapter, chat())
        assert (await anext(gen)).startswith(b"data: {}\n\n")
        await gen.aclose()
        await asyncio.wait_for(gone.wait(), 5)

    assert written < 50  # the engine stopped well before the stream's end


async def test_a_finished_stream_gives_its_connection_back_to_the_pool() -> None:
    ports: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        return await streaming([b"data: [DONE]\n\n"])[0](request)

    async with serving(handler) as (adapter, _):
        for _ in range(3):
            assert await collect(adapter, chat()) == [b"data: [DONE]\n\n"]

    assert len(set(ports)) == 1  # one connection, reused


async def test_a_health_client_of_its_own_is_asked_instead_of_the_engine() -> None:
    """The bundled engine: traffic to vLLM's port, health from its service's /readyz."""

    async def service(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ready" if request.path == "/readyz" else "no", status=200)

    async def down(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    async with serving(service) as (svc, _), serving(down) as (engine, _):
        both = OpenAIAdapter(BACKEND, engine._client, health=svc._client, health_path="/readyz")
        assert await both.health()
        assert not await engine.health()


def test_the_environments_proxy_is_read_once_and_no_proxy_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.adapters.openai import env_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("http://vllm:8000") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.cluster.local")
    assert env_proxy("http://vllm.example.com:8000") == "http://proxy.corp:3128"
    assert env_proxy("http://vllm.ns.svc.cluster.local:8000") is None
    assert env_proxy("http://127.0.0.1:8000") is None
    assert env_proxy("https://api.example.com") is None  # no HTTPS_PROXY set
