"""The calls behind both faces of the gateway: the HTTP routes (gateway/api/) and the typed
BentoML APIs of the Gateway service (service.py), so `bentoml.SyncHTTPClient(url).classify(...)`
and `POST /v1/images/classifications` run the same code, behind the same request pipeline.

    await classify(router, ctx, data, model="demo-resnet", top_k=3)
    await generate(router, ctx, body, "chat")             # an OpenAI body; non-streaming
    async for text in text_deltas(router, ctx, body, "chat"): ...
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from contract.vision import Prediction
from gateway.adapters.base import InferResponse, Task, Transcript
from gateway.routing.router import Router
from gateway.scope.context import RequestContext


async def classify(
    router: Router,
    ctx: RequestContext,
    data: bytes,
    *,
    model: str,
    top_k: int | None,
) -> tuple[str, list[Prediction]]:
    """(the model's public name, its predictions) for one image file."""
    route = router.resolve(model, ("image",), ctx)
    result = await router.predict(route, "classify", data, ctx, top_k=top_k)
    return route.name, result.body


async def speech_to_text(
    router: Router,
    ctx: RequestContext,
    data: bytes,
    *,
    model: str,
    language: str | None = None,
    prompt: str | None = None,
    temperature: float = 0.0,
    translate: bool = False,
) -> Transcript:
    route = router.resolve(model, ("speech",), ctx)
    result = await router.predict(
        route,
        "transcribe",
        data,
        ctx,
        language=language,
        prompt=prompt,
        temperature=temperature,
        translate=translate,
    )
    transcript: Transcript = result.body
    return transcript


async def generate(
    router: Router, ctx: RequestContext, body: dict[str, Any], task: Task
) -> InferResponse:
    """A non-streaming OpenAI call (chat, completion, responses); its usage is counted."""
    route = router.resolve(body.get("model"), ("llm",), ctx)
    result = await router.predict(route, task, body, ctx)
    if isinstance(result.body, dict):
        ctx.count_usage(result.body.get("usage"))
    return result


async def text_deltas(
    router: Router, ctx: RequestContext, body: dict[str, Any], task: Task
) -> AsyncIterator[str]:
    """A streamed chat or completion as its text pieces (for clients that want only the text);
    the usage the engine reports at the end is counted."""
    route = router.resolve(body.get("model"), ("llm",), ctx)
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    pending = b""
    async for chunk in router.stream(route, task, body, ctx):
        pending += chunk
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            data = json.loads(event[6:])
            ctx.count_usage(data.get("usage"))
            for choice in data.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    yield text
