"""The bundle: a gateway (the entry service) in front of four runners (LLM, image, speech,
embeddings).

    bentoml serve service:Gateway

Each runner is its own BentoML service, so on BentoCloud or Kubernetes each scales on its own.
`RemoteGateway` is the same gateway without the bundled runners, for remote backends only (the
`routing:` section): a proxy in front of vLLM, SGLang or Triton servers::

    BUNDLE_CONFIG=routes.yaml bentoml serve service:RemoteGateway
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType

from contract.vision import Prediction
from gateway.api import calls, embeddings
from gateway.api.audio import verbose
from gateway.app import create_app, install, shutdown
from gateway.errors import GatewayError
from gateway.kserve.grpc import GrpcServer, serve_grpc
from gateway.routing.build import build_router
from gateway.routing.bundle import bundled_router, dependency_url
from gateway.routing.router import Router
from gateway.scope.context import RequestContext, context_of
from gateway.scope.pipeline import Pipeline, is_api
from lifecycle import DrainMiddleware, die_with_parent, drain_entry, tune_gc
from runners.embed import Embedder
from runners.llm import LLM
from runners.speech import Transcriber
from runners.vision import ImageClassifier
from settings import Settings, get_settings

# The runners' sockets as loopback TCP, held open by `bentoml serve` until every service has
# stopped: with Unix sockets BentoML deletes the files as shutdown begins, and a draining
# gateway's requests in flight could no longer reach the runners.
os.environ.setdefault("BENTOML_NO_UDS", "1")

app = create_app()
LLM_MODEL, IMAGE_MODEL, SPEECH_MODEL, EMBED_MODEL = get_settings().bundled_models()
TYPED_APIS = (
    "/chat", "/chat_stream", "/complete", "/complete_stream", "/classify", "/transcribe", "/embed"
)  # fmt: skip


def gateway_config() -> dict[str, Any]:
    """The BentoML service config of both gateways. BentoML's own access log is off (the
    pipeline writes one line per request, with its request id and key), and so is its
    OpenTelemetry middleware for the gateway's routes unless `log.trace_requests` (settings.py)."""
    settings = get_settings()
    return {
        "traffic": {"timeout": 3600},
        "workers": settings.gateway.workers,
        "logging": {"access": {"enabled": False}},
        **settings.log.bentoml_tracing(),
    }


def start_gateway(make_router: Callable[[Settings], Router]) -> GrpcServer | None:
    """What both gateways do at start, in the serving event loop: the drain, the router and the
    request scope installed on the app, KServe V2 over gRPC when `gateway.grpc_port` is set
    (every worker binds it with SO_REUSEPORT); the gRPC server, or None."""
    settings = get_settings()
    die_with_parent()
    drain_entry(settings.drain)
    install(app, settings=settings, router=make_router(settings))
    grpc = serve_grpc(app, settings)
    tune_gc()
    return grpc


async def stop_gateway(grpc: GrpcServer | None) -> None:
    if grpc is not None:  # before the router closes; calls in flight: drain.final_grace_s
        await grpc.stop()
    await shutdown(app)


def scoped(path: str) -> bool:
    """The paths the request scope serves: the API routes and the typed BentoML APIs."""
    return is_api(path) or path in TYPED_APIS


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="gateway", **gateway_config())
class Gateway:
    llm = bentoml.depends(LLM)
    vision = bentoml.depends(ImageClassifier)
    speech = bentoml.depends(Transcriber)
    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        self.grpc = start_gateway(
            lambda settings: bundled_router(
                settings,
                llm_url=dependency_url(type(self).llm),
                vision=self.vision,
                speech=self.speech,
                embed=self.embedder,
            )
        )

    async def __is_ready__(self) -> bool:
        """Ready when the bundled runners answer their own health checks (vLLM's /health too).

        Remote backends do not count: their breakers and fallbacks handle them, and GET /status
        shows them."""
        return bool(await app.state.router.ready())

    @bentoml.on_shutdown
    async def close(self) -> None:
        await stop_gateway(self.grpc)

    # Typed BentoML APIs, for bentoml.SyncHTTPClient / AsyncHTTPClient and /docs. They run the
    # same calls as the HTTP routes (gateway/api/calls.py), behind the same pipeline (keys, limits,
    # request ids, access log): `Gateway.add_asgi_middleware(Pipeline, paths=TYPED_APIS)` below.

    @bentoml.api
    async def chat(
        self,
        messages: list[dict[str, Any]],
        model: str = LLM_MODEL,
        max_tokens: int | None = None,
        temperature: float | None = None,
        options: dict[str, Any] | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]  # BentoML passes it
    ) -> dict[str, Any]:
        """A chat completion, as OpenAI's `POST /v1/chat/completions` answers it. `options`
        takes any other parameter the engine accepts (`seed`, `stop`, `tools`, ...)."""
        body = _openai_body(model, max_tokens, temperature, options, messages=messages)
        result = await _call(calls.generate(app.state.router, _ctx(ctx), body, "chat"))
        return dict(result.body)

    @bentoml.api
    async def chat_stream(
        self,
        messages: list[dict[str, Any]],
        model: str = LLM_MODEL,
        max_tokens: int | None = None,
        temperature: float | None = None,
        options: dict[str, Any] | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> AsyncGenerator[str, None]:
        """The chat completion's text, piece by piece as the engine writes it."""
        body = _openai_body(model, max_tokens, temperature, options, messages=messages)
        async for text in _stream(calls.text_deltas(app.state.router, _ctx(ctx), body, "chat")):
            yield text

    @bentoml.api
    async def complete(
        self,
        prompt: str,
        model: str = LLM_MODEL,
        max_tokens: int | None = None,
        temperature: float | None = None,
        options: dict[str, Any] | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """A text completion, as OpenAI's `POST /v1/completions` answers it."""
        body = _openai_body(model, max_tokens, temperature, options, prompt=prompt)
        result = await _call(calls.generate(app.state.router, _ctx(ctx), body, "completion"))
        return dict(result.body)

    @bentoml.api
    async def complete_stream(
        self,
        prompt: str,
        model: str = LLM_MODEL,
        max_tokens: int | None = None,
        temperature: float | None = None,
        options: dict[str, Any] | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> AsyncGenerator[str, None]:
        body = _openai_body(model, max_tokens, temperature, options, prompt=prompt)
        router = app.state.router
        async for text in _stream(calls.text_deltas(router, _ctx(ctx), body, "completion")):
            yield text

    @bentoml.api
    async def classify(
        self,
        image: Annotated[Path, ContentType("image/*")],
        model: str = IMAGE_MODEL,
        top_k: int | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> list[Prediction]:
        """The top-k classes of one image file, highest score first."""
        _, predictions = await _call(
            calls.classify(
                app.state.router, _ctx(ctx), image.read_bytes(),
                model=model, top_k=top_k,
            )
        )  # fmt: skip
        return predictions

    @bentoml.api
    async def transcribe(
        self,
        audio: Annotated[Path, ContentType("audio/*")],
        model: str = SPEECH_MODEL,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        translate: bool = False,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Text of an audio file, as OpenAI's verbose_json (segments, language, duration)."""
        transcript = await _call(
            calls.speech_to_text(
                app.state.router, _ctx(ctx), audio.read_bytes(),
                model=model, language=language, prompt=prompt, temperature=temperature,
                translate=translate,
            )
        )  # fmt: skip
        return verbose(transcript).model_dump()

    @bentoml.api
    async def embed(
        self,
        texts: list[str],
        model: str = EMBED_MODEL,
        dimensions: int | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> list[list[float]]:
        """One vector per text (what /v1/embeddings answers, without the envelope)."""
        body: dict[str, Any] = {"model": model, "input": texts}
        if dimensions is not None:
            body["dimensions"] = dimensions
        response = await _call(embeddings.embed(app.state.router, _ctx(ctx), body))
        return [item["embedding"] for item in response["data"]]


def _ctx(ctx: bentoml.Context) -> RequestContext:
    """The pipeline's context of the typed API call (the pipeline runs in front of them)."""
    return context_of(ctx.request)


def _openai_body(
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    options: dict[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {**(options or {}), **fields, "model": model}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


async def _call(call: Any) -> Any:
    """A gateway error becomes BentoML's, with the same status and message."""
    try:
        return await call
    except GatewayError as err:
        raise _bentoml_error(err) from None


async def _stream(chunks: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    try:
        async for chunk in chunks:
            yield chunk
    except GatewayError as err:
        raise _bentoml_error(err) from None


def _bentoml_error(err: GatewayError) -> BentoMLException:
    from http import HTTPStatus

    return BentoMLException(err.message, error_code=HTTPStatus(err.status))


Gateway.add_asgi_middleware(  # type: ignore[attr-defined]
    Pipeline, paths=TYPED_APIS, parts=lambda: getattr(app.state, "pipeline", None)
)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="remote-gateway", **gateway_config())
class RemoteGateway:
    def __init__(self) -> None:
        self.grpc = start_gateway(
            lambda settings: build_router(
                settings.routing,
                bundled={},
                bundled_routes=[],
                admission=settings.admission,
                cache=settings.cache,
            )
        )

    async def __is_ready__(self) -> bool:
        """Ready when every remote backend marked `required` answers its health check."""
        return bool(await app.state.router.ready())

    @bentoml.on_shutdown
    async def close(self) -> None:
        await stop_gateway(self.grpc)


# The request scope counts and refuses its own routes while draining (HTTP and gRPC alike).
Gateway.add_asgi_middleware(DrainMiddleware, leave=scoped)  # type: ignore[attr-defined]
RemoteGateway.add_asgi_middleware(DrainMiddleware, leave=scoped)  # type: ignore[attr-defined]
