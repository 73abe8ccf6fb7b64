"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.adapters.base import OpenedStream, Task, close_stream
from gateway.api import calls
from gateway.api.chains import chain_input, chains_of, listing
from gateway.api.common import context, read_json_object, router_of
from gateway.errors import GatewayError, openai_error_body
from gateway.routing.chains import Chain
from gateway.routing.registry import Kind, Split
from gateway.routing.registry import Route as ModelRoute
from gateway.scope.context import RequestContext
from gateway.scope.keys import check_model
from lifecycle import DRAIN

OWNED_BY = "serving-bundle"


async def list_models(request: Request) -> Response:
    key = context(request).key
    data = [
        _model(request, entry)
        for entry in [*router_of(request).registry, *chains_of(request)]
        if key is None or key.allows(entry.name)
    ]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """GET /v1/models/{id}: one model (an alias answers under its own name), or 404 / 403."""
    name = request.path_params["model"]
    router, ctx = router_of(request), context(request)
    if (chain := chains_of(request).get(name)) is not None:
        check_model(ctx.key, name)
        return JSONResponse(_model(request, chain))
    kinds: tuple[Kind, ...] = ("llm", "image", "speech", "tensor", "embedding")
    router.resolve(name, kinds, ctx)  # 404 listing the models, or 403 for the key
    aliases = router.registry.aliases_of
    entry = next(e for e in router.registry if e.name == name or name in aliases(e.name))
    return JSONResponse({**_model(request, entry), "id": name})


def _model(request: Request, entry: ModelRoute | Split | Chain) -> dict[str, object]:
    return {
        "id": entry.name,
        "object": "model",
        "created": int(request.app.state.started_at),
        "owned_by": OWNED_BY,
        **(
            listing(entry)
            if isinstance(entry, Chain)
            else {"kind": entry.kind, "backend": entry.backend}
        ),
        **({"parent": entry.parent} if isinstance(entry, ModelRoute) and entry.parent else {}),
    }


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat")


async def completions(request: Request) -> Response:
    return await _generate(request, "completion")


async def responses(request: Request) -> Response:
    """POST /v1/responses: OpenAI's Responses API, relayed to the engine's (vLLM serves it)."""
    return await _generate(request, "responses")


async def _generate(request: Request, task: Task) -> Response:
    router, ctx = router_of(request), context(request)
    body = await read_json_object(
        request, limit=request.app.state.settings.limits.max_request_bytes
    )
    chain = chains_of(request).get(body.get("model")) if task == "chat" else None
    if chain is not None:
        return await _chain(request, chain, body)
    if not body.get("stream"):
        result = await calls.generate(router, ctx, body, task)
        return JSONResponse(result.body, status_code=result.status)
    route = router.resolve(body.get("model"), ("llm",), ctx)
    # Tokens are counted from the engine's own usage, so the stream always asks for it; a
    # client that did not ask does not get the extra chunk. (A Responses stream always ends with
    # its usage, in response.completed.)
    options = body.get("stream_options")
    wants_usage = task == "responses" or (
        isinstance(options, dict) and bool(options.get("include_usage"))
    )
    if not wants_usage:
        body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                  "include_usage": True}  # fmt: skip
    tap = UsageTap(ctx, strip=not wants_usage)
    # A refusal before the first byte is still a plain JSON error: the stream is opened here.
    return EventStream(tap, await router.open_stream(route, task, body, ctx))


async def _chain(request: Request, chain: Chain, body: dict[str, Any]) -> Response:
    """A chat completion answered by a chain (gateway/routing/chains.py), streamed or not."""
    router, ctx = router_of(request), context(request)
    given = chain_input(chain, body)
    if not body.get("stream"):
        return JSONResponse(await chain.complete(router, ctx, given, body))
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                              "include_usage": True}  # fmt: skip
    tap = UsageTap(ctx, strip=not wants_usage)
    return EventStream(tap, await chain.open_stream(router, ctx, given, body))


class EventStream(Response):
    """The relayed stream as an ASGI response: each chunk is sent as it arrives, through the
    usage tap; a failure after the first chunk ends it with an error event, and so does the drain
    deadline of a gateway that is shutting down (lifecycle.py).

    Starlette's StreamingResponse, under uvicorn (ASGI 2.3), runs the stream in an anyio task
    group beside a task waiting for the client's disconnect and cancels the group at the end
    (about a tenth of the gateway's CPU per streamed request, measured with py-spy: anyio
    formats the task's repr into every cancel reason). Here one plain asyncio task waits for the
    disconnect and the relay stops at the next chunk after it (what Starlette does under ASGI
    2.4), closing the upstream stream, so the engine sees its client go away.
    """

    media_type = "text/event-stream"

    def __init__(self, tap: UsageTap, opened: OpenedStream) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers()
        self.tap, self.opened = tap, opened
        self.gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        relay = self._relay()
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            async for out in relay:
                if self.gone:
                    break
                await send({"type": "http.response.body", "body": out, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await close_stream(relay)
            await self.opened.aclose()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    async def _relay(self) -> AsyncIterator[bytes]:
        tap, opened = self.tap, self.opened
        if opened.first is not None and (out := tap.feed(opened.first)):
            yield out
        try:
            async for chunk in opened.rest:
                if DRAIN.past_deadline:
                    raise ShuttingDown()
                if out := tap.feed(chunk):
                    yield out
        except GatewayError as err:
            yield tap.flush() + b"data: " + json.dumps(openai_error_body(err)).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        if out := tap.flush():
            yield out


class ShuttingDown(GatewayError):
    status = 503
    type = "service_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down and its drain deadline has passed; this stream was "
            "cut. Retry the request.",
            code="draining",
        )


class UsageTap:
    """Reads the engine's `usage` off a server-sent event stream as it is relayed.

    Bytes pass through untouched, in whole events: a chunk that ends inside an event holds its
    tail back until the event is complete (engines write whole events, so this rarely waits).
    Only an event carrying a usage object is parsed; with `strip`, the usage-only final chunk
    (`"choices": []`) is dropped, for clients that did not ask for it.
    """

    def __init__(self, ctx: RequestContext, *, strip: bool) -> None:
        self.ctx = ctx
        self.strip = strip
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n") + 2
        if end < len(data):
            self._pending, data = data[end:], data[:end]
        else:
            self._pending = b""
        if b'"usage"' not in data:
            return data
        return b"".join(self._event(e) for e in data.split(b"\n\n")[:-1])

    def flush(self) -> bytes:
        data, self._pending = self._pending, b""
        return data

    def _event(self, event: bytes) -> bytes:
        whole = event + b"\n\n"
        at = event.find(b"data: {")  # Responses API events have an `event:` line first
        if at < 0 or b'"usage"' not in event or b'"usage":null' in event:
            return whole
        try:
            chunk = json.loads(event[at + len(b"data: ") :])
        except ValueError:
            return whole
        response = chunk.get("response")  # response.completed carries the whole response
        self.ctx.count_usage(chunk.get("usage") or (response or {}).get("usage"))
        if self.strip and chunk.get("choices") == []:
            return b""
        return whole


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/responses", responses, methods=["POST"]),
]
