"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.adapters.base import Task
from gateway.api.common import caller_of, read_json_object, router_of
from gateway.errors import GatewayError, openai_error_body

OWNED_BY = "serving-bundle"


async def list_models(request: Request) -> Response:
    created = int(request.app.state.started_at)
    data = [
        {
            "id": r.name,
            "object": "model",
            "created": created,
            "owned_by": OWNED_BY,
            "kind": r.kind,
            "backend": r.backend,
        }
        for r in router_of(request).registry
    ]
    return JSONResponse({"object": "list", "data": data})


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat")


async def completions(request: Request) -> Response:
    return await _generate(request, "completion")


async def _generate(request: Request, task: Task) -> Response:
    router = router_of(request)
    body = await read_json_object(
        request, limit=request.app.state.settings.limits.max_request_bytes
    )
    route = router.resolve(body.get("model"), kinds=("llm",), caller=caller_of(request))
    if not body.get("stream"):
        result = await router.predict(route, task, body)
        return JSONResponse(result.body, status_code=result.status)
    chunks = router.stream(route, task, body)
    first = await anext(chunks)  # a refusal before the first byte is still a plain JSON error
    return StreamingResponse(_relay(first, chunks), media_type="text/event-stream")


async def _relay(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay the stream; a failure after the first chunk ends it with an error event."""
    yield first
    try:
        async for chunk in rest:
            yield chunk
    except GatewayError as err:
        yield b"data: " + json.dumps(openai_error_body(err)).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]
