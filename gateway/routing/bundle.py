"""Wiring for the bundle: the routes and adapters for the runners `service.py` composes, plus the
remote backends and models of the `routing:` configuration."""

from __future__ import annotations

import urllib.parse
from typing import Any

from contract.names import EMBED, LLM, SPEECH, VISION
from gateway.adapters.base import InferenceAdapter
from gateway.adapters.openai import OpenAIAdapter, make_client
from gateway.adapters.pixels import PixelTensorAdapter
from gateway.adapters.runner import EmbedRunnerAdapter, SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.adapters.transcript_tensors import TranscriptTensorAdapter
from gateway.routing.build import PoolSpec, build_router, health_client, one_endpoint
from gateway.routing.registry import bundled_routes, check_routing
from gateway.routing.router import Router
from settings import Settings


def dependency_url(dependency: Any) -> str:
    """The address BentoML wired a `bentoml.depends(...)` service at (a socket file on one host)."""
    dependency.get()
    if not dependency.url:
        raise RuntimeError(
            f"{dependency.on.name} is not served by BentoML here; run `bentoml serve`"
        )
    return str(dependency.url)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def engine_url(settings: Settings, llm_url: str) -> str:
    """Where the bundled LLM's requests go, with `llm.engine_direct`: vLLM's port at
    `llm.engine_url` if set, else on this host when the LLM service is (its URL a loopback
    address or a socket file); otherwise, and without `engine_direct`, the service."""
    llm = settings.llm
    if not llm.engine_direct:
        return llm_url
    if llm.engine_url:
        return llm.engine_url.rstrip("/")
    parts = urllib.parse.urlsplit(llm_url)
    if parts.scheme in ("file", "unix") or parts.hostname in LOOPBACK:
        return f"http://127.0.0.1:{llm.port}"
    return llm_url


def llm_engines(settings: Settings, llm_url: str) -> InferenceAdapter | PoolSpec:
    """The bundled LLM's engine (one host: its one engine), or every replica's engine found by
    `llm.engine_discover` (Kubernetes: the headless Service over the llm pods' engine port),
    each checked on its pod's service port."""
    timeout_s = settings.gateway.timeout_s
    found = settings.llm.engine_discover
    by_priority = settings.llm.scheduling_policy == "priority"  # the engine takes `priority`
    if found is None:
        service = make_client(llm_url, timeout_s=timeout_s)
        at = engine_url(settings, llm_url)
        adapter = OpenAIAdapter(
            LLM,
            service if at == llm_url else make_client(at, timeout_s=timeout_s),
            health=service,  # the service's /readyz: its own check of the engine
            health_path="/readyz",
            send_priority=by_priority,
        )
        # with LoRA, its adapters loaded at run time are watched on the engine's /v1/models
        return one_endpoint(adapter, "bundled", lora=True) if settings.llm.lora else adapter

    def engine(url: str) -> InferenceAdapter:
        return OpenAIAdapter(
            LLM,
            make_client(url, timeout_s=timeout_s),
            health=health_client(url, found, timeout_s=timeout_s),
            health_path=found.health_path or "/health",
            send_priority=by_priority,
        )

    return PoolSpec(
        (), engine, settings.llm.balance, f"dns:{found.dns}:{found.port}", found,
        lora=settings.llm.lora is not None,
    )  # fmt: skip


def bundled_router(
    settings: Settings, *, llm_url: str, vision: Any, speech: Any, embed: Any
) -> Router:
    """A router over the four bundled runners and the configured remote backends."""
    check_routing(settings)  # before any client is made
    adapters: dict[str, InferenceAdapter | PoolSpec] = {
        LLM: llm_engines(settings, llm_url),
        VISION: PixelTensorAdapter(
            VisionRunnerAdapter(
                VISION,
                vision,
                default_top_k=settings.vision.top_k,
                max_pixels=settings.limits.max_image_pixels,
            )
        ),
        SPEECH: TranscriptTensorAdapter(  # /v1/audio as it is, and audio files as /v2 tensors
            SpeechRunnerAdapter(SPEECH, speech, max_seconds=settings.limits.max_audio_seconds)
        ),
        EMBED: EmbedRunnerAdapter(EMBED, embed),
    }
    routes = bundled_routes(*settings.bundled_models(), adapters=settings.llm.adapters())
    return build_router(
        settings.routing,
        bundled=adapters,
        bundled_routes=routes,
        admission=settings.admission,
        cache=settings.cache,
    )
